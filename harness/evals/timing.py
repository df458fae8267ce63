"""Timing statistics: a median with a bootstrap confidence interval, so a noisy machine shows up as a
wide interval instead of a flaky verdict."""

from __future__ import annotations

import random
import statistics


def median_ci(values: list[float], seed: int, confidence: float = 0.95, resamples: int = 2000) -> tuple[float, float, float]:
    """(median, low, high): the percentile bootstrap interval of the median, resampled with a fixed seed."""
    if not values:
        raise ValueError("no values to summarise")
    rng = random.Random(seed)
    medians = sorted(statistics.median(rng.choices(values, k=len(values))) for _ in range(resamples))
    tail = (1 - confidence) / 2
    low = medians[int(tail * (resamples - 1))]
    high = medians[int((1 - tail) * (resamples - 1))]
    return statistics.median(values), low, high
