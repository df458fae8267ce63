"""Where a number came from: library versions, interpreter, machine, commit and time."""

from __future__ import annotations

import datetime as dt
import importlib.metadata
import platform
import socket
import subprocess
from pathlib import Path

PACKAGES = ("torch", "megatron-core", "nvidia-modelopt", "transformer-engine")


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
        out = subprocess.run(["git", "-C", str(where), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None


def provenance(where: Path) -> dict[str, object]:
    return {
        "versions": package_versions(),
        "python": platform.python_version(),
        "machine": f"{platform.system()} {platform.machine()}",
        "host": socket.gethostname(),
        "commit": git_commit(where),
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }
