"""Which environment a run is in, and the pinned CPU numerics that make one environment out of
many machines.

A baseline holds only where the same arithmetic runs. On CPUs, the same torch build picks kernels
by the host's instruction set (AVX2, AVX-512, AMX) and splits reductions by its thread count, so
two x86 machines give different low bits and, through an INT8 rounding or a training run,
different verdicts. The workers therefore run with the pins below; every x86-64 host with AVX2
then computes bit-identically and shares one baseline set, ``cpu-x86_64-avx2``. GPUs cannot be
pinned that way (H100, H200 and B200 run different kernels), so each GPU model is an environment
of its own, like Megatron-LM's golden values per platform.

Importable without torch: the driver computes environments and rank variables before any worker.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Pin:
    variable: str
    value: str
    why: str


PINNED_ISA = "avx2"
# Threads per world of ranks, whatever the host's core count: a world-1 case gets 2 threads, each rank
# of a world-2 case 1. ATen splits reductions by thread count and MKL's results are reproducible only
# for a fixed count, so this is part of the arithmetic, not a tuning knob. (2 = the CI machine's cores.)
THREADS_PER_WORLD = 2

# Applied to every CPU rank on x86-64 hosts with AVX2 (torch reads them when it loads its libraries).
X86_PINS: tuple[Pin, ...] = (
    Pin(
        "ATEN_CPU_CAPABILITY",
        PINNED_ISA,
        "ATen's vectorised kernels (softmax, norms, reductions, elementwise, RNG fills) take the AVX2 path, not "
        "AVX-512 where the host has it",
    ),
    # AVX2 was pinned first: MKL honours it on Intel only and falls back to its AUTO branch elsewhere
    # (MKL_VERBOSE prints "CNR:AUTO" on an AMD EPYC), so an INT8 reshard measured 4.8e-7 there against
    # 7.8e-3 on a pinned Xeon. COMPATIBLE is the branch MKL documents as identical on Intel and others.
    Pin(
        "MKL_CBWR",
        "COMPATIBLE",
        "MKL conditional numerical reproducibility: GEMMs run MKL's vendor-neutral code path, bit-identical "
        "on Intel and AMD CPUs (the AVX2 branch is honoured on Intel only)",
    ),
    Pin(
        "ONEDNN_MAX_CPU_ISA",
        "AVX2",
        "oneDNN kernels (mkldnn matmul, bf16 paths) no wider than AVX2: no AVX-512 or AMX kernels",
    ),
    Pin(
        "MKL_DYNAMIC",
        "FALSE",
        "MKL may not lower its thread count at run time under load (that would change the reduction split)",
    ),
    Pin("OMP_DYNAMIC", "FALSE", "nor may OpenMP"),
)


# GPU ranks: full fp32 matmuls. NGC PyTorch images turn TF32 on for cuBLAS whatever torch's flags say
# (TORCH_ALLOW_TF32_CUBLAS_OVERRIDE=1 in the image), and TF32 keeps 10 mantissa bits: fp32 budgets such
# as KD parity's 1e-5 cannot hold under it. The policy is "off" everywhere; bf16 cases are the
# low-precision coverage, and the pins are in every GPU baseline's provenance.
GPU_PINS: tuple[Pin, ...] = (
    Pin(
        "TORCH_ALLOW_TF32_CUBLAS_OVERRIDE",
        "0",
        "NGC images set it to 1, forcing TF32 cuBLAS matmuls over torch's allow_tf32=False",
    ),
    Pin("NVIDIA_TF32_OVERRIDE", "0", "no library (cuBLAS, cuDNN) may use TF32 for fp32 math"),
    Pin(
        "NVTE_ALLOW_NONDETERMINISTIC_ALGO",
        "0",
        "Transformer Engine's attention takes deterministic backward kernels (its fused bf16 attention backward is "
        "otherwise nondeterministic): a bf16 KD trajectory repeats run to run on one GPU",
    ),
)
TF32_POLICY = "off"


def cuda_arch_list(capabilities: list[str]) -> str | None:
    """TORCH_CUDA_ARCH_LIST for this machine's GPUs ("9.0" on H100 and H200): modelopt compiles its CUDA
    extensions for every architecture the variable names, and NGC images name them all (minutes per arch, in
    every fresh container). None where no GPU was seen: the image's own list stays."""
    return ";".join(sorted(set(capabilities))) or None


