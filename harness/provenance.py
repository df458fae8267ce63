"""Where a number came from: library versions, interpreter, machine, CPU model and ISA flags, the
pinned numerics and baseline environments, GPUs and driver, container, commit and time. Everything
here is optional: a CPU host without NVML or a container simply has fewer keys."""

from __future__ import annotations

import datetime as dt
import importlib.metadata
import os
import platform
import socket
import subprocess
from pathlib import Path
from typing import Any

from harness.environment import numerics_provenance

PACKAGES = ("torch", "megatron-core", "nvidia-modelopt", "transformer-engine")
# What NGC PyTorch images and enroot/pyxis set; the first one present names the container.
CONTAINER_VARIABLES = (
    "HARNESS_CONTAINER_IMAGE",
    "NVIDIA_PYTORCH_VERSION",
    "PYTORCH_BUILD_VERSION",
    "SLURM_CONTAINER_IMAGE",
)


def package_versions() -> dict[str, str]:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions


def git_commit(where: Path) -> str | None:
    try:
        out = subprocess.run(
            ["git", "-C", str(where), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None


def gpu_facts() -> dict[str, Any]:
    """Driver, CUDA driver version and GPU names through NVML, where the NVIDIA driver is present."""
    try:
        import pynvml  # nvidia-ml-py; absent or without a driver on CPU hosts
    except ImportError:
        return {}
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        return {}
    try:
        cuda = pynvml.nvmlSystemGetCudaDriverVersion()
        return {
            "driver": pynvml.nvmlSystemGetDriverVersion(),
            "cuda_driver": f"{cuda // 1000}.{cuda % 1000 // 10}",
            "gpus": [
                pynvml.nvmlDeviceGetName(pynvml.nvmlDeviceGetHandleByIndex(i))
                for i in range(pynvml.nvmlDeviceGetCount())
            ],
            "gpu_capabilities": [
                "{}.{}".format(*pynvml.nvmlDeviceGetCudaComputeCapability(pynvml.nvmlDeviceGetHandleByIndex(i)))
                for i in range(pynvml.nvmlDeviceGetCount())
            ],
        }
    finally:
        pynvml.nvmlShutdown()


def container_image() -> str | None:
    for name in CONTAINER_VARIABLES:
        if os.environ.get(name):
            return f"{name}={os.environ[name]}"
    return None


def provenance(where: Path, gpu_name: str | None = None) -> dict[str, object]:
    """``gpu_name``: the GPU model the run's GPU cases use (it names their baseline environment)."""
    gpus = gpu_facts()
    info: dict[str, object] = {
        "versions": package_versions(),
        "python": platform.python_version(),
        "machine": f"{platform.system()} {platform.machine()}",
        "host": socket.gethostname(),
        "commit": git_commit(where),
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        **gpus,
        **numerics_provenance(gpu_name or next(iter(gpus.get("gpus", [])), None)),
    }
    image = container_image()
    if image is not None:
        info["container"] = image
    return info
