"""The demo adapters shipped in server/demo_adapters/: valid for the default backbone, small, never MRPC."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

import torch

from adamix import load_backbone, read_adapter_file, task_model_from_adapter
from adamix.cli import main

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import split_glue  # noqa: E402

DEMO = Path(__file__).resolve().parents[2] / "server" / "demo_adapters"
# (provenance dataset, metric, floor). Floors (issue 12): accuracy at least 10 points above the majority class of
# the dev set scored (SST-2 dev 0.509; QNLI held-out part 0.503; RTE dev 0.527), MCC 0.30, Pearson 0.80; SST-2
# keeps its 0.85. `nli` trains on RTE + QNLI + STS-B pairs in RTE's layout and is scored on RTE dev.
EXPECTED = {"sst2": ("glue/sst2", "accuracy", 0.85), "stsb": ("glue/stsb", "pearson", 0.80),
            "qnli": ("glue/qnli", "accuracy", 0.603), "cola": ("glue/cola", "matthews", 0.30),
            "nli": ("glue/rte", "accuracy", 0.627)}
# QNLI here has only the GLUE dev set: the demo trains on a fixed 4,000-row part of it and is scored on the other
# 1,463 rows (benchmarks/split_glue.py qnli); a score on all 5,463 would include its own training rows.
SPLIT_SIZES = {"qnli": (4000, 1463)}


@pytest.mark.slow
def test_shipped_demo_adapters_are_valid_and_meet_their_targets() -> None:
    files = sorted(DEMO.glob("*.safetensors"))
    if not files:
        pytest.skip("no demo adapters shipped yet (benchmarks/train_demo_adapters.sh writes them)")
    assert {f.stem for f in files} == set(EXPECTED)
    _, _, info = load_backbone()
    for path in files:
        adapter = read_adapter_file(path, info)  # every key, shape, finite value, and the backbone fingerprint
        dataset, metric, target = EXPECTED[path.stem]
        prov = adapter.provenance
        assert "mrpc" not in prov["dataset"].lower()  # MRPC is non-commercial: never shipped
        assert (prov["dataset"], prov["metric"]) == (dataset, metric)
        assert prov["score"] >= target, path.name
        if path.stem in SPLIT_SIZES:
            assert (prov["train_examples"], prov["dev_examples"]) == SPLIT_SIZES[path.stem]
        assert adapter.config.num_experts == 4 and prov["method"] == "adamix"
        assert path.stat().st_size < 1 << 20


# The README's predict examples and the answer a user expects of each.
README_EXAMPLES = {"sst2": [("a gripping, beautifully acted film", "positive"), ("a tedious mess", "negative")],
                   "cola": [("The book was written by John.", "acceptable"), ("The book was wrote by John.",
                                                                            "unacceptable")],
                   "qnli": [(("Where is the Eiffel Tower?", "The Eiffel Tower is in Paris."), "entailment")],
                   "nli": [(("The Eiffel Tower is in Paris.", "The Eiffel Tower is located in France."), "entailment"),
                           (("A man is playing a guitar on stage.", "A woman is swimming in a lake."),
                            "not_entailment")]}


@pytest.mark.slow
def test_shipped_demos_answer_the_readme_examples_right() -> None:
    import copy

    model, tokenizer, info = load_backbone()
    for task, examples in README_EXAMPLES.items():
        adapter = read_adapter_file(DEMO / f"{task}.safetensors", info)
        offline = task_model_from_adapter(copy.deepcopy(model), adapter)
        for text, want in examples:
            enc = tokenizer(*((text,) if isinstance(text, str) else text), return_tensors="pt")
            with torch.no_grad():
                got = adapter.task.labels[int(offline(**enc)[0].argmax())]
            assert got == want, (task, text)
    stsb = task_model_from_adapter(copy.deepcopy(model), read_adapter_file(DEMO / "stsb.safetensors", info))
    with torch.no_grad():
        near, far = (float(stsb(**tokenizer("A cat sits on the mat.", other, return_tensors="pt"))[0])
                     for other in ("A cat is sitting on a rug.", "The stock market fell sharply today."))
    assert near > far + 1.5, (near, far)


# `adamix eval FILE` on the data each demo was scored on (train_demo_adapters.sh), against its provenance score.
# (GLUE task, folder); folder None: the split_glue.py held-out part.
EVAL_DATA = {"sst2": ("sst2", "SST-2"), "stsb": ("stsb", "STS-B"), "cola": ("cola", "CoLA"), "qnli": ("qnli", None),
             "nli": ("rte", "RTE")}


@pytest.mark.slow
@pytest.mark.parametrize("task", sorted(EXPECTED))
def test_adamix_eval_reproduces_the_provenance_score(task: str, shared_data: Path, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture) -> None:
    glue_task, folder = EVAL_DATA[task]
    if folder is None:
        split_glue.split(glue_task, shared_data / "glue" / split_glue.SPLITS[glue_task][0], tmp_path / task)
        data = tmp_path / task
    else:
        data = shared_data / "glue" / folder
    path = DEMO / f"{task}.safetensors"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the demos were trained and scored: the same float rounding
    try:
        capsys.readouterr()
        assert main(["eval", str(path), "--glue-task", glue_task, "--data", str(data), "--json"]) == 0
    finally:
        torch.set_num_threads(threads)
    got = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    prov = read_adapter_file(path).provenance
    assert (got["metric"], got["examples"]) == (prov["metric"], prov["dev_examples"])
    assert got["score"] == pytest.approx(prov["score"], abs=1e-6)
