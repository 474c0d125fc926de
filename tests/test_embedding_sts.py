"""benchmarks/embedding_sts.py on a tiny backbone: its numbers are `adamix eval`'s, and the bootstrap is paired."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from adamix.adapter_file import write_adapter_file
from adamix.cli import main as adamix
from tests.server.helpers import make_adapter

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import embedding_sts  # noqa: E402

ROWS = [("a cat sits on the mat", "a cat is on a mat", 4.6), ("a man plays a guitar", "it rains", 0.2),
        ("the dog runs in the park", "a dog is running", 3.8), ("red car", "a blue house", 1.0),
        ("stocks fell sharply", "markets dropped a lot", 4.0), ("she reads a book", "a woman is reading", 3.2)]


def test_bootstrap_of_identical_scores_is_zero_and_of_a_better_ranking_positive() -> None:
    gold = np.arange(50, dtype=np.float64)
    noisy = gold + np.random.default_rng(0).normal(0, 20, 50)
    assert embedding_sts.bootstrap_difference(noisy, noisy, gold, 50) == (0.0, 0.0)
    low, high = embedding_sts.bootstrap_difference(gold, noisy, gold, 200)
    assert 0 < low <= high


def test_scores_equal_adamix_eval_and_refuse_other_task_types(tiny_loaded, tiny_backbone_dir: Path, tmp_path: Path,
                                                             capsys: pytest.CaptureFixture) -> None:
    model, _, info = tiny_loaded
    data = tmp_path / "STS-B"
    data.mkdir()
    (data / "dev.tsv").write_text("index\tsentence1\tsentence2\tscore\n"
                                  + "".join(f"{i}\t{a}\t{b}\t{s}\n" for i, (a, b, s) in enumerate(ROWS)))
    emb, clf = tmp_path / "emb.safetensors", tmp_path / "clf.safetensors"
    write_adapter_file(emb, make_adapter(model, info, r=4, seed=4, std=0.05, task_type="embedding"))
    write_adapter_file(clf, make_adapter(model, info, r=4, seed=1))
    common = ["--data", str(data), "--backbone", str(tiny_backbone_dir)]
    capsys.readouterr()
    assert embedding_sts.main([str(emb), *common, "--bootstrap", "20", "--json"]) == 0
    bare, tuned = json.loads(capsys.readouterr().out)["rows"]
    assert adamix(["eval", str(emb), "--glue-task", "stsb", *common, "--json"]) == 0
    evaluated = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert tuned["spearman"] == pytest.approx(evaluated["metrics"]["spearman"], abs=1e-9)
    assert tuned["pearson"] == pytest.approx(evaluated["metrics"]["pearson"], abs=1e-9)
    assert tuned["pearson"] != pytest.approx(bare["pearson"], abs=1e-6)  # the adapter was applied
    assert tuned["spearman_minus_bare"] == pytest.approx(tuned["spearman"] - bare["spearman"])
    low, high = tuned["spearman_minus_bare_ci95"]
    assert low <= high
    with pytest.raises(SystemExit, match="is a classification adapter, not an embedding adapter"):
        embedding_sts.main([str(clf), *common, "--bootstrap", "0"])
