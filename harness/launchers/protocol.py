"""Messages between the driver and its worker ranks (pickled over a loopback connection).

They live outside ``worker.py`` because that module runs as ``__main__`` in the workers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from harness.records import WORKER_MEMORY, Case


@dataclass(frozen=True)
class Task:
    case: Case
    artifacts: str


@dataclass(frozen=True)
class RankReply:
    rank: int
    metrics: dict[str, float] | None
    error: str | None
    duration_s: float
    timings: dict[str, tuple[float, ...]] = field(default_factory=dict)
    kept: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Measured:
    """What a case's ranks measured together."""

    metrics: dict[str, float]
    timings: dict[str, tuple[float, ...]]
    kept: dict[str, Any] = field(default_factory=dict)


def merged(replies: list[RankReply]) -> Measured:
    """A case's metrics and timings: the lowest reporting rank's, with each memory figure its largest rank's."""
    reported = sorted((r for r in replies if r.metrics is not None), key=lambda r: r.rank)
    metrics = dict(reported[0].metrics or {})
    for name in WORKER_MEMORY:
        values = [each[name] for r in reported if name in (each := r.metrics or {})]
        if values:
            metrics[name] = max(values)
    return Measured(metrics, reported[0].timings, reported[0].kept)


@dataclass(frozen=True)
class Batch:
    """Cases a batch job (Slurm, container) runs in order, pickled into its folder by the driver."""

    platform: str
    world_size: int
    tasks: tuple[Task, ...]


BATCH_FILE = "batch.pkl"


def started_marker(index: int, rank: int) -> str:
    return f"{index:04d}.rank{rank}.started"


def reply_file(index: int, rank: int) -> str:
    return f"{index:04d}.rank{rank}.json"
