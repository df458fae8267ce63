"""What the last N runs say, beyond tonight's pass/fail: which cases newly fail, are fixed, keep
failing (since which run), flip back and forth (flaky); which metrics moved furthest from their
baselines; and which drifted, i.e. moved by more than their tolerance against the runs before them
while still inside the baseline band, naming the run where the move began and what changed in it.

Pure functions of a ``Window`` read from the history; rendering is ``harness.reports.render``'s job.
"""

from __future__ import annotations

import itertools
import math
import statistics
from collections import Counter
from dataclasses import dataclass

from harness.records import OK_VERDICTS, Direction, Tolerance, Verdict, per_step
from harness.reports.history import CaseRow, MetricRow, RunRow, Window

TRACKED = ("megatron-core", "nvidia-modelopt", "torch", "transformer-engine")


@dataclass(frozen=True)
class Settings:
    runs: int = 20  # the window: how many past runs the report looks at
    drift_runs: int = 2  # K: a drift is the last K runs all beyond tolerance of the runs before them
    drift_window: int = 5  # how many runs before those K make the reference


@dataclass(frozen=True)
class CaseStatus:
    key: str
    status: str  # new failure | still failing | fixed | flaky | fixed? | known defect | no baseline | passing | skipped
    verdict: str
    since: RunRow | None  # the first run of the current failing streak, or of the change
    flips: int  # ok <-> failing changes inside the window
    detail: str  # the error, the failing metrics or the known defect


@dataclass(frozen=True)
class Regression:
    key: str
    metric: str
    baseline: float
    measured: float
    relative: float  # signed change against the baseline, in the metric's bad direction when it has one
    tolerance: Tolerance
    verdict: str


@dataclass(frozen=True)
class Drift:
    key: str
    metric: str
    before: float  # median of the reference runs
    after: float  # median of the runs since the move
    allowed: float
    baseline: float | None
    first: RunRow  # the run where the metric moved
    changes: str  # what differs between that run and the one before it


@dataclass(frozen=True)
class Series:
    """One (case, metric) over the window, for a trend plot."""

    key: str
    metric: str
    points: list[tuple[RunRow, MetricRow]]
    environment: str = "-"  # one series per baseline environment: a new GPU model or CPU starts a new line


@dataclass(frozen=True)
class VersionTable:
    pairs: list[str]
    rows: list[tuple[str, str, list[str]]]  # (case, metric, latest value under each pair)
    # suite -> one cell per pair: the verdict counts of that pair's latest run of the suite
    compatibility: dict[str, list[str]]


@dataclass(frozen=True)
class Analysis:
    settings: Settings
    runs: list[RunRow]
    latest: RunRow
    counts: dict[str, int]
    cases: list[CaseStatus]
    regressions: list[Regression]
    drifts: list[Drift]
    series: list[Series]
    versions: VersionTable | None  # only when the window holds more than one version pair


def version_pair(run: RunRow) -> str:
    versions = run.provenance.get("versions", {})
    return f"megatron-core {versions.get('megatron-core', '?')} / modelopt {versions.get('nvidia-modelopt', '?')}"


def run_label(run: RunRow) -> str:
    commit = (run.provenance.get("commit") or "-")[:8]
    return f"#{run.id} {run.started[:16].replace('T', ' ')} {commit}" + ("" if run.ended else " (interrupted)")


# What else can move a metric, in the order a reader should look: where the numbers are judged (the baseline
# environments, named from the CPU model and ISA or the GPU model), the machine, then the build.
_FACTS = ("environments", "cpu_model", "gpus", "cpu_pins", "container", "driver", "cuda_driver", "host", "variation")


def _shown(value: object) -> str:
    if value is None or value == "" or value == {} or value == []:
        return "-"
    if isinstance(value, dict):
        return ", ".join(f"{k}={v}" for k, v in sorted(value.items()))
    if isinstance(value, list):
        return ", ".join(map(str, value))
    return str(value)


def changes_between(before: RunRow | None, after: RunRow) -> str:
    """The provenance differences a reader should look at first: versions, commit, the baseline environment,
    the processor or GPU, pins, container (in full: two NGC tags differ at the end), driver."""
    if before is None:
        return "first run in the window"
    old, new = before.provenance, after.provenance
    diffs = [
        f"{name} {old.get('versions', {}).get(name, '-')} -> {new.get('versions', {}).get(name, '-')}"
        for name in TRACKED
        if old.get("versions", {}).get(name) != new.get("versions", {}).get(name)
    ]
    if old.get("commit") != new.get("commit"):
        diffs.append(f"commit {str(old.get('commit') or '-')[:12]} -> {str(new.get('commit') or '-')[:12]}")
    diffs += [
        f"{name} {_shown(old.get(name))} -> {_shown(new.get(name))}"
        for name in _FACTS
        if old.get(name) != new.get(name)
    ]
    return "; ".join(diffs) or "nothing recorded changed"


