"""Mixed-task batches are exact on every supported architecture (BERT, RoBERTa, DistilBERT, GPT-2)."""
from __future__ import annotations

import copy
import random

import pytest
import torch

from adamix import load_backbone, task_model_from_adapter
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
