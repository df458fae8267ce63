"""What every launcher shares: artifact folder names, log tails, and the environment of a rank."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

from harness.records import Case

LOG_TAIL_LINES = 25


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


def threads_per_rank(world_size: int) -> int:
    """The CPU threads each rank gets: the same under every launcher, so CPU metrics match."""
    return int(os.environ.get("OMP_NUM_THREADS", max(1, (os.cpu_count() or 1) // world_size)))


def rank_environment(platform: str, world_size: int) -> dict[str, str]:
    """Variables every rank needs beyond its coordinates, whichever launcher starts it."""
    return {
        "HARNESS_PLATFORM": platform,
        "OMP_NUM_THREADS": str(threads_per_rank(world_size)),
        "PYTHONUNBUFFERED": "1",
        # A CPU case on a GPU machine must not see the GPUs (the CPU adaptations refuse CUDA).
        **({"CUDA_VISIBLE_DEVICES": ""} if platform == "cpu" else {}),
    }


def checkout_pythonpath() -> str:
    """This checkout first on the path: its harness (and test checks) win over an installed copy."""
    return os.pathsep.join(p for p in (os.getcwd(), os.environ.get("PYTHONPATH", "")) if p)
