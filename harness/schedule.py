"""Step 4: order cases so warm worker pools are reused, and decide which cannot run here."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from harness.checks import get_check
from harness.optimizations import get_optimization
from harness.records import Case
from harness.suites.expand import Resources


@dataclass(frozen=True)
class Scheduled:
    case: Case
    skip: str | None  # why this case cannot run on this machine


def _no_gpu(case: Case, resources: Resources) -> str | None:
    if case.platform != "gpu":
        return None
    if resources.gpus == 0:
        return "GPU case: no CUDA device on this machine (torch.cuda.device_count() == 0)"
    return (
        f"needs {case.world_size} GPUs, this machine has {resources.gpus}" if case.world_size > resources.gpus else None
    )


def _model_unavailable(case: Case, resources: Resources) -> str | None:
    return f"model {case.model}: {case.model_spec.unavailable}" if case.model_spec.unavailable else None


def _model_gpu_only(case: Case, resources: Resources) -> str | None:
    return (
        f"GPU only: model {case.model}: {case.model_spec.gpu_only}"
        if case.platform == "cpu" and case.model_spec.gpu_only
        else None
    )


def _mamba_kernels_missing(case: Case, resources: Resources) -> str | None:
    if case.platform != "gpu" or case.model_spec.hybrid_pattern is None or not resources.mamba_missing:
        return None
    return (
        f"model {case.model} has Mamba layers, whose kernels come from {' and '.join(resources.mamba_missing)}: not "
        "importable here (the NGC PyTorch image ships neither; pip install mamba-ssm causal-conv1d "
        "--no-build-isolation)"
    )


def _context_parallel_on_cpu(case: Case, resources: Resources) -> str | None:
    if case.platform != "cpu" or not any(marker.startswith("cp") and marker[2:].isdigit() for marker in case.markers):
        return None
    return (
        "GPU only: context parallelism runs in Transformer Engine's attention alone (megatron's own "
        "DotProductAttention asserts context_parallel_size == 1; TE needs CUDA)"
    )


def _optimization_gpu_only(case: Case, resources: Resources) -> str | None:
    gpu_only = get_optimization(case.optimization).gpu_only if case.platform == "cpu" else None
    return f"GPU only: {case.optimization} {gpu_only}" if gpu_only else None


def _check_cpu_blocker(case: Case, resources: Resources) -> str | None:
    blocker = get_check(case.check).cpu_blocker(case.params) if case.platform == "cpu" else None
    return None if blocker is None else f"GPU only: {blocker}"


# Every reason a case cannot run on this machine, in the order they are said: the one place they live.
SKIP_REASONS: tuple[Callable[[Case, Resources], str | None], ...] = (
    _no_gpu,
    _model_unavailable,
    _model_gpu_only,
    _mamba_kernels_missing,
    _context_parallel_on_cpu,
    _optimization_gpu_only,
    _check_cpu_blocker,
)


def skip_reason(case: Case, resources: Resources) -> str | None:
    return next((reason for why in SKIP_REASONS if (reason := why(case, resources)) is not None), None)


def schedule(cases: list[Case], resources: Resources) -> list[Scheduled]:
    """Runnable cases grouped by (platform, world size), in their declared order within a group."""
    ordered = sorted(enumerate(cases), key=lambda item: (item[1].platform, item[1].world_size, item[0]))
    return [Scheduled(case, skip_reason(case, resources)) for _, case in ordered]
