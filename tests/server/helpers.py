"""Test helpers shared by tests/server and tests/integration: a tiny saved backbone and random adapters."""
from __future__ import annotations

import copy
import shutil
import time
from pathlib import Path

import pytest
import torch
from transformers import BertConfig, BertModel

from adamix import (AdaMixConfig, AdaMixTaskModel, AdapterFile, BackboneInfo, TaskSpec, adapter_from_model,
                    adapter_parameters, add_adamix, default_backbone_path, merge_adamix)
from adamix.adapter_file import adapter_to_bytes

TEXTS = ["a gripping, funny and humane film", "the plot is thin and the acting worse", "it rains",
         "an utterly forgettable sequel that nobody asked for, padded to two hours", "good", "bad movie!!",
         "the cast seems to be having fun even when the script is not"]
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json")


def save_tiny_backbone(path: Path, seed: int = 0, model_type: str = "bert") -> Path:
    """A random 2-layer model (d=32, default BERT) with MiniLM's real tokenizer, saved as a Hugging Face directory.

    Every architecture gets vocab_size 30522, so the BERT WordPiece tokenizer's ids fit.
    """
    from transformers import DistilBertConfig, DistilBertModel, GPT2Config, GPT2LMHeadModel, RobertaConfig
    from transformers import RobertaModel

    torch.manual_seed(seed)
    v = 30522
    model = {
        "bert": lambda: BertModel(BertConfig(vocab_size=v, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                             intermediate_size=37, max_position_embeddings=128)),
        "roberta": lambda: RobertaModel(RobertaConfig(vocab_size=v, hidden_size=32, num_hidden_layers=2,
                                                      num_attention_heads=2, intermediate_size=37,
                                                      max_position_embeddings=132, pad_token_id=1)),
        "distilbert": lambda: DistilBertModel(DistilBertConfig(vocab_size=v, dim=32, n_layers=2, n_heads=2,
                                                               hidden_dim=37, max_position_embeddings=128)),
        "gpt2": lambda: GPT2LMHeadModel(GPT2Config(vocab_size=v, n_embd=32, n_layer=2, n_head=2, n_positions=128,
                                                   bos_token_id=0, eos_token_id=0)),
    }[model_type]()
    model.save_pretrained(path)
    source = default_backbone_path()
    for name in TOKENIZER_FILES:
        if (source / name).is_file():
            shutil.copy(source / name, path / name)
    return path


def make_adapter(backbone: torch.nn.Module, info: BackboneInfo, *, kind: str = "adapter", r: int = 4,
                 labels: tuple[str, ...] = ("negative", "positive"), task_type: str | None = None,
                 pooling: str = "mean", placement: str = "ffn", targets: tuple[str, ...] = ("query", "value"),
                 max_seq_len: int = 128, seed: int = 0, std: float = 0.3) -> AdapterFile:
    """A trained-looking merged adapter: random (non-zero) mixture weights and head, then merged."""
    task_type = task_type or ("regression" if not labels else "classification")
    task = TaskSpec(task_type, labels, pooling, max_seq_len)
    model = AdaMixTaskModel(copy.deepcopy(backbone), task)
    add_adamix(model, AdaMixConfig(kind=kind, num_experts=2, bottleneck=r, lora_r=r, placement=placement,
                                   lora_targets=targets, seed=seed))
    g = torch.Generator().manual_seed(seed + 1000)
    with torch.no_grad():
        for p in [*adapter_parameters(model).values(), *model.head.parameters()]:
            p.copy_(torch.randn(p.shape, generator=g) * std)
    merge_adamix(model)
    return adapter_from_model(model.eval(), info, task, {"test": True})


def adapter_bytes(adapter: AdapterFile) -> bytes:
    return adapter_to_bytes(adapter)


def wait_ready(client, timeout: float = 60.0) -> None:
    """Poll `/readyz` of an in-process app (FastAPI TestClient) until it answers 200."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if client.get("/readyz").status_code == 200:
            return
        time.sleep(0.02)
    raise AssertionError(f"server not ready: {client.get('/readyz').json()}")


def assert_same(a: dict, b: dict, tol: float = 1e-5) -> None:
    """Two prediction dicts agree: same label, every probability (or the value) within `tol`."""
    assert a.keys() == b.keys()
    if "value" in a:
        assert a["value"] == pytest.approx(b["value"], abs=tol)
    else:
        assert a["label"] == b["label"]
        for label in a["scores"]:
            assert a["scores"][label] == pytest.approx(b["scores"][label], abs=tol)
