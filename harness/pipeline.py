"""The run, as a list of named steps, each a plain function handed the previous one's result:

    load_suites -> expand -> select -> schedule -> launch -> compare -> report

The CLI and the pytest plugin both drive these same steps.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from harness.baselines import BaselineStore, compare
from harness.records import Case, CaseOutcome, CaseResult
from harness.schedule import Scheduled
from harness.selection import select
from harness.suites.expand import Resources, expand
from harness.suites.load import load_suites


class Launcher(Protocol):
    def launch(self, case: Case) -> CaseOutcome: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class RunOptions:
    baselines: Path
    artifacts: Path
    update_baselines: bool = False


def collect(paths: list[str | Path], resources: Resources, keyword: str | None = None, markexpr: str | None = None) -> list[Case]:
    return select(expand(load_suites(paths), resources), keyword, markexpr)


def launch(item: Scheduled, launcher: Launcher) -> CaseOutcome:
    if item.skip is not None:
        return CaseOutcome(item.case, {}, None, 0.0, "", skipped=item.skip)
    return launcher.launch(item.case)


def run_case(item: Scheduled, launcher: Launcher, options: RunOptions, provenance: dict[str, Any]) -> CaseResult:
    """launch -> compare for one case."""
    return compare(launch(item, launcher), BaselineStore(options.baselines), options.update_baselines, provenance)


def run_plan(plan: list[Scheduled], launcher: Launcher, options: RunOptions, provenance: dict[str, Any]) -> Iterator[CaseResult]:
    for item in plan:
        yield run_case(item, launcher, options, provenance)
