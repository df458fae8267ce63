"""Recorded baselines and the comparison step.

One JSON file per (platform, suite) under version control: ``baselines/<platform>/<suite>.json``,
each case holding its metrics and the provenance of the run that recorded them. Comparing is a
step of its own, separate from measuring; ``update`` rewrites a case's entry atomically and says
what changed.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.atomic import write_json_atomic
from harness.records import CaseOutcome, CaseResult, Direction, MetricResult, Tolerance, Verdict, metric_family

FORMAT = 1


def within(measured: float, baseline: float, tolerance: Tolerance) -> bool:
    if math.isnan(measured):
        return False
    diff, allowed = measured - baseline, tolerance.allowed(baseline)
    if tolerance.direction is Direction.HIGHER_IS_BETTER:
        return diff >= -allowed
    if tolerance.direction is Direction.LOWER_IS_BETTER:
        return diff <= allowed
    return abs(diff) <= allowed


@dataclass(frozen=True)
class BaselineStore:
    root: Path

    def path(self, platform: str, suite: str) -> Path:
        return self.root / platform / f"{suite}.json"

    def _read(self, path: Path) -> dict[str, Any]:
        if not path.exists():
            return {"format": FORMAT, "cases": {}}
        data = json.loads(path.read_text())
        if data.get("format") != FORMAT:
            raise ValueError(f"{path}: baseline format {data.get('format')!r}, this harness reads {FORMAT}")
        return data

    def lookup(self, platform: str, suite: str, case_id: str) -> dict[str, float] | None:
        entry = self._read(self.path(platform, suite))["cases"].get(case_id)
        return None if entry is None else entry["metrics"]

    def record(self, outcome: CaseOutcome, provenance: dict[str, Any]) -> None:
        case = outcome.case
        path = self.path(case.platform, case.suite)
        data = self._read(path)
        data.update({"suite": case.suite, "platform": case.platform})
        data["cases"][case.id] = {"metrics": outcome.metrics, "provenance": {**provenance, "platform": case.platform}}
        write_json_atomic(path, data)


def compare(outcome: CaseOutcome, store: BaselineStore, update: bool, provenance: dict[str, Any]) -> CaseResult:
    """Judge each measured metric against the recorded value (or record it, with ``update``)."""
    if outcome.error is not None or outcome.skipped is not None:
        return CaseResult(outcome)
    case = outcome.case
    recorded = store.lookup(case.platform, case.suite, case.id) or {}
    results = []
    for name in sorted(set(outcome.metrics) | set(recorded)):
        tolerance = case.tolerances.get(name, case.tolerances.get(metric_family(name), Tolerance()))
        measured = outcome.metrics.get(name, math.nan)
        baseline = recorded.get(name)
        budget = case.budgets.get(name, case.budgets.get(metric_family(name)))
        if budget is not None and not budget.allows(measured):
            verdict = Verdict.FAIL  # no baseline update can make a budget breach acceptable
        elif update:
            verdict = Verdict.PASS if baseline == measured else Verdict.UPDATED
        elif baseline is None:
            verdict = Verdict.NO_BASELINE
        else:
            verdict = Verdict.PASS if within(measured, baseline, tolerance) else Verdict.FAIL
        results.append(MetricResult(name, measured, baseline, tolerance, verdict, budget))
    if update:
        store.record(outcome, provenance)
    return CaseResult(outcome, tuple(results))
