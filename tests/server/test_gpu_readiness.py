"""What the engine must keep on an accelerator, checked on the CPU: half-precision pools agree with float32,
and one forward launches as many kernels for 64 distinct tasks as for 8."""
from __future__ import annotations

from collections import Counter

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from adamix import load_backbone
from server.engine import Engine
from server.metrics import ServerMetrics
from server.responses import predictions
from server.schemas import TextInput
from server.served import AdapterKey, prepare
from server.settings import Settings
from tests.server.helpers import TEXTS, make_adapter

# Largest difference from float32 allowed in a probability, a regression value or an embedding coordinate of
# the tiny backbone (2 layers, d=32; adapters with std 0.3 weights): bfloat16 keeps 8 mantissa bits, float16 11.
TOLERANCE = {torch.bfloat16: 0.03, torch.float16: 0.005}  # measured: 0.014 and 0.0012 (regression)


class Ops(TorchDispatchMode):
    """Counts every ATen op dispatched (on a GPU each is at least one kernel launch)."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: Counter[str] = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops[func.__name__] += 1
        return func(*args, **(kwargs or {}))


def engine_of(backbone_dir, dtype: torch.dtype = torch.float32) -> Engine:
    model, tokenizer, info = load_backbone(backbone_dir)
    model.to(dtype)  # as the server does for `dtype` (after the fingerprint, which is of the stored weights)
    return Engine(model, tokenizer, info, Settings(backbone=backbone_dir, demo_adapters=None), ServerMetrics())


def predict(engine: Engine, adapters: dict, picks: list[tuple[str, str]]) -> list[dict]:
    served = {name: prepare(AdapterKey(name, "v"), a, engine.limits) for name, a in adapters.items()}
    rows = [engine.admission.encode(served[name], [TextInput(text=text)])[0] for name, text in picks]
    return [predictions(r.adapter.task, [x])[0] for r, x in zip(rows, engine.executor.run_batch(rows))]


@pytest.fixture(scope="module")
def mixed_tasks(tiny_loaded):
    model, _, info = tiny_loaded
    specs = {"adapter": dict(kind="adapter", r=4, placement="both", labels=("a", "b", "c")),
             "lora": dict(kind="lora", r=4, std=0.05), "regression": dict(kind="adapter", r=3, labels=()),
             "embedding": dict(kind="lora", r=2, task_type="embedding", std=0.05)}
    return {name: make_adapter(model, info, seed=i, **kw) for i, (name, kw) in enumerate(specs.items())}


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_half_precision_pool_agrees_with_float32(tiny_backbone_dir, mixed_tasks, dtype):
    picks = [(name, text) for name in mixed_tasks for text in TEXTS]  # one mixed batch, every task, every text
    want = predict(engine_of(tiny_backbone_dir), mixed_tasks, picks)
    half = engine_of(tiny_backbone_dir, dtype)
    assert half.executor.pool.dtype == dtype
    got = predict(half, mixed_tasks, picks)
    worst = 0.0
    for a, b in zip(got, want, strict=True):
        assert a.keys() == b.keys()
        if "scores" in a:
            worst = max(worst, *(abs(a["scores"][k] - b["scores"][k]) for k in a["scores"]))
        else:
            key = "value" if "value" in a else "embedding"
            worst = max(worst, float((torch.tensor(a[key]) - torch.tensor(b[key])).abs().max()))
    assert worst <= TOLERANCE[dtype], f"{dtype} differs from float32 by up to {worst:.4f}"
    assert worst > 0  # the half-precision forward really ran in its dtype


def test_kernel_launches_per_forward_do_not_grow_with_distinct_tasks(tiny_backbone_dir, tiny_loaded):
    model, _, info = tiny_loaded
    adapters = {f"t{i}": make_adapter(model, info, kind=("adapter", "lora")[i % 2], r=4, placement="both", seed=i,
                                      std=0.05) for i in range(64)}
    engine = engine_of(tiny_backbone_dir)
    counts = {}
    for distinct in (1, 2, 8, 64):
        picks = [(f"t{i % distinct}", TEXTS[0]) for i in range(64)]  # 64 rows of one length: one forward
        predict(engine, adapters, picks)  # the adapters into pool slots, outside the counted forward
        with Ops() as seen:
            predict(engine, adapters, picks)
        counts[distinct] = seen.ops
    assert sum(counts[1].values()) < sum(counts[2].values())  # one task takes the plain linear path
    assert counts[2] == counts[8] == counts[64], {k: sum(c.values()) for k, c in counts.items()}
