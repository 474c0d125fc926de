"""Mixed-task batches are exact on every supported architecture (BERT, RoBERTa, DistilBERT, GPT-2)."""
from __future__ import annotations

import copy
import random

import pytest
import torch

from adamix import AdapterFile, load_backbone, task_model_from_adapter
from adamix.model import backbone_of
from server.schemas import TextInput
from tests.conftest import save_tiny_backbone
from tests.server.helpers import TEXTS, assert_same, make_adapter, make_engine, run_rows, serve


@pytest.mark.parametrize("model_type", ["roberta", "distilbert", "gpt2"])
def test_mixed_batch_is_exact_on_each_architecture(tmp_path, model_type):
    directory = save_tiny_backbone(tmp_path / model_type, model_type=model_type)
    model, tokenizer, info = load_backbone(directory)
    pooling = "last" if model_type == "gpt2" else "cls"
    base = backbone_of(model)
    zoo = {"adapter": make_adapter(base, info, r=3, placement="both", pooling=pooling, seed=1),
           "lora": make_adapter(base, info, kind="lora", r=2, targets=("query", "key", "value"), std=0.05,
                                labels=("a", "b", "c"), seed=2),
           "reg": make_adapter(base, info, kind="lora", r=4, labels=(), std=0.05, pooling=pooling, seed=3)}
    engine = make_engine(directory)
    rng = random.Random(0)
    picks = [(rng.choice(sorted(zoo)), rng.choice(TEXTS)) for _ in range(12)]
    rows = [engine.admission.encode(serve(zoo[n], n), [TextInput(text=t)])[0] for n, t in picks]
    for (name, text), got in zip(picks, run_rows(engine, rows)):
        alone = run_rows(engine, engine.admission.encode(serve(zoo[name], name), [TextInput(text=text)]))[0]
        assert_same(got, alone)
        offline = task_model_from_adapter(copy.deepcopy(base), zoo[name])
        enc = tokenizer(text, truncation=True, max_length=128, return_tensors="pt")
        if model_type == "distilbert":  # its forward takes no token types; the engine sends none either
            enc.pop("token_type_ids")
        with torch.no_grad():
            logits = offline(**enc)[0]
        if "value" in got:
            assert got["value"] == pytest.approx(float(logits[0]), abs=1e-5)
        else:
            assert list(got["scores"].values()) == pytest.approx(torch.softmax(logits, -1).tolist(), abs=1e-5)


def test_gpt2_fused_lora_of_every_target_set_shares_a_batch_exactly(tmp_path):
    """GPT-2's c_attn LoRA is stored per slice; the pool holds each as the dense rank-(n * r) LoRA it equals, so
    slots adapting different slices (q+v, v+q, k, q+k+v) and ranks mix in one bmm and match each task's own forward."""
    directory = save_tiny_backbone(tmp_path / "gpt2", model_type="gpt2")
    model, tokenizer, info = load_backbone(directory)
    base = backbone_of(model)
    lora = dict(kind="lora", pooling="last")
    zoo = {"qv": make_adapter(base, info, r=4, seed=1, std=0.05, **lora),
           "vq": make_adapter(base, info, r=2, targets=("value", "query"), labels=("x", "y", "z"), seed=2, std=0.05,
                              **lora),
           "k": make_adapter(base, info, r=3, targets=("key",), labels=(), seed=3, std=0.3, **lora),
           "qkv": make_adapter(base, info, r=1, targets=("query", "key", "value"), seed=4, std=0.05, **lora),
           "adapter": make_adapter(base, info, r=3, placement="attention", pooling="last", seed=5)}
    assert zoo["qv"].tensors["lora.h.0.attn.c_attn.B"].shape == (2 * 32, 4)  # q and v only, no key rows stored
    engine = make_engine(directory)
    picks = [(name, TEXTS[i % len(TEXTS)]) for i, name in enumerate(sorted(zoo) * 2)]
    random.Random(1).shuffle(picks)
    rows = [engine.admission.encode(serve(zoo[n], n), [TextInput(text=t)])[0] for n, t in picks]
    for (name, text), got in zip(picks, run_rows(engine, rows)):
        assert_same(got, run_rows(engine, engine.admission.encode(serve(zoo[name], name), [TextInput(text=text)]))[0])
        offline = task_model_from_adapter(copy.deepcopy(base), zoo[name])
        with torch.no_grad():
            logits = offline(**tokenizer(text, truncation=True, max_length=128, return_tensors="pt"))[0]
        if "value" in got:
            assert got["value"] == pytest.approx(float(logits[0]), abs=1e-5)
        else:
            assert list(got["scores"].values()) == pytest.approx(torch.softmax(logits, -1).tolist(), abs=1e-5)
    for name in ("qv", "vq", "k", "qkv"):  # each LoRA really changes what its task serves
        enc = tokenizer(TEXTS[0], return_tensors="pt")
        without_lora = task_model_from_adapter(copy.deepcopy(base), AdapterFile(
            zoo[name].config, info, zoo[name].task, {k: torch.zeros_like(t) if k.endswith(".B") else t
                                                     for k, t in zoo[name].tensors.items()}))
        with torch.no_grad():
            assert not torch.allclose(task_model_from_adapter(copy.deepcopy(base), zoo[name])(**enc),
                                      without_lora(**enc), rtol=0, atol=1e-3), name
