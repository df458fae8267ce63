"""Recorded baselines and the comparison step.

One JSON file per (environment, suite) under version control: ``baselines/<environment>/<suite>.json``
(``cpu-x86_64-avx2``, ``gpu-nvidia-h100-80gb-hbm3``: harness.environment), each case holding its
metrics and the provenance of the run that recorded them, including the sha256 of every shipped
subject it ran on. Comparing is a step of its own, separate from measuring; ``update`` rewrites a
case's entry atomically and says what changed.

Two kinds of metric: invariants carry a budget (an absolute bound: a gap to a reference, TP/PP
parity, losslessness, lost quantizers) and are judged everywhere; every other metric belongs to
its environment and is judged only against that environment's baseline. In an environment with no
baselines at all, invariants are judged and the rest reads ``no-baseline`` without failing the run.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness.atomic import write_json_atomic
from harness.environment import fingerprint
from harness.models.subjects import manifest
from harness.noise import CaseNoise, NoiseError, noise_path, read_noise_file
from harness.records import (
    INFORMATIONAL,
    Case,
    CaseOutcome,
    CaseResult,
    MetricResult,
    Tolerance,
    Verdict,
    metric_family,
)

if TYPE_CHECKING:
    from harness.checks.base import MetricSpec

FORMAT = 1


class BaselineError(ValueError):
    """A baseline file that cannot be read; the message names the file (and, for JSON, the line)."""


def read_baseline_file(path: Path) -> dict[str, Any]:
    """One baseline file (empty when it does not exist); a file that cannot be read is a BaselineError."""
    if not path.exists():
        return {"format": FORMAT, "cases": {}}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise BaselineError(
            f"{path}:{err.lineno}: not valid JSON ({err.msg}, column {err.colno}); "
            "restore it from git (git checkout -- FILE) or re-record it"
        ) from None
    except (OSError, UnicodeDecodeError) as err:
        raise BaselineError(f"{path}:1: cannot read: {getattr(err, 'strerror', None) or err}") from None
    if not isinstance(data, dict) or not isinstance(data.get("cases"), dict):
        raise BaselineError(f'{path}:1: not a baseline file (expected an object with "format" and "cases")')
    if data.get("format") != FORMAT:
        raise BaselineError(f"{path}:1: baseline format {data.get('format')!r}, this harness reads {FORMAT}")
    return data


def baseline_files(folder: Path) -> list[Path]:
    """An environment's baseline files (``<suite>.json``), without the noise records beside them."""
    return sorted(f for f in folder.glob("*.json") if not f.name.endswith(".noise.json"))


@dataclass(frozen=True)
class BaselineStore:
    root: Path
    # platform -> the environment whose baselines this run reads and writes (default: the platform's name)
    environments: dict[str, str] = field(default_factory=dict)

    def environment(self, platform: str) -> str:
        return self.environments.get(platform, platform)

    def path(self, platform: str, suite: str) -> Path:
        return self.root / self.environment(platform) / f"{suite}.json"

    def has_environment(self, platform: str) -> bool:
        """Whether any baseline was ever recorded for the environment ``platform`` runs in here."""
        return any((self.root / self.environment(platform)).glob("*.json"))

    def entry(self, platform: str, suite: str, case_id: str) -> dict[str, Any] | None:
        return read_baseline_file(self.path(platform, suite))["cases"].get(case_id)

    def problem(self, platform: str, suite: str) -> str | None:
        """Why the baseline file of (platform, suite) cannot be read (None: it can, or it does not exist)."""
        try:
            read_baseline_file(self.path(platform, suite))
        except BaselineError as err:
            return str(err)
        return None

    def noise(self, platform: str, suite: str, case_id: str) -> CaseNoise | None:
        """The case's noise record (harness.noise), None where none was recorded."""
        return read_noise_file(noise_path(self.path(platform, suite))).get(case_id)

    def reference(self, platform: str, suite: str, case_id: str) -> dict[str, Any]:
        """What the check kept beside the case's baseline (``CaseOutcome.kept``); empty where nothing was."""
        return (self.entry(platform, suite, case_id) or {}).get("reference", {})

    def lookup(self, platform: str, suite: str, case_id: str) -> dict[str, float] | None:
        entry = self.entry(platform, suite, case_id)
        return None if entry is None else entry["metrics"]

    def record(self, outcome: CaseOutcome, provenance: dict[str, Any]) -> None:
        case = outcome.case
        path = self.path(case.platform, case.suite)
        data = read_baseline_file(path)
        data.update({"suite": case.suite, "platform": case.platform, "environment": self.environment(case.platform)})
        # the case's params too: what the numbers were measured with (a draft configuration, prompts, batch sizes)
        data["cases"][case.id] = {
            "metrics": outcome.metrics,
            "provenance": {
                **provenance,
                "platform": case.platform,
                "environment": self.environment(case.platform),
                "subjects": case_subjects(case),
                "params": case.params,
            },
        } | ({"reference": outcome.kept} if outcome.kept else {})
        write_json_atomic(path, data)


