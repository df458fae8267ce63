"""Adaptations that let megatron-core run on a CPU-only worker.

megatron-core assumes CUDA in a handful of places (it allocates on ``torch.cuda.current_device()``,
synchronises streams between pipeline sends, and builds counters with ``device="cuda"``). On a GPU
worker none of this module is applied. On a CPU worker each adaptation below is applied once, is
named, and refuses to run against a megatron-core version it was not verified with: a new release
must be checked by a person (extend ``VERIFIED_MCORE``), never silently trusted.

The model-parallel RNG tracker needs no patch: ``runtime.distributed.seed_everything`` asks
megatron for its inference RNG tracker on CPU, which does not touch CUDA RNG states.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from packaging.version import Version
from torch.overrides import TorchFunctionMode

# megatron-core releases on which every adaptation below was verified (inclusive lower, exclusive upper).
VERIFIED_MCORE = (Version("0.16.0"), Version("0.20.0"))


class UnverifiedVersionError(RuntimeError):
    """megatron-core is outside the range the CPU adaptations were verified on."""


@dataclass(frozen=True)
class Adaptation:
    name: str
    why: str
    apply: Callable[[], None]


def _cpu_current_device() -> None:
    # ~40 call sites in models/, transformer/, tensor_parallel/ allocate on torch.cuda.current_device()
    # (GlobalMemoryBuffer.get_tensor, RoPE inv_freq, TP all-gather buffers).
    torch.cuda.current_device = lambda: torch.device("cpu")  # type: ignore[assignment]


def _no_cuda_synchronize() -> None:
    # p2p_communication and dist_checkpointing call torch.cuda.synchronize() after gloo sends and
    # before writing; gloo operations are synchronous on CPU, so there is nothing to wait for.
    torch.cuda.synchronize = lambda device=None: None  # type: ignore[assignment]


class _CudaToCpu(TorchFunctionMode):
    """Rewrites ``device="cuda"`` (and cuda:N) arguments of tensor factories to the CPU."""

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        device = kwargs.get("device")
        if device is not None and torch.device(device).type == "cuda":
            kwargs = {**kwargs, "device": torch.device("cpu")}
        return func(*args, **kwargs)


def _cuda_factories_to_cpu() -> None:
    # pipeline_parallel/schedules.py builds its token counters with torch.zeros(..., device="cuda").
    _CudaToCpu().__enter__()


ADAPTATIONS: tuple[Adaptation, ...] = (
    Adaptation("cpu-current-device", "torch.cuda.current_device() answers the CPU", _cpu_current_device),
    Adaptation("no-cuda-synchronize", "torch.cuda.synchronize() is a no-op", _no_cuda_synchronize),
    Adaptation("cuda-factories-to-cpu", 'device="cuda" tensor factories allocate on the CPU', _cuda_factories_to_cpu),
)

_applied: list[str] = []


def check_mcore_version(version: str) -> None:
    low, high = VERIFIED_MCORE
    if not low <= Version(version) < high:
        raise UnverifiedVersionError(
            f"megatron-core {version} is outside the range the CPU adaptations were verified on "
            f"[{low}, {high}); verify harness/runtime/cpu_compat.py against it and extend VERIFIED_MCORE"
        )


def apply_cpu_adaptations() -> list[str]:
    """Apply every adaptation once (idempotent); returns their names. Never call on a GPU worker."""
    if _applied:
        return list(_applied)
    if torch.cuda.is_available():
        raise RuntimeError("CPU adaptations must not be applied on a machine with CUDA")
    from megatron.core.package_info import __version__ as mcore_version

    check_mcore_version(mcore_version)
    for adaptation in ADAPTATIONS:
        adaptation.apply()
        _applied.append(adaptation.name)
    return list(_applied)
