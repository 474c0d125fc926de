"""GLUE metrics in numpy: accuracy, binary F1, Matthews correlation, Pearson and Spearman correlation."""
from __future__ import annotations

from typing import Callable

import numpy as np


def accuracy(preds: np.ndarray, labels: np.ndarray) -> float:
    return float((np.asarray(preds) == np.asarray(labels)).mean())


def f1(preds: np.ndarray, labels: np.ndarray, positive: int = 1) -> float:
    """Binary F1 of the class `positive` (MRPC / QQP: 'equivalent' = 1); 0 when it is never predicted nor true."""
    preds, labels = np.asarray(preds), np.asarray(labels)
    tp = float(((preds == positive) & (labels == positive)).sum())
    fp = float(((preds == positive) & (labels != positive)).sum())
    fn = float(((preds != positive) & (labels == positive)).sum())
    return 0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn)


def matthews(preds: np.ndarray, labels: np.ndarray) -> float:
    """Multi-class Matthews correlation (Gorodkin's R_K); 0 when either side is constant."""
    preds, labels = np.asarray(preds), np.asarray(labels)
    classes = np.union1d(preds, labels)
    conf = np.zeros((len(classes), len(classes)), dtype=np.float64)  # (true, predicted)
    np.add.at(conf, (np.searchsorted(classes, labels), np.searchsorted(classes, preds)), 1.0)
    t, p = conf.sum(1), conf.sum(0)  # (K,) true / predicted counts
    n, c = conf.sum(), np.trace(conf)
    denom = np.sqrt((n * n - (p * p).sum()) * (n * n - (t * t).sum()))
    return 0.0 if denom == 0 else float((c * n - (t * p).sum()) / denom)


def pearson(preds: np.ndarray, labels: np.ndarray) -> float:
    x = np.asarray(preds, dtype=np.float64) - np.mean(preds)
    y = np.asarray(labels, dtype=np.float64) - np.mean(labels)
    denom = np.sqrt((x * x).sum() * (y * y).sum())
    return 0.0 if denom == 0 else float((x * y).sum() / denom)


def _ranks(values: np.ndarray) -> np.ndarray:
    """Ranks 1..n with ties given their average rank."""
    values = np.asarray(values, dtype=np.float64)
    order = np.argsort(values, kind="mergesort")
    ranks = np.empty(len(values), dtype=np.float64)
    sorted_vals = values[order]
    start = 0
    for end in range(1, len(values) + 1):
        if end == len(values) or sorted_vals[end] != sorted_vals[start]:
            ranks[order[start:end]] = (start + end + 1) / 2.0  # mean of ranks start+1 .. end
            start = end
    return ranks


def spearman(preds: np.ndarray, labels: np.ndarray) -> float:
    return pearson(_ranks(preds), _ranks(labels))


METRICS: dict[str, Callable[[np.ndarray, np.ndarray], float]] = {
    "accuracy": accuracy, "f1": f1, "matthews": matthews, "pearson": pearson, "spearman": spearman,
}


def compute_metrics(names: tuple[str, ...] | list[str], preds: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    unknown = [n for n in names if n not in METRICS]
    if unknown:
        raise ValueError(f"unknown metric(s) {unknown}; known: {sorted(METRICS)}")
    return {name: METRICS[name](preds, labels) for name in names}