def drop_cases(path: Path, case_ids: set[str]) -> None:
    """Remove these cases' entries from a baseline file and from its noise record, each written atomically."""
    for file in (path, noise_path(path)):
        if file.exists():
            data = json.loads(file.read_text(encoding="utf-8"))
            data["cases"] = {case_id: entry for case_id, entry in data["cases"].items() if case_id not in case_ids}
            write_json_atomic(file, data)


def case_subjects(case: Case) -> dict[str, str]:
    """sha256 of every shipped subject ``case`` runs on (its model, a KD teacher, trained draft heads)."""
    from harness.checks import get_check

    names = ([case.model] if case.model_spec.recipe is not None else []) + get_check(case.check).subjects(
        case.params, case.model
    )
    shipped = manifest()
    return {name: shipped.expected_hash(name) for name in names}


def _other_subjects(case: Case, recorded: dict[str, str], path: Path) -> str | None:
    """Why the baseline cannot judge this case: it was measured on other weights than the shipped ones."""
    for name, digest in case_subjects(case).items():
        if recorded.get(name, digest) != digest:
            return (
                f"the baseline in {path} was measured on subject {name} sha256 {recorded[name][:16]}..., the shipped "
                f"{name} is "
                f"{digest[:16]}...: it belongs to other weights. Re-record it (--update-baselines) in a commit that "
                "says why"
            )
    return None


def _interval_band(
    spec: MetricSpec | None, measured: float, baseline: float, outcome: dict[str, float], recorded: dict[str, float]
) -> float:
    """For a metric with an in-run interval: the 95% band of the difference of the measured and the recorded
    estimate (each interval's half-width is ~1.96 sigma of its estimate; the difference's is their hypot)."""
    if spec is None or spec.interval is None:
        return 0.0
    now, then = outcome.get(spec.interval, math.nan), recorded.get(spec.interval, 0.0)
    return math.hypot(now * abs(measured), then * abs(baseline)) if math.isfinite(now) else math.inf


