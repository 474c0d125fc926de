"""`adamix train --task-type embedding`: the objectives and AdaMix's consistency against hand computation, the
training step's two passes, the CLI's refusals, and a trained file that `adamix eval` and the server both read."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from adamix import TaskSpec, embedding_consistency_loss, load_backbone, read_adapter_file, task_model_from_adapter
from adamix.cli import main
from adamix.model import backbone_of
from tests.conftest import SHARED_DATA
from trainer.data import Example
from trainer.embedding import (EmbeddingCollator, cosent_loss, embedding_training_loss, in_batch_negatives_loss,
                               pair_embeddings)
from trainer.loop import TrainConfig, train_step
from trainer.methods import adamix_config, build_model

STSB_DIR = SHARED_DATA / "glue" / "STS-B"
PAIRS = [Example("a cat sits on the mat", "a cat is on a mat", 4.6), Example("a man plays a guitar", "it rains", 0.2),
         Example("the dog runs in the park", "a dog is running", 3.8), Example("red car", "a blue house", 1.0)]


@pytest.fixture
def stsb_dir() -> Path:
    if not (STSB_DIR / "train.tsv").is_file():
        pytest.skip(f"GLUE STS-B not found at {STSB_DIR}")
    return STSB_DIR


# ---------------------------------------------------------------- the losses, by hand

def test_cosent_is_the_log_sum_over_misorderable_pairs() -> None:
    cos, scores = torch.tensor([0.9, 0.2, 0.5], dtype=torch.float64), torch.tensor([5.0, 1.0, 3.0])
    # pairs (i, j) with score_i > score_j: (0, 1), (0, 2), (2, 1); terms 20 * (cos_j - cos_i) = -14, -8, -6
    expected = math.log(1 + math.exp(-14) + math.exp(-8) + math.exp(-6))
    assert float(cosent_loss(cos, scores)) == pytest.approx(expected, rel=1e-6)
    # a misordered pair costs about scale * the cosine gap; equal gold scores cost nothing
    assert float(cosent_loss(torch.tensor([0.1, 0.8]), torch.tensor([4.0, 2.0]))) == pytest.approx(
        math.log(1 + math.exp(14)), rel=1e-6)
    assert float(cosent_loss(torch.tensor([0.1, 0.8]), torch.tensor([3.0, 3.0]))) == 0.0
    assert float(cosent_loss(torch.tensor([0.1, 0.8]), torch.tensor([2.0, 4.0]), scale=5.0)) == pytest.approx(
        math.log(1 + math.exp(-3.5)), rel=1e-6)


def test_in_batch_negatives_is_cross_entropy_over_the_batch_pairs() -> None:
    texts = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    pairs = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    # cosines: text 0 -> (1, 0.6), text 1 -> (0, 0.8); scaled by 20, the diagonal is each text's positive
    expected = 0.5 * (math.log(1 + math.exp(12 - 20)) + math.log(1 + math.exp(0 - 16)))
    assert float(in_batch_negatives_loss(texts, pairs)) == pytest.approx(expected, rel=1e-5)  # float32


# ---------------------------------------------------------------- the training step

def _model(tiny_bert_dir: Path, method: str, embedding_dim: int | None = None):
    backbone, tokenizer, _ = load_backbone(tiny_bert_dir)
    task = TaskSpec("embedding", max_seq_len=32, embedding_dim=embedding_dim)
    return build_model(method, backbone, task, adamix_config(method, bottleneck=8), 0).train(), tokenizer


@pytest.mark.parametrize("objective", ["cosent", "mnrl"])
def test_adamix_embedding_step_is_objective_plus_consistency_over_two_passes(tiny_bert_dir: Path,
                                                                            objective: str) -> None:
    model, tokenizer = _model(tiny_bert_dir, "adamix")
    batch = EmbeddingCollator(tokenizer, 32)(PAIRS)
    assert batch["input_ids"].shape[0] == 2 * len(PAIRS) and batch["labels"].tolist() == pytest.approx(
        [e.label for e in PAIRS])
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    rng, route = torch.get_rng_state(), model.adamix_router.get_state()
    with torch.no_grad():  # the step's loss by hand from the same RNG states
        (t1, p1), (t2, p2) = pair_embeddings(model, inputs), pair_embeddings(model, inputs)
        assert torch.allclose(t1.norm(dim=-1), torch.ones(len(PAIRS)), atol=1e-5)
        task = (cosent_loss((t1 * p1).sum(-1), batch["labels"]) if objective == "cosent"
                else in_batch_negatives_loss(t1, p1))
        expected = task + 0.5 * embedding_consistency_loss(t1, p1, t2, p2)
    assert not torch.allclose(t1, t2)  # independent routes and dropout masks
    torch.set_rng_state(rng)
    model.adamix_router.set_state(route)
    calls = []
    model.register_forward_hook(lambda *_: calls.append(1))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    cfg = TrainConfig(method="adamix", embedding_loss=objective, consistency_weight=0.5)
    parts = train_step(model, optimizer, batch, cfg, regression=False)
    assert len(calls) == 2 and parts["consistency"] > 0
    assert parts["loss"] == pytest.approx(float(expected), rel=1e-5)

    single, _ = _model(tiny_bert_dir, "lora", embedding_dim=8)
    loss, parts = embedding_training_loss(single, inputs, batch["labels"], False, objective, 20.0, 1.0)
    assert "consistency" not in parts and loss.requires_grad
    with pytest.raises(ValueError, match="embedding loss must be one of"):
        embedding_training_loss(single, inputs, batch["labels"], False, "triplet", 20.0, 1.0)


# ---------------------------------------------------------------- the CLI

def _train_args(tmp_path: Path, *extra: str) -> list[str]:
    return ["train", *extra, "--output", str(tmp_path / "e.safetensors"), "--no-progress"]


@pytest.mark.parametrize("args, message", [
    (["--embedding-loss", "mnrl", "--glue-task", "stsb", "--data", "STS-B"],
     "--embedding-loss applies to --task-type embedding only"),
    (["--projection-dim", "8", "--glue-task", "stsb", "--data", "STS-B"], "--projection-dim applies to"),
    (["--task-type", "embedding", "--glue-task", "rte", "--data", "RTE"], "--glue-task stsb, not 'rte'"),
    (["--task-type", "embedding", "--glue-task", "stsb", "--data", "STS-B", "--regression"], "drop --regression"),
    (["--task-type", "embedding", "--glue-task", "stsb", "--data", "STS-B", "--labels", "a,b"], "drop --labels"),
    (["--task-type", "embedding", "--glue-task", "stsb", "--data", "STS-B", "--metric", "accuracy"],
     "scored by spearman or pearson of cosine, not --metric accuracy"),
    (["--task-type", "embedding", "--glue-task", "stsb", "--data", "STS-B", "--regression-consistency", "mse"],
     "--regression-consistency is for regression heads"),
    (["--task-type", "embedding", "--glue-task", "stsb", "--data", "STS-B", "--projection-dim", "0"],
     "--projection-dim must be in [1, 8192], got 0"),
    (["--task-type", "embedding", "--glue-task", "stsb", "--data", "STS-B", "--embedding-scale", "-1"],
     "--embedding-scale must be positive"),
    (["--task-type", "embedding", "--train-file", "t.csv", "--dev-file", "d.csv"], "give --text-pair-column"),
])
def test_embedding_cli_refuses_bad_combinations(tmp_path: Path, args: list[str], message: str,
                                                capsys: pytest.CaptureFixture) -> None:
    assert main(_train_args(tmp_path, *args)) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "e.safetensors").exists()


def _served_embeddings(backbone_dir: Path, registry: Path, task: str, texts: list[str]) -> list[list[float]]:
    from fastapi.testclient import TestClient

    from server.app import create_app
    from server.settings import Settings
    from tests.server.helpers import wait_ready

    settings = Settings(backbone=backbone_dir, registry=registry, demo_adapters=None, insecure_no_auth=True)
    with TestClient(create_app(settings)) as client:
        wait_ready(client)
        r = client.post("/v1/embeddings", json={"model": task, "input": texts})
        assert r.status_code == 200, r.text
        return [d["embedding"] for d in r.json()["data"]]


@pytest.mark.parametrize("method, extra", [
    ("adamix", []),
    ("lora", ["--projection-dim", "8"]),
    ("adapter", ["--embedding-loss", "mnrl"]),
])
def test_trained_embedding_adapter_is_evaluated_and_served(tiny_bert_dir: Path, stsb_dir: Path, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture, method: str,
                                                           extra: list[str]) -> None:
    out, registry = tmp_path / "e.safetensors", tmp_path / "registry"
    if "mnrl" in extra:  # positives only, from a generic file without a score column; scored dev pairs
        (tmp_path / "pos.jsonl").write_text("".join(json.dumps({"a": e.text, "b": e.text_pair}) + "\n"
                                                    for e in PAIRS))
        (tmp_path / "dev.jsonl").write_text("".join(json.dumps({"a": e.text, "b": e.text_pair, "score": e.label})
                                                    + "\n" for e in PAIRS * 3))
        dev_args = ["--dev-file", str(tmp_path / "dev.jsonl"), "--text-column", "a", "--text-pair-column", "b",
                    "--label-column", "score"]
        data = ["--train-file", str(tmp_path / "pos.jsonl"), *dev_args]
    else:
        dev_args = ["--glue-task", "stsb", "--data", str(stsb_dir), "--dev-limit", "16"]
        data = [*dev_args, "--train-limit", "24"]
    code = main(["train", "--task-type", "embedding", *data, "--method", method, "--backbone", str(tiny_bert_dir),
                 "--batch-size", "4", "--max-seq-len", "32", "--max-steps", "3", "--eval-every", "2",
                 "--no-progress", "--output", str(out), "--registry", str(registry), "--task-name", "emb", *extra])
    assert code == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    backbone, tokenizer, info = load_backbone(tiny_bert_dir)
    adapter = read_adapter_file(out, info)  # validates every key, shape and the backbone fingerprint
    assert adapter.task.type == "embedding" and adapter.task.labels == ()
    assert (adapter.head is None) == ("--projection-dim" not in extra)
    assert adapter.config.num_experts == (4 if method == "adamix" else 1)  # as trained; the tensors are merged
    assert adapter.config.kind == ("lora" if method == "lora" else "adapter")
    prov = adapter.provenance
    assert prov["metric"] == "spearman" and set(prov["metrics"]) == {"spearman", "pearson"}
    assert prov["method"] == method and prov["embedding_loss"] == ("mnrl" if extra[-1:] == ["mnrl"] else "cosent")
    assert prov["score"] == summary["score"] == max(
        json.loads(line)["dev_spearman"] for line in out.with_suffix(".jsonl").read_text().splitlines())

    # `adamix eval` re-scores the merged file exactly (eval mode during training used the same averaged weights)
    assert main(["eval", str(out), *dev_args, "--backbone", str(tiny_bert_dir), "--json"]) == 0
    evaluated = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert evaluated["score"] == pytest.approx(prov["score"], abs=1e-9)

    # the server reads the same file and answers the offline model's unit vectors
    texts = ["a cat sits on the mat", "stocks fell sharply on monday"]
    served = _served_embeddings(tiny_bert_dir, registry, "emb", texts)
    offline = task_model_from_adapter(backbone_of(backbone), adapter)
    with torch.no_grad():
        enc = tokenizer(texts, padding=True, return_tensors="pt")
        expected = offline(**{k: enc[k] for k in ("input_ids", "attention_mask", "token_type_ids")})  # (2, p)
    assert len(served[0]) == (8 if "--projection-dim" in extra else backbone.config.hidden_size)
    assert torch.allclose(torch.tensor(served), expected, atol=1e-5)
    assert torch.allclose(torch.tensor(served).norm(dim=-1), torch.ones(2), atol=1e-5)


def test_default_publish_name_never_takes_the_glue_regressors_name() -> None:
    from argparse import Namespace

    from trainer.run import publish_name

    args = dict(task_name=None, glue_task="stsb", output=Path("out/sim.safetensors"))
    assert publish_name(Namespace(**args, task_type="embedding")) == "stsb-embedding"
    assert publish_name(Namespace(**args, task_type=None)) == "stsb"
    assert publish_name(Namespace(**{**args, "task_name": "mine"}, task_type="embedding")) == "mine"
    assert publish_name(Namespace(**{**args, "glue_task": None}, task_type="embedding")) == "sim"
