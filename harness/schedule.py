"""Step 4: order cases so warm worker pools are reused, and decide which cannot run here."""

from __future__ import annotations

from dataclasses import dataclass

from harness.optimizations import get_optimization
from harness.records import Case
from harness.suites.expand import Resources


@dataclass(frozen=True)
class Scheduled:
    case: Case
    skip: str | None  # why this case cannot run on this machine


def skip_reason(case: Case, resources: Resources) -> str | None:
    if case.platform == "gpu" and resources.gpus == 0:
        return "GPU case: no CUDA device on this machine (torch.cuda.device_count() == 0)"
    if case.spec.unavailable:
        return f"model {case.model}: {case.spec.unavailable}"
    gpu_only = get_optimization(case.optimization).gpu_only
    if case.platform == "cpu" and gpu_only:
        return f"GPU only: {case.optimization} {gpu_only}"
    return None


def schedule(cases: list[Case], resources: Resources) -> list[Scheduled]:
    """Runnable cases grouped by (platform, world size), in their declared order within a group."""
    ordered = sorted(enumerate(cases), key=lambda item: (item[1].platform, item[1].world_size, item[0]))
    return [Scheduled(case, skip_reason(case, resources)) for _, case in ordered]