def environment_of(run: RunRow, key: str) -> str:
    """The baseline environment a case's values were judged in (its platform's, from the run's provenance)."""
    platform = key.rpartition("[")[2].rstrip("]")
    return str(run.provenance.get("environments", {}).get(platform, "-"))


# Neither passed nor failed: a skip, and a case with nothing recorded to compare with (the first night of a new
# GPU model or container has only these; they are not failures, new or old).
UNJUDGED = frozenset({Verdict.SKIPPED.value, Verdict.NO_BASELINE.value})


def _flips(verdicts: list[str]) -> int:
    # Verdict is a StrEnum: the history's verdict strings test against OK_VERDICTS directly
    states = [v in OK_VERDICTS for v in verdicts if v not in UNJUDGED]
    return sum(a != b for a, b in itertools.pairwise(states))


def case_status(key: str, history: list[tuple[RunRow, CaseRow]], metrics: list[MetricRow]) -> CaseStatus:
    """``history`` is the case's rows in the window, oldest first; ``metrics`` its latest run's."""
    latest_run, latest = history[-1]
    verdicts = [row.verdict for _, row in history]
    flips = _flips(verdicts)
    failing = [
        f"{m.name} {m.measured:.6g} vs {m.baseline if m.baseline is None else f'{m.baseline:.6g}'}"
        for m in metrics
        if m.verdict == Verdict.FAIL.value and m.measured is not None
    ]
    detail = latest.error.splitlines()[0] if latest.error else "; ".join(failing)
    previous = [v for v in verdicts[:-1] if v not in UNJUDGED]
    if latest.verdict == Verdict.XPASS.value:
        return CaseStatus(key, "fixed?", latest.verdict, latest_run, flips, latest.known_defect or "")
    if latest.verdict == Verdict.XFAIL.value:
        return CaseStatus(key, "known defect", latest.verdict, None, flips, latest.known_defect or "")
    if latest.verdict == Verdict.SKIPPED.value:
        return CaseStatus(key, "skipped", latest.verdict, None, flips, latest.error or "")
    if latest.verdict == Verdict.NO_BASELINE.value:
        return CaseStatus(key, "no baseline", latest.verdict, None, flips, "no recorded value to compare with")
    if flips >= 2:
        return CaseStatus(key, "flaky", latest.verdict, None, flips, detail)
    if latest.verdict in OK_VERDICTS:
        fixed = bool(previous) and previous[-1] not in OK_VERDICTS
        return CaseStatus(
            key, "fixed" if fixed else "passing", latest.verdict, latest_run if fixed else None, flips, ""
        )
    streak = len(history)
    while streak > 1 and history[streak - 2][1].verdict not in OK_VERDICTS | UNJUDGED:
        streak -= 1
    status = (
        "new failure" if streak == len(history) and (not previous or previous[-1] in OK_VERDICTS) else "still failing"
    )
    return CaseStatus(key, status, latest.verdict, history[streak - 1][0], flips, detail)


def _bad_change(measured: float, baseline: float, direction: Direction) -> float:
    """The change against the baseline, relative where the baseline allows; positive means worse."""
    change = (measured - baseline) / abs(baseline) if baseline else measured - baseline
    if direction is Direction.HIGHER_IS_BETTER:
        return -change
    if direction is Direction.LOWER_IS_BETTER:
        return change
    return abs(change)


def regressions(metrics: list[MetricRow], top: int = 10) -> list[Regression]:
    found = [
        Regression(
            m.key,
            m.name,
            m.baseline,
            m.measured,
            _bad_change(m.measured, m.baseline, m.tolerance.direction),
            m.tolerance,
            m.verdict,
        )
        for m in metrics
        if m.measured is not None and m.baseline is not None and not math.isinf(m.tolerance.abs)
    ]
    found = [r for r in found if r.relative > 0]
    return sorted(found, key=lambda r: (r.verdict != Verdict.FAIL.value, -r.relative))[:top]


