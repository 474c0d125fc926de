"""Test helpers shared by tests/server and tests/integration: random merged adapters, readiness, agreement."""
from __future__ import annotations

import copy
import time
from pathlib import Path

import pytest
import torch

from adamix import (AdaMixConfig, AdaMixTaskModel, AdapterFile, BackboneInfo, TaskSpec, adapter_from_model,
                    adapter_parameters, add_adamix, merge_adamix)
from adamix.adapter_file import adapter_to_bytes

TEXTS = ["a gripping, funny and humane film", "the plot is thin and the acting worse", "it rains",
         "an utterly forgettable sequel that nobody asked for, padded to two hours", "good", "bad movie!!",
         "the cast seems to be having fun even when the script is not"]


def make_adapter(backbone: torch.nn.Module, info: BackboneInfo, *, kind: str = "adapter", r: int = 4,
                 labels: tuple[str, ...] = ("negative", "positive"), task_type: str | None = None,
                 pooling: str = "mean", placement: str = "ffn", targets: tuple[str, ...] = ("query", "value"),
                 max_seq_len: int = 128, seed: int = 0, std: float = 0.3,
                 embedding_dim: int | None = None) -> AdapterFile:
    """A trained-looking merged adapter: random (non-zero) mixture weights and head, then merged.

    `task_type="embedding"` (labels ignored): no head, or with `embedding_dim` a (dim, d) projection."""
    task_type = task_type or ("regression" if not labels else "classification")
    if task_type == "embedding":
        labels = ()
    task = TaskSpec(task_type, labels, pooling, max_seq_len, embedding_dim)
    model = AdaMixTaskModel(copy.deepcopy(backbone), task)
    add_adamix(model, AdaMixConfig(kind=kind, num_experts=2, bottleneck=r, lora_r=r, placement=placement,
                                   lora_targets=targets, seed=seed))
    g = torch.Generator().manual_seed(seed + 1000)
    with torch.no_grad():
        for p in [*adapter_parameters(model).values(), *(model.head.parameters() if model.head else ())]:
            p.copy_(torch.randn(p.shape, generator=g) * std)
    merge_adamix(model)
    return adapter_from_model(model.eval(), info, task, {"test": True})


def adapter_bytes(adapter: AdapterFile) -> bytes:
    return adapter_to_bytes(adapter)


def tiny_registry(root: Path, loaded, *tasks: str) -> Path:
    """A registry at `root` over the tiny backbone `loaded` (model, tokenizer, info) holding `tasks`, each of
    "sent" (two-label classification, r=4) and "sts" (regression, r=3)."""
    from adamix.registry import AdapterRegistry

    model, _, info = loaded
    kinds = {"sent": {"r": 4, "seed": 1}, "sts": {"r": 3, "seed": 3, "labels": ()}}
    registry = AdapterRegistry(root, info)
    for task in tasks:
        registry.publish(task, adapter_bytes(make_adapter(model, info, **kinds[task])))
    return root


def wait_ready(client, timeout: float = 60.0) -> None:
    """Poll `/readyz` of an in-process app (FastAPI TestClient) until it answers 200."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if client.get("/readyz").status_code == 200:
            return
        time.sleep(0.02)
    raise AssertionError(f"server not ready: {client.get('/readyz').json()}")


def assert_same(a: dict, b: dict, tol: float = 1e-5) -> None:
    """Two prediction dicts agree: same label, every probability (or the value, or the embedding) within `tol`."""
    assert a.keys() == b.keys()
    if "embedding" in a:
        assert a["embedding"] == pytest.approx(b["embedding"], abs=tol)
    elif "value" in a:
        assert a["value"] == pytest.approx(b["value"], abs=tol)
    else:
        assert a["label"] == b["label"]
        for label in a["scores"]:
            assert a["scores"][label] == pytest.approx(b["scores"][label], abs=tol)


def serve(adapter: AdapterFile, task: str = "task", version: str = "v1", limits=None):
    """The adapter as the host cache prepares it (generous limits unless given)."""
    from server.served import AdapterKey, ServingLimits, prepare

    return prepare(AdapterKey(task, version), adapter, limits or ServingLimits(64, 64, True))


def make_engine(backbone_dir: Path, **overrides):
    """An engine over a freshly loaded backbone, with test settings."""
    from adamix import load_backbone
    from server.engine import Engine
    from server.metrics import ServerMetrics
    from server.settings import Settings

    model, tokenizer, info = load_backbone(backbone_dir)
    return Engine(model, tokenizer, info, Settings(backbone=backbone_dir, demo_adapters=None, **overrides),
                  ServerMetrics())


def run_rows(engine, rows) -> list[dict]:
    """One executor batch of admitted rows -> each row's prediction dict, as the API shapes it."""
    from server.responses import predictions

    return [predictions(row.adapter.task, [logits])[0] for row, logits in zip(rows, engine.executor.run_batch(rows))]
