"""Small statistics the checks report with their numbers: cluster-bootstrap intervals and McNemar's
exact test. numpy only (no torch): the driver's reports and the unit tests use them too."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

RESAMPLES = 1000
CONFIDENCE = 0.95


@dataclass(frozen=True)
class Estimate:
    """A statistic with its bootstrap interval."""

    value: float
    low: float
    high: float


def cluster_bootstrap(
    values: np.ndarray, statistic: Callable[[np.ndarray, np.ndarray], np.ndarray], seed: int, resamples: int = RESAMPLES
) -> Estimate:
    """``statistic(sums, counts)`` over rows of ``values`` ([rows, per_row]) with a percentile interval
    from resampling whole rows: tokens of one sequence are not independent, sequences are.

    ``statistic`` gets per-row sums of the values (or of what it needs, see ``mean`` / ``rms``) summed over
    the chosen rows, and the matching token counts, and returns the statistic for each resample."""
    rows = values.shape[0]
    sums, counts = values.sum(axis=1), np.full(rows, values.shape[1], dtype=np.float64)
    point = float(statistic(sums.sum(keepdims=True), counts.sum(keepdims=True))[0])
    if rows < 2:
        return Estimate(point, point, point)
    pick = np.random.default_rng(seed).integers(0, rows, size=(resamples, rows))
    spread = statistic(sums[pick].sum(axis=1), counts[pick].sum(axis=1))
    tail = 100 * (1 - CONFIDENCE) / 2
    low, high = np.percentile(spread, [tail, 100 - tail])
    return Estimate(point, float(low), float(high))


def mean(values: np.ndarray, seed: int) -> Estimate:
    return cluster_bootstrap(values, lambda sums, counts: sums / counts, seed)


def rms(values: np.ndarray, seed: int) -> Estimate:
    return cluster_bootstrap(values * values, lambda sums, counts: np.sqrt(sums / counts), seed)


def mcnemar_exact(lost: int, gained: int) -> float:
    """Two-sided exact McNemar p-value for paired right/wrong outcomes: ``lost`` items right before and
    wrong after, ``gained`` the reverse. Under "no change", each discordant item goes either way with
    probability 1/2 (a binomial test on the discordant pairs), as NeMo Evaluator compares runs."""
    n = lost + gained
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(lost, gained) + 1))
    return min(1.0, 2 * tail / 2**n)