def _judge(
    name: str,
    measured: float,
    baseline: float | None,
    case: Case,
    noise: CaseNoise | None,
    across: bool,
    update: bool,
    outcome: dict[str, float],
    recorded: dict[str, float],
) -> MetricResult:
    """One metric's verdict. Budgets first (invariants, on every machine); then the baseline, within the
    case's tolerance widened to the metric's measured noise (harness.noise) and, for a timed median, to the
    band its own interval and the baseline's give; a step-exact golden only where the run has the baseline's
    fingerprint."""
    from harness.checks import get_check

    spec = get_check(case.check).metrics.get(name, get_check(case.check).metrics.get(metric_family(name)))
    tolerance = case.tolerances.get(name, case.tolerances.get(metric_family(name), Tolerance()))
    budget = case.budgets.get(name, case.budgets.get(metric_family(name)))
    if budget is not None and not budget.allows(measured):
        return MetricResult(name, measured, baseline, tolerance, Verdict.FAIL, budget)  # no baseline can excuse it
    if update:  # re-recorded either way; "updated" only where the old value would not have passed
        kept = baseline is not None and (
            baseline == measured
            or _judge(name, measured, baseline, case, noise, across, False, outcome, recorded).verdict is Verdict.PASS
        )
        return MetricResult(name, measured, baseline, tolerance, Verdict.PASS if kept else Verdict.UPDATED, budget)
    if baseline is None:
        # An invariant is judged by its budget alone; an informational metric (a timing, memory) is
        # never judged against a baseline, so lacking one is no verdict either.
        verdict = Verdict.PASS if budget is not None or tolerance == INFORMATIONAL else Verdict.NO_BASELINE
        return MetricResult(name, measured, baseline, tolerance, verdict, budget)
    if tolerance == INFORMATIONAL:
        return MetricResult(name, measured, baseline, tolerance, Verdict.PASS, budget)
    if across and spec is not None and spec.fingerprint_bound:
        return MetricResult(
            name,
            measured,
            baseline,
            INFORMATIONAL,
            Verdict.PASS,
            budget,
            "step-exact golden, judged only on its recording fingerprint",
        )
    spread = None if noise is None else noise.metrics.get(name)
    if spread is None:
        note = "no noise record: judged as declared"
    else:
        band = spread.band(across)
        tolerance = tolerance.widened(band)
        note = f"noise band {band:.2g}" + (" across machines" if across else " on its fingerprint")
    interval = _interval_band(spec, measured, baseline, outcome, recorded)
    if interval > tolerance.allowed(baseline):
        tolerance = tolerance.widened(interval)
        note += f"; intervals {interval:.2g}"
    if tolerance.stale(measured, baseline):
        note += f"; better than its baseline by over {tolerance.refresh_rel:g}: re-record the baseline"
    verdict = Verdict.PASS if tolerance.allows(measured, baseline) else Verdict.FAIL
    return MetricResult(name, measured, baseline, tolerance, verdict, budget, note)


def compare(
    outcome: CaseOutcome,
    store: BaselineStore,
    update: bool,
    provenance: dict[str, Any],
    across_machines: bool | None = None,
) -> CaseResult:
    """Judge each measured metric against the recorded value (or record it, with ``update``).
    ``across_machines``: judge as on another machine than the baseline's (default: whether this run's
    fingerprint differs from the baseline's)."""
    case = outcome.case
    environment, known = store.environment(case.platform), store.has_environment(case.platform)
    if outcome.error is not None or outcome.skipped is not None:
        return CaseResult(outcome, environment=environment, new_environment=not known)
    try:
        entry = store.entry(case.platform, case.suite, case.id) or {}
        noise = store.noise(case.platform, case.suite, case.id)
    except (BaselineError, NoiseError) as err:
        return CaseResult(replace(outcome, error=f"cannot compare: {err}"), environment=environment)
    stale = (
        None
        if update
        else _other_subjects(
            case, entry.get("provenance", {}).get("subjects", {}), store.path(case.platform, case.suite)
        )
    )
    if stale is not None:
        return CaseResult(replace(outcome, error=stale), environment=environment)
    recorded = entry.get("metrics", {})
    if across_machines is None:
        across_machines = bool(entry) and fingerprint(entry["provenance"], case.platform) != fingerprint(
            provenance, case.platform
        )
    results = [
        _judge(
            name,
            outcome.metrics.get(name, math.nan),
            recorded.get(name),
            case,
            noise,
            across_machines,
            update,
            outcome.metrics,
            recorded,
        )
        for name in sorted(set(outcome.metrics) | set(recorded))
    ]
    if update:
        try:
            store.record(outcome, provenance)
        except OSError as err:  # the folder went away or filled up mid-run: the measurement stays in the results
            where = err.filename or store.path(case.platform, case.suite)
            error = f"measured, but the baseline could not be written to {where}: {err.strerror or err}"
            return CaseResult(replace(outcome, error=error), tuple(results), environment=environment)
    return CaseResult(outcome, tuple(results), environment=environment, new_environment=not known and not update)
