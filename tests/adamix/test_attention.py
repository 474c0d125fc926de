"""The backbone loads with PyTorch's fused attention (SDPA) wherever transformers offers it."""
from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from adamix import load_backbone
from tests.conftest import save_tiny_backbone


class AttentionCalls(TorchDispatchMode):
    """Counts the `scaled_dot_product_attention` ops a forward dispatches."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.calls += "scaled_dot_product" in func.__name__
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("model_type", ["bert", "roberta", "distilbert", "gpt2"])
def test_every_layer_attends_through_sdpa(tmp_path, model_type):
    model, tokenizer, info = load_backbone(save_tiny_backbone(tmp_path / model_type, model_type=model_type))
    assert model.config._attn_implementation == "sdpa"
    batch = tokenizer(["a short one", "a somewhat longer text, with padding after the short one"], padding=True,
                      return_tensors="pt")  # (2, T), the first row padded
    with torch.inference_mode(), AttentionCalls() as seen:
        model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    assert seen.calls == info.num_layers
