"""Paired comparisons with confidence intervals: the one way benchmarks here compare two variants.

Repetitions of A and B are interleaved (A B, B A, ...) so slow drifts of a noisy machine hit both alike; each
pair gives one ratio A/B; the report is the median ratio with a percentile-bootstrap 95% interval of that
median and the number of pairs. A target is met only when the whole interval is on its side.
Few paired values with a natural zero (seeds of two training methods) use `paired_difference` instead: the
mean difference with a Student-t interval.
"""
from __future__ import annotations

import random
import statistics
from dataclasses import dataclass


# Two-sided 95% Student t quantiles t_{0.975, df} for df = 1..30 (beyond: the normal 1.960).
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
         2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)


@dataclass(frozen=True)
class Interval:
    """An estimate over `pairs` paired values with its 95% interval: a ratio (`paired_ratio`, printed 1.023x) or a
    difference (`paired_difference`, printed +0.0123)."""

    value: float
    low: float
    high: float
    pairs: int
    ratio: bool = True

    def __str__(self) -> str:
        num = "{:.3f}".format if self.ratio else "{:+.4f}".format
        return (f"{num(self.value)}{'x' if self.ratio else ''} [95% CI {num(self.low)}, {num(self.high)}] "
                f"({self.pairs} pairs)")

    def at_least(self, target: float) -> bool:
        return self.low >= target

    def at_most(self, target: float) -> bool:
        return self.high <= target


def paired_difference(a: list[float], b: list[float]) -> Interval:
    """Mean of a[i] - b[i] with a Student-t 95% interval (few pairs, e.g. seeds: a bootstrap would under-cover)."""
    if len(a) != len(b) or not a:
        raise ValueError(f"need equally many paired values, got {len(a)} and {len(b)}")
    diffs = [x - y for x, y in zip(a, b)]
    mean = statistics.mean(diffs)
    if len(diffs) == 1:
        return Interval(mean, float("-inf"), float("inf"), 1, ratio=False)
    half = (_T975[len(diffs) - 2] if len(diffs) - 1 <= len(_T975) else 1.960) * statistics.stdev(diffs) / len(diffs) ** 0.5
    return Interval(mean, mean - half, mean + half, len(diffs), ratio=False)


def paired_ratio(a: list[float], b: list[float], resamples: int = 10_000, seed: int = 0) -> Interval:
    """Median of a[i] / b[i] with a bootstrap 95% interval (resampling the pairs)."""
    if len(a) != len(b) or not a:
        raise ValueError(f"need equally many repetitions of both variants, got {len(a)} and {len(b)}")
    ratios = [x / y for x, y in zip(a, b)]
    rng = random.Random(seed)
    medians = sorted(statistics.median(rng.choices(ratios, k=len(ratios))) for _ in range(resamples))
    return Interval(statistics.median(ratios), medians[int(0.025 * resamples)],
                    medians[int(0.975 * resamples) - 1], len(ratios))
