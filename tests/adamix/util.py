"""Shared helpers for the adamix tests: the case table, inputs, perturbation and dropout-free training mode."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from adamix import AdaMixConfig, adapter_parameters
from tests.conftest import tiny_backbone

ARCHS = ("bert", "roberta", "distilbert", "gpt2")
PLACEMENTS = ("ffn", "attention", "both")


def _cases() -> list:
    cases = []
    for arch in ARCHS:
        for placement in PLACEMENTS:
            cases.append(pytest.param(arch, {"kind": "adapter", "placement": placement, "bottleneck": 8},
                                      id=f"{arch}-adapter-{placement}"))
        cases.append(pytest.param(arch, {"kind": "lora"}, id=f"{arch}-lora-qv"))
        cases.append(pytest.param(arch, {"kind": "lora", "lora_targets": ("query", "key", "value"), "lora_r": 2},
                                  id=f"{arch}-lora-qkv"))
    return cases


# (model_type, AdaMixConfig kwargs): every architecture x kind x placement / LoRA target set.
CASES = _cases()


def make_inputs(batch: int = 3, length: int = 7, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random token ids (vocab 99 of the tiny backbones) with right padding on row 1."""
    g = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(3, 99, (batch, length), generator=g)  # (B, T)
    attention_mask = torch.ones(batch, length, dtype=torch.long)  # (B, T)
    attention_mask[1, length - 2:] = 0
    return {"input_ids": input_ids, "attention_mask": attention_mask}


def hidden(backbone: nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """The backbone's last hidden state (B, T, d)."""
    return backbone(**inputs).last_hidden_state


def adamix_backbone(model_type: str, backbone_seed: int = 0, **config_kwargs) -> nn.Module:
    """A tiny backbone with AdaMix injected (config_kwargs go to AdaMixConfig)."""
    from adamix import add_adamix

    return add_adamix(tiny_backbone(model_type, backbone_seed), AdaMixConfig(**config_kwargs))


@torch.no_grad()
def perturb_adapters(model: nn.Module, seed: int = 1, scale: float = 0.05) -> None:
    """Add independent noise to every adapter parameter: experts differ and LoRA B is non-zero."""
    g = torch.Generator().manual_seed(seed)
    for param in adapter_parameters(model).values():
        param.add_(torch.randn(param.shape, generator=g, dtype=param.dtype) * scale)


def train_without_dropout(model: nn.Module) -> nn.Module:
    """Training mode (stochastic routing) with every dropout probability set to 0."""
    model.train()
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0
    return model
