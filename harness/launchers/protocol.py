"""Messages between the driver and its worker ranks (pickled over a loopback connection).

They live outside ``worker.py`` because that module runs as ``__main__`` in the workers.
"""

from __future__ import annotations

from dataclasses import dataclass

from harness.records import DEVICE_MEMORY, PEAK_MEMORY, Case


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


def merged_metrics(replies: list[RankReply]) -> dict[str, float]:
    """A case's metrics: the lowest reporting rank's, with each memory figure its largest rank's."""
    reported = sorted((r for r in replies if r.metrics is not None), key=lambda r: r.rank)
    merged = dict(reported[0].metrics or {})
    for name in (PEAK_MEMORY, DEVICE_MEMORY):
        values = [r.metrics[name] for r in reported if r.metrics and name in r.metrics]
        if values:
            merged[name] = max(values)
    return merged


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
