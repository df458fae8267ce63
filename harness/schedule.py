"""Step 4: order cases so warm worker pools are reused, and decide which cannot run here."""

from __future__ import annotations

from dataclasses import dataclass

from harness.checks import get_check
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
    if case.platform == "gpu" and case.world_size > resources.gpus:
        return f"needs {case.world_size} GPUs, this machine has {resources.gpus}"
    if case.spec.unavailable:
        return f"model {case.model}: {case.spec.unavailable}"
    if case.platform != "cpu":
        return None
    if case.spec.gpu_only:
        return f"GPU only: model {case.model}: {case.spec.gpu_only}"
    if any(marker.startswith("cp") and marker[2:].isdigit() for marker in case.markers):
        return ("GPU only: context parallelism runs in Transformer Engine's attention alone (megatron's own "
                "DotProductAttention asserts context_parallel_size == 1; TE needs CUDA)")
    gpu_only = get_optimization(case.optimization).gpu_only
    if gpu_only:
        return f"GPU only: {case.optimization} {gpu_only}"
    blocker = get_check(case.check).cpu_blocker(case.params)
    return None if blocker is None else f"GPU only: {blocker}"


def schedule(cases: list[Case], resources: Resources) -> list[Scheduled]:
    """Runnable cases grouped by (platform, world size), in their declared order within a group."""
    ordered = sorted(enumerate(cases), key=lambda item: (item[1].platform, item[1].world_size, item[0]))
    return [Scheduled(case, skip_reason(case, resources)) for _, case in ordered]
