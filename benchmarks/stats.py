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


# Two-sided 95% Student t quantiles t_{0.975, df} for df = 1..30 (beyond: the normal 1.960).
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
         2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)


@dataclass(frozen=True)
class Difference:
    mean: float
    low: float
    high: float
    pairs: int

    def __str__(self) -> str:
        return f"{self.mean:+.4f} [95% CI {self.low:+.4f}, {self.high:+.4f}] ({self.pairs} pairs)"


def paired_difference(a: list[float], b: list[float]) -> Difference:
    """Mean of a[i] - b[i] with a Student-t 95% interval (few pairs, e.g. seeds: a bootstrap would under-cover)."""
    if len(a) != len(b) or not a:
        raise ValueError(f"need equally many paired values, got {len(a)} and {len(b)}")
    diffs = [x - y for x, y in zip(a, b)]
    mean = statistics.mean(diffs)
    if len(diffs) == 1:
        return Difference(mean, float("-inf"), float("inf"), 1)
    half = (_T975[len(diffs) - 2] if len(diffs) - 1 <= len(_T975) else 1.960) * statistics.stdev(diffs) / len(diffs) ** 0.5
    return Difference(mean, mean - half, mean + half, len(diffs))


def paired_ratio(a: list[float], b: list[float], resamples: int = 10_000, seed: int = 0) -> Ratio:
    """Median of a[i] / b[i] with a bootstrap 95% interval (resampling the pairs)."""
    if len(a) != len(b) or not a:
        raise ValueError(f"need equally many repetitions of both variants, got {len(a)} and {len(b)}")
    ratios = [x / y for x, y in zip(a, b)]
    rng = random.Random(seed)
    medians = sorted(statistics.median(rng.choices(ratios, k=len(ratios))) for _ in range(resamples))
    return Ratio(statistics.median(ratios), medians[int(0.025 * resamples)], medians[int(0.975 * resamples) - 1],
                 len(ratios))