def _beyond(value: float, reference: float, tolerance: Tolerance) -> int:
    """+1 / -1 when ``value`` left ``reference`` by more than the tolerance in a direction that matters."""
    if tolerance.allows(value, reference):
        return 0
    return 1 if value > reference else -1


def drift(series: Series, settings: Settings) -> Drift | None:
    """The last ``drift_runs`` values all beyond tolerance (same side) of the median of the
    ``drift_window`` values before the move; the move starts as early as that still holds."""
    points = [(run, m) for run, m in series.points if m.measured is not None]
    values = [m.measured for _, m in points]
    tolerance = points[-1][1].tolerance if points else Tolerance(abs=math.inf)
    if len(values) <= settings.drift_runs or math.isinf(tolerance.abs):
        return None
    found = None
    for split in range(len(values) - settings.drift_runs, 0, -1):
        reference = statistics.median(values[max(0, split - settings.drift_window) : split])
        sides = {_beyond(v, reference, tolerance) for v in values[split:]}
        if len(sides) != 1 or 0 in sides:
            break
        found = (split, reference)
    if found is None:
        return None
    split, reference = found
    first, previous = points[split][0], points[split - 1][0]
    return Drift(
        series.key,
        series.metric,
        reference,
        statistics.median(values[split:]),
        tolerance.allowed(reference),
        points[-1][1].baseline,
        first,
        changes_between(previous, first),
    )


def _verdict_counts(rows: list[CaseRow]) -> str:
    return ", ".join(f"{n} {verdict}" for verdict, n in sorted(Counter(row.verdict for row in rows).items())) or "-"


def _versions_side_by_side(window: Window) -> VersionTable | None:
    """The latest value of every metric, and the verdicts of every suite, under each
    (megatron-core, modelopt) pair in the window."""
    pair_of = {run.id: version_pair(run) for run in window.runs}
    pairs = list(dict.fromkeys(pair_of.values()))
    if len(pairs) < 2:
        return None
    latest: dict[tuple[str, str], dict[str, str]] = {}
    for m in window.metrics:
        if m.measured is not None and not per_step(m.name):
            latest.setdefault((m.key, m.name), {})[pair_of[m.run_id]] = f"{m.measured:.6g}"
    last_run: dict[tuple[str, str], int] = {}  # (suite, pair) -> the latest run that ran the suite
    for row in window.cases:
        last_run[(row.suite, pair_of[row.run_id])] = max(row.run_id, last_run.get((row.suite, pair_of[row.run_id]), 0))
    suites = sorted({suite for suite, _ in last_run})
    compatibility = {
        suite: [
            _verdict_counts([r for r in window.cases if r.suite == suite and r.run_id == last_run.get((suite, pair))])
            for pair in pairs
        ]
        for suite in suites
    }
    return VersionTable(
        pairs,
        [(key, name, [values.get(p, "-") for p in pairs]) for (key, name), values in sorted(latest.items())],
        compatibility,
    )


def analyse(window: Window, settings: Settings) -> Analysis:
    if not window.runs:
        raise ValueError("the history holds no runs")
    run_by_id = {run.id: run for run in window.runs}
    latest = window.runs[-1]
    by_case: dict[str, list[tuple[RunRow, CaseRow]]] = {}
    for row in window.cases:
        by_case.setdefault(row.key, []).append((run_by_id[row.run_id], row))
    latest_metrics = [m for m in window.metrics if m.run_id == latest.id]
    statuses = [
        case_status(key, rows, [m for m in latest_metrics if m.key == key])
        for key, rows in sorted(by_case.items())
        if rows[-1][0].id == latest.id
    ]
    counts = dict(Counter(row.verdict for row in window.cases if row.run_id == latest.id))
    grouped: dict[tuple[str, str, str], list[tuple[RunRow, MetricRow]]] = {}
    for m in window.metrics:
        if not per_step(m.name):  # per-step values are a trajectory inside one run, not a trend
            run = run_by_id[m.run_id]
            grouped.setdefault((m.key, m.name, environment_of(run, m.key)), []).append((run, m))
    series = [
        Series(key, name, points, environment)
        for (key, name, environment), points in sorted(grouped.items())
        if points[-1][0].id == latest.id
    ]
    drifts = [d for d in (drift(s, settings) for s in series) if d is not None]
    return Analysis(
        settings,
        window.runs,
        latest,
        counts,
        statuses,
        regressions(latest_metrics),
        drifts,
        series,
        _versions_side_by_side(window),
    )