def threads_per_rank(world_size: int) -> int:
    return max(1, THREADS_PER_WORLD // world_size)


def thread_pins(world_size: int) -> tuple[Pin, ...]:
    threads = str(threads_per_rank(world_size))
    why = f"{THREADS_PER_WORLD} threads per world of ranks, independent of the host's core count"
    return Pin("OMP_NUM_THREADS", threads, why), Pin("MKL_NUM_THREADS", threads, why)


def cpu_flags() -> set[str]:
    """The host CPU's feature flags (Linux /proc/cpuinfo); empty where it cannot be read."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    found = re.search(r"^(?:flags|Features)\s*:\s*(.*)$", text, re.MULTILINE)
    return set(found.group(1).split()) if found else set()


def cpu_model() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or "unknown"
    found = re.search(r"^(?:model name|Model|cpu model)\s*:\s*(.*)$", text, re.MULTILINE)
    return found.group(1).strip() if found else platform.processor() or "unknown"


def can_pin(flags: set[str] | None = None) -> bool:
    """Whether this host runs the pinned x86 path (AVX2 with FMA)."""
    return platform.machine() in ("x86_64", "AMD64") and {"avx2", "fma"} <= (cpu_flags() if flags is None else flags)


def cpu_pins(world_size: int) -> tuple[Pin, ...]:
    """Every variable a CPU rank runs under. Off the pinned path only the threads are pinned."""
    return (X86_PINS if can_pin() else ()) + thread_pins(world_size)


def cpu_environment() -> str:
    """``cpu-x86_64-avx2`` on every pinned host; elsewhere the architecture and its native ISA."""
    if can_pin():
        return f"cpu-x86_64-{PINNED_ISA}"
    return f"cpu-{platform.machine().lower()}-native"


def gpu_environment(gpu_name: str) -> str:
    """``gpu-nvidia-h100-80gb-hbm3`` from the device name: each GPU model computes its own low bits."""
    return "gpu-" + re.sub(r"[^a-z0-9]+", "-", gpu_name.lower()).strip("-")


def environment(platform_name: str, gpu_name: str | None) -> str:
    """The baseline set for cases of ``platform_name`` run on this machine."""
    if platform_name == "cpu":
        return cpu_environment()
    return gpu_environment(gpu_name) if gpu_name else "gpu-none"


# x86 features that decide which kernels an unpinned torch would pick (recorded, so a baseline says
# what it was recorded on even where the pins make them irrelevant).
ISA_FLAGS = (
    "sse4_2",
    "avx",
    "avx2",
    "fma",
    "f16c",
    "avx512f",
    "avx512bw",
    "avx512_vnni",
    "avx512_bf16",
    "avx512_fp16",
    "amx_tile",
    "amx_bf16",
    "amx_int8",
    "asimd",
    "sve",
    "sve2",
)


def numerics_provenance(gpu_name: str | None) -> dict[str, object]:
    """What a result was computed on: environments, CPU model and ISA flags, and the pins."""
    flags = cpu_flags()
    return {
        "environments": {"cpu": cpu_environment(), **({"gpu": gpu_environment(gpu_name)} if gpu_name else {})},
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpu_isa_flags": [f for f in ISA_FLAGS if f in flags],
        "cpu_pins": {pin.variable: pin.value for pin in X86_PINS if can_pin(flags)},
        "cpu_threads_per_rank": {str(world): threads_per_rank(world) for world in (1, 2, 4, 8)},
        **({"gpu_pins": {pin.variable: pin.value for pin in GPU_PINS}, "gpu_tf32": TF32_POLICY} if gpu_name else {}),
    }


# What decides the exact arithmetic of a result, beyond its environment: the processor and its
# instruction set, the pins and thread counts, and torch (whose kernels do the work). Two results of
# one fingerprint repeat bit for bit on CPUs; the libraries on top (megatron-core, modelopt) are left
# out on purpose, because their changes are what the harness is there to catch.
CPU_FINGERPRINT = (
    "cpu_model",
    "cpu_isa_flags",
    "cpu_pins",
    "cpu_threads_per_rank",
    "variation",
)  # variation: harness.noise
GPU_FINGERPRINT = ("gpus", "driver", "gpu_pins", "gpu_tf32", "container")


def fingerprint(provenance: Mapping[str, Any], platform_name: str) -> str:
    """A short digest of what decided a result's low bits (a baseline's provenance, or this run's)."""
    keys = CPU_FINGERPRINT if platform_name == "cpu" else GPU_FINGERPRINT
    parts = {key: provenance.get(key) for key in keys} | {"torch": provenance.get("versions", {}).get("torch")}
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:12]
