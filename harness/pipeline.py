"""The run, as a list of named steps, each a plain function handed the previous one's result:

    load_suites -> expand -> select -> schedule -> launch -> compare -> report

The CLI and the pytest plugin both drive these same steps.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

from harness.atomic import unwritable
from harness.baselines import BaselineError, BaselineStore, case_subjects, compare
from harness.models.subjects import SubjectError, manifest
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
    environments: dict[str, str] = field(default_factory=dict)  # platform -> baseline environment (Resources.environments)


def collect(paths: list[str | Path], resources: Resources, keyword: str | None = None, markexpr: str | None = None) -> list[Case]:
    return select(expand(load_suites(paths), resources), keyword, markexpr)


def launch(item: Scheduled, launcher: Launcher, artifacts: Path) -> CaseOutcome:
    """A case that fails where its files live (a full disk, a read-only folder) is an error that says
    so: its own log may be on that disk, so the tail of the log alone would not."""
    if item.skip is not None:
        return CaseOutcome(item.case, {}, None, 0.0, "", skipped=item.skip)
    try:
        outcome = launcher.launch(item.case)
    except OSError as err:
        outcome = CaseOutcome(item.case, {}, f"the launcher could not write {err.filename or artifacts}: {err.strerror or err}", 0.0, "")
    if outcome.error is not None and (storage := unwritable(artifacts)) is not None:
        outcome = replace(outcome, error=f"artifacts folder unusable: {storage}\n{outcome.error}")
    return outcome


def with_reference(item: Scheduled, store: BaselineStore, update: bool) -> Scheduled:
    """The case with what its check kept beside the baseline (none while re-recording: the run is its own
    reference then). A baseline file that cannot be read is left to the compare step to report."""
    if item.skip is not None or update:
        return item
    try:
        reference = store.reference(item.case.platform, item.case.suite, item.case.id)
    except BaselineError:
        return item
    return replace(item, case=replace(item.case, reference=reference)) if reference else item


def run_case(item: Scheduled, launcher: Launcher, options: RunOptions, provenance: dict[str, Any]) -> CaseResult:
    """reference -> launch -> compare for one case."""
    store = BaselineStore(options.baselines, options.environments)
    outcome = launch(with_reference(item, store, options.update_baselines), launcher, options.artifacts)
    return compare(outcome, store, options.update_baselines, provenance)


def preflight(plan: list[Scheduled], store: BaselineStore, update: bool = False) -> list[str]:
    """Problems to say before any worker starts: shipped subjects the runnable cases need that are
    missing or not the manifest's bytes, baseline files they need that cannot be read, and
    environments with no baselines yet (said once each)."""
    problems, notes = [], []
    for item in plan:
        if item.skip is not None:
            continue
        try:
            for name in case_subjects(item.case):
                manifest().verified_file(name)
        except SubjectError as err:
            problems.append(f"{item.case.id}: {err}")
    files = sorted({(item.case.platform, item.case.suite) for item in plan if item.skip is None})
    problems.extend(problem for platform, suite in files if (problem := store.problem(platform, suite)) is not None)
    for platform in sorted({item.case.platform for item in plan if item.skip is None}):
        if store.has_environment(platform):
            continue
        if update:
            notes.append(f"note: recording the first baselines of environment {store.environment(platform)} under {store.root}/")
        else:
            notes.append(f"note: no baselines for environment {store.environment(platform)} under {store.root}/ yet: budgets "
                         "(invariants) are judged, every other metric reads no-baseline without failing the run; "
                         "--update-baselines records this environment's set")
    return list(dict.fromkeys(problems)) + notes


def run_plan(plan: list[Scheduled], launcher: Launcher, options: RunOptions, provenance: dict[str, Any]) -> Iterator[CaseResult]:
    for item in plan:
        yield run_case(item, launcher, options, provenance)
