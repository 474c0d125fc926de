"""Mixed-task batches are exact on every supported architecture (BERT, RoBERTa, DistilBERT, GPT-2)."""
from __future__ import annotations

import copy
import random

import pytest
import torch

from adamix import load_backbone, task_model_from_adapter
from adamix.model import backbone_of
from server.engine import BatchingEngine, TextInput
from server.metrics import ServerMetrics
from server.pool import AdapterKey
from server.settings import Settings
from tests.server.helpers import TEXTS, assert_same, make_adapter, save_tiny_backbone


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
    served_model, _, _ = load_backbone(directory)
    engine = BatchingEngine(served_model, tokenizer, info, Settings(backbone=directory, demo_adapters=None),
                            ServerMetrics())
    rng = random.Random(0)
    picks = [(rng.choice(sorted(zoo)), rng.choice(TEXTS)) for _ in range(12)]
    rows = [engine.encode(AdapterKey(n, "v"), zoo[n], [TextInput(t)])[0] for n, t in picks]
    for (name, text), got in zip(picks, engine.run_batch(rows)):
        alone = engine.run_batch([engine.encode(AdapterKey(name, "v"), zoo[name], [TextInput(text)])[0]])[0]
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
