"""The GLUE metrics on hand-computed values."""
from __future__ import annotations

import math

import numpy as np
import pytest

from trainer.metrics import accuracy, compute_metrics, f1, matthews, pearson, spearman


def test_accuracy_and_f1_binary() -> None:
    preds, labels = np.array([1, 1, 1, 0, 0]), np.array([1, 0, 1, 0, 1])
    assert accuracy(preds, labels) == pytest.approx(3 / 5)
    # tp=2, fp=1, fn=1 -> 2*2 / (2*2 + 1 + 1)
    assert f1(preds, labels) == pytest.approx(4 / 6)
    assert f1(np.zeros(3), np.zeros(3)) == 0.0  # the positive class never occurs


def test_matthews_binary_known_value() -> None:
    preds, labels = np.array([1, 1, 1, 0]), np.array([1, 0, 1, 0])
    # tp=2 tn=1 fp=1 fn=0: (2*1 - 1*0) / sqrt(3 * 2 * 1 * 2)
    assert matthews(preds, labels) == pytest.approx(2 / math.sqrt(12))
    assert matthews(labels, labels) == pytest.approx(1.0)
    assert matthews(1 - labels, labels) == pytest.approx(-1.0)
    assert matthews(np.ones(4), labels) == 0.0  # constant predictor (CoLA's degenerate case)


def test_matthews_multiclass_matches_binary_formula_generalisation() -> None:
    preds, labels = np.array([0, 1, 2, 2, 1, 0]), np.array([0, 1, 2, 1, 1, 2])
    # confusion (true x pred): diag 0:1, 1:2, 2:1; off: (1->2), (2->0); n=6, c=4
    t, p = np.array([1, 3, 2]), np.array([2, 2, 2])
    expected = (4 * 6 - (t * p).sum()) / math.sqrt((36 - (p * p).sum()) * (36 - (t * t).sum()))
    assert matthews(preds, labels) == pytest.approx(expected)


def test_pearson_and_spearman_known_values() -> None:
    assert pearson(np.array([1.0, 2.0, 3.0]), np.array([2.0, 4.0, 6.0])) == pytest.approx(1.0)
    assert pearson(np.array([1.0, 2.0, 3.0]), np.array([3.0, 2.0, 1.0])) == pytest.approx(-1.0)
    x, y = np.array([1.0, 2.0, 3.0, 4.0]), np.array([1.0, 3.0, 2.0, 5.0])
    # centred x = [-1.5, -.5, .5, 1.5], centred y = [-1.75, .25, -.75, 2.25]: cov 5.5, |x|^2 5, |y|^2 8.75
    assert pearson(x, y) == pytest.approx(5.5 / math.sqrt(5 * 8.75))
    # spearman is pearson of the ranks; ties get the average rank: [1, 2.5, 2.5, 4] vs [1, 3, 2, 4]
    assert spearman(np.array([1.0, 2.0, 2.0, 3.0]), np.array([10.0, 30.0, 20.0, 40.0])) == pytest.approx(
        4.5 / math.sqrt(4.5 * 5))
    assert spearman(np.array([1.0, 5.0, 100.0]), np.array([0.1, 0.2, 0.3])) == pytest.approx(1.0)


def test_compute_metrics_names_unknown_metric() -> None:
    out = compute_metrics(("accuracy", "matthews"), np.array([0, 1]), np.array([0, 1]))
    assert out == {"accuracy": 1.0, "matthews": 1.0}
    with pytest.raises(ValueError, match="unknown metric"):
        compute_metrics(("bleu",), np.array([0]), np.array([0]))
