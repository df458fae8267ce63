"""What every launcher shares: artifact folder names, log tails, and the environment of a rank."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

from harness.environment import GPU_PINS, cpu_pins, cuda_arch_list
from harness.provenance import gpu_facts
from harness.records import Case

LOG_TAIL_LINES = 25
# A defect to inject into the libraries in every rank (harness.mutations): set by a sensitivity run only,
# never inherited from the caller's environment.
MUTATION_VARIABLE = "HARNESS_MUTATION"


def artifact_dir_name(case: Case) -> str:
    return re.sub(r"[^A-Za-z0-9._=-]+", "_", case.key).strip("_")


def fresh_artifacts(root: Path, case: Case) -> Path:
    """The case's artifact folder under ``root``, emptied: nothing of an earlier run is mistaken for this one's."""
    folder = root / artifact_dir_name(case)
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    return folder


def tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def startup_timeout_s(platform: str) -> float:
    """How long ranks may take to be ready for their first case: imports and rendezvous; on GPUs also
    compiling modelopt's CUDA extensions the first time in a container (harness.runtime.cuda_extensions)."""
    return 1800.0 if platform == "gpu" else 600.0


def rank_environment(platform: str, world_size: int) -> dict[str, str]:
    """Variables every rank needs beyond its coordinates, whichever launcher starts it. CPU ranks run
    under the pinned numerics (harness.environment); they win over the caller's own variables."""
    if platform == "cpu":
        # A CPU case on a GPU machine must not see the GPUs (the CPU adaptations refuse CUDA).
        numerics = {pin.variable: pin.value for pin in cpu_pins(world_size)} | {"CUDA_VISIBLE_DEVICES": ""}
    else:
        arch = cuda_arch_list(gpu_facts().get("gpu_capabilities", []))
        # modelopt's compiled extensions kept beside the checkout, which outlives a fresh container
        extensions = os.environ.get("TORCH_EXTENSIONS_DIR") or str(Path.cwd() / ".cache" / "torch_extensions")
        numerics = (
            {"OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // world_size))}
            | {pin.variable: pin.value for pin in GPU_PINS}
            | ({"TORCH_CUDA_ARCH_LIST": arch} if arch else {})
            | {"TORCH_EXTENSIONS_DIR": extensions}
        )
    return {"HARNESS_PLATFORM": platform, "PYTHONUNBUFFERED": "1", **numerics}


def checkout_pythonpath() -> str:
    """This checkout first on the path: its harness (and test checks) win over an installed copy."""
    return os.pathsep.join(p for p in (os.getcwd(), os.environ.get("PYTHONPATH", "")) if p)
