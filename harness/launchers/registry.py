"""Launcher registry: ``--launcher NAME`` picks one; a new launcher is one module and one entry here.

Every launcher takes the run's settings and its runnable cases in order (batch launchers group them
into jobs) and offers ``launch(case) -> CaseOutcome`` and ``close()``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from harness.launchers.batch import Backend, BatchLauncher
from harness.launchers.container import ContainerBackend
from harness.launchers.local import LocalLauncher
from harness.launchers.settings import LaunchSettings
from harness.launchers.slurm import SlurmBackend
from harness.records import Case, CaseOutcome


class Launcher(Protocol):
    def launch(self, case: Case) -> CaseOutcome: ...

    def close(self) -> None: ...


def _local(settings: LaunchSettings, upcoming: list[Case]) -> Launcher:
    return LocalLauncher(settings.artifacts)


def _batch(backend: Callable[[LaunchSettings], Backend]) -> Callable[[LaunchSettings, list[Case]], Launcher]:
    def make(settings: LaunchSettings, upcoming: list[Case]) -> Launcher:
        return BatchLauncher(backend(settings), Path(settings.artifacts), upcoming)

    return make


LAUNCHERS: dict[str, Callable[[LaunchSettings, list[Case]], Launcher]] = {
    "local": _local,
    "container": _batch(ContainerBackend),
    "slurm": _batch(SlurmBackend),
}


def make_launcher(settings: LaunchSettings, upcoming: list[Case]) -> Launcher:
    """The launcher ``settings.launcher`` names; ``LauncherError`` when it cannot work here."""
    return LAUNCHERS[settings.launcher](settings, upcoming)
