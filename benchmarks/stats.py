"""Paired ratios with bootstrap confidence intervals: the one way benchmarks here compare two variants.

Repetitions of A and B are interleaved (A B, B A, ...) so slow drifts of a noisy machine hit both alike; each
pair gives one ratio A/B; the report is the median ratio with a percentile-bootstrap 95% interval of that
median and the number of pairs. A target is met only when the whole interval is on its side.
"""
from __future__ import annotations

import random
import statistics
from dataclasses import dataclass


@dataclass(frozen=True)
class Ratio:
    median: float
    low: float
    high: float
    pairs: int

    def __str__(self) -> str:
        return f"{self.median:.3f}x [95% CI {self.low:.3f}, {self.high:.3f}] ({self.pairs} pairs)"

    def at_least(self, target: float) -> bool:
        return self.low >= target

    def at_most(self, target: float) -> bool:
        return self.high <= target


def paired_ratio(a: list[float], b: list[float], resamples: int = 10_000, seed: int = 0) -> Ratio:
    """Median of a[i] / b[i] with a bootstrap 95% interval (resampling the pairs)."""
    if len(a) != len(b) or not a:
        raise ValueError(f"need equally many repetitions of both variants, got {len(a)} and {len(b)}")
    ratios = [x / y for x, y in zip(a, b)]
    rng = random.Random(seed)
    medians = sorted(statistics.median(rng.choices(ratios, k=len(ratios))) for _ in range(resamples))
    return Ratio(statistics.median(ratios), medians[int(0.025 * resamples)], medians[int(0.975 * resamples) - 1],
                 len(ratios))
