"""Padding-free encoder forwards (server/packing.py): the same answers as the padded forward, and only where they
can help."""
from __future__ import annotations

import pytest
import torch

from adamix import load_backbone
from adamix.model import backbone_of
from server import packing
from server.packing import MIN_PADDING, Packing, install_packing, packed
from server.schemas import TextInput
from tests.conftest import save_tiny_backbone, tiny_backbone
from tests.server.helpers import TEXTS, make_adapter, make_engine, serve


@pytest.mark.parametrize("model_type", ["bert", "roberta"])
def test_packed_forward_gives_the_padded_forwards_answers(tmp_path, monkeypatch, model_type):
    """Mixed batches (adapters on both placements, q/k/v LoRA, regression) and one-task batches of rows of many
    lengths: every row's output with packing equals its output with the whole batch on the padded grid."""
    directory = save_tiny_backbone(tmp_path / model_type, model_type=model_type)
    model, _, info = load_backbone(directory)
    base = backbone_of(model)
    zoo = [make_adapter(base, info, r=3, placement="both", seed=1),
           make_adapter(base, info, r=2, placement="attention", pooling="cls", seed=4),
           make_adapter(base, info, kind="lora", r=2, targets=("query", "key", "value"), std=0.05,
                        labels=("a", "b", "c"), seed=2),
           make_adapter(base, info, kind="lora", r=4, labels=(), std=0.05, seed=3)]
    engine = make_engine(directory)
    executor = engine.executor
    assert executor.packs
    calls = []
    monkeypatch.setattr(Packing, "pack", lambda self, x, pack=Packing.pack: calls.append(x.shape) or pack(self, x))
    served = [serve(a, f"t{i}") for i, a in enumerate(zoo)]
    texts = TEXTS * 2
    for batch in ([served[i % 4] for i in range(len(texts))], [served[0]] * len(texts), [served[2]] * len(texts)):
        rows = [engine.admission.encode(a, [TextInput(text=t)])[0] for a, t in zip(batch, texts)]
        calls.clear()
        executor.packs = True
        got = executor.run_batch(rows)
        assert calls, "the batch was not packed"
        executor.packs = False
        want = executor.run_batch(rows)
        for g, w in zip(got, want):
            torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-6)


def test_packing_wraps_only_encoders_built_as_bert(tmp_path):
    for model_type in ("distilbert", "gpt2"):
        model = tiny_backbone(model_type)
        before = [name for name, _ in model.named_modules()]
        assert not install_packing(model)
        assert [name for name, _ in model.named_modules()] == before
    assert install_packing(tiny_backbone("bert"))


def test_a_batch_with_little_padding_runs_padded():
    full = torch.ones(4, 10, dtype=torch.long)
    with packed(full) as plan:
        assert plan is None and packing.current() is None
    one_pad = full.clone()
    one_pad[0, -1] = 0  # 1 of 40 places, under MIN_PADDING
    assert 1 / 40 < MIN_PADDING
    with packed(one_pad) as plan:
        assert plan is None
    padded = full.clone()
    padded[0, 5:] = 0
    padded[2, 8:] = 0
    with packed(padded, enabled=False) as plan:
        assert plan is None
    with packed(padded) as plan:
        assert packing.current() is plan
        assert plan.index.tolist() == [*range(5), *range(10, 20), *range(20, 28), *range(30, 40)]
        x = torch.randn(4, 10, 3)
        p = plan.pack(x)  # (1, N, 3)
        assert p.shape == (1, 33, 3) and plan.holds(p) and not plan.holds(x)
        back = plan.unpack(p)
        torch.testing.assert_close(back * padded.unsqueeze(-1), x * padded.unsqueeze(-1), rtol=0, atol=0)
        assert not back[0, 5:].any() and not back[2, 8:].any()
    assert packing.current() is None
