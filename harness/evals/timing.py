"""Timing statistics: a median with a bootstrap confidence interval, and paired measurement of two
code paths the way benchmark tools compare them (warm-up, then A B A B ... until the interval of
the ratio is tight), so a noisy machine costs repetitions instead of a flaky verdict."""

from __future__ import annotations

import random
import statistics
from collections.abc import Callable
from dataclasses import dataclass


def median_ci(
    values: list[float], seed: int, confidence: float = 0.95, resamples: int = 2000
) -> tuple[float, float, float]:
    """(median, low, high): the percentile bootstrap interval of the median, resampled with a fixed seed."""
    if not values:
        raise ValueError("no values to summarise")
    rng = random.Random(seed)
    medians = sorted(statistics.median(rng.choices(values, k=len(values))) for _ in range(resamples))
    tail = (1 - confidence) / 2
    low = medians[int(tail * (resamples - 1))]
    high = medians[int((1 - tail) * (resamples - 1))]
    return statistics.median(values), low, high


@dataclass(frozen=True)
class Paired:
    """Seconds of a reference path (``a``) and a candidate (``b``), one pair per repetition, and the
    median of a/b (the candidate's speedup) with its 95% bootstrap interval."""

    a_s: tuple[float, ...]
    b_s: tuple[float, ...]
    ratio: float
    low: float
    high: float

    @property
    def half_width(self) -> float:
        """Half the interval's width relative to the median ratio (0.05: +-5%)."""
        return (self.high - self.low) / 2 / self.ratio


@dataclass(frozen=True)
class PairingPlan:
    warmup: int  # pairs run and discarded first
    min_pairs: int
    max_pairs: int
    half_width: float  # stop once the interval is this tight (relative), or at max_pairs
    every: int = 5  # pairs between two looks at the interval


def interleaved(time_a: Callable[[], float], time_b: Callable[[], float], plan: PairingPlan, seed: int) -> Paired:
    """Alternate the two timers (each returns seconds) so drift and neighbours' load hit both alike.
    Deterministic in its stopping rule: the same timings give the same number of pairs, so ranks
    that share their timings stop together."""
    for _ in range(plan.warmup):
        time_a()
        time_b()
    a_s: list[float] = []
    b_s: list[float] = []
    while True:
        a_s.append(time_a())
        b_s.append(time_b())
        n = len(a_s)
        if n < plan.min_pairs or (n % plan.every and n < plan.max_pairs):
            continue
        ratio, low, high = median_ci([a / b for a, b in zip(a_s, b_s, strict=True)], seed)
        result = Paired(tuple(a_s), tuple(b_s), ratio, low, high)
        if result.half_width <= plan.half_width or n >= plan.max_pairs:
            return result
