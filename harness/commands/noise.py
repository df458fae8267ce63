"""``harness noise``: rerun cases under legitimate variations and record how much each metric moves by
itself, beside its baseline (harness.noise). The comparison step derives every tolerance from it."""

from __future__ import annotations

import argparse
import itertools
import json
import math
import sys
from pathlib import Path

from harness.baselines import BaselineStore
from harness.environment import fingerprint
from harness.exit_codes import EXIT_USAGE
from harness.launchers.local import LocalLauncher, raised
from harness.noise import (
    DEFAULT_VARIATIONS,
    REFERENCE,
    REPEAT,
    VARIATIONS,
    CaseNoise,
    Variation,
    noise_path,
    read_noise_file,
    write_case_noise,
)
from harness.pipeline import launch, with_reference
from harness.provenance import provenance
from harness.schedule import Scheduled
from harness.selection import ExpressionError
from harness.suites.yaml_lines import SuiteError

SHOWN = 5  # metrics printed per case, the most moved first


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "noise", help="rerun cases under legitimate variations; record each metric's spread beside its baseline"
    )
    parser.add_argument("suites", nargs="*", help="suite files (default: suites/*.yaml)")
    parser.add_argument("-k", dest="keyword", help="select by case id")
    parser.add_argument("-m", dest="markexpr", help="select by marker")
    parser.add_argument(
        "--variations",
        default=",".join(DEFAULT_VARIATIONS),
        help=f"comma-separated, of: {', '.join(VARIATIONS)} (default: {','.join(DEFAULT_VARIATIONS)})",
    )
    parser.add_argument(
        "--reference",
        choices=("run", "baseline"),
        default="run",
        help="the pinned sample the others are measured against: a fresh run (default), or the recorded baseline "
        "where it has this machine's fingerprint (a run where it has not)",
    )
    parser.add_argument(
        "--repeats", type=int, default=1, help="runs of the pinned environment besides the reference (default: 1)"
    )
    parser.add_argument(
        "--baselines",
        type=Path,
        default=Path("baselines"),
        help="baseline folder the records go to (default: baselines)",
    )
    parser.add_argument(
        "--artifacts", type=Path, default=Path("artifacts") / "noise", help="worker logs and case files"
    )
    parser.add_argument(
        "--add",
        action="store_true",
        help="add these variations' samples to the cases' existing records (needs --reference baseline: the same "
        "reference) instead of replacing them",
    )
    parser.add_argument(
        "--from-run",
        type=Path,
        metavar="RESULTS",
        help="take one variation's samples from a finished `harness run --variation NAME` (its results.json, run on "
        "this fingerprint) instead of running it again",
    )


def _runs(variations: list[Variation], repeats: int) -> dict[str, Variation | None]:
    """Label -> variation of every run of a case: the reference, the pinned repeats, the others."""
    runs: dict[str, Variation | None] = {REFERENCE: None}
    runs |= {REPEAT if i == 0 else f"{REPEAT}-{i + 1}": VARIATIONS[REPEAT] for i in range(repeats)}
    return runs | {v.name: v for v in variations if v.name != REPEAT}


def _moved(record: CaseNoise, baseline: dict[str, float]) -> list[str]:
    """The metrics that moved under some variation, most (relatively) first."""
    lines = []
    for name, metric in record.metrics.items():
        deviation = metric.deviation(across_machines=True)
        if deviation == 0:
            continue
        reference = metric.samples.get(REFERENCE, math.nan)
        scale = abs(reference) if reference else 1.0
        lines.append(
            (
                deviation / scale,
                f"{name}: reference {reference:.6g}, baseline {baseline.get(name, math.nan):.6g}, "
                f"max deviation {deviation:.3g} (repeats {metric.deviation(False):.3g})",
            )
        )
    return [text for _, text in sorted(lines, reverse=True)]


def _study(
    item: Scheduled,
    launchers: dict[str, LocalLauncher],
    store: BaselineStore,
    info: dict[str, object],
    artifacts: Path,
    reuse_baseline: bool,
    imported: dict[str, dict[str, dict[str, float]]],
    add: bool,
) -> str:
    case = item.case
    entry = store.entry(case.platform, case.suite, case.id) or {}
    runs, errors, seconds = {}, {}, {}
    if reuse_baseline and entry and fingerprint(entry["provenance"], case.platform) == fingerprint(info, case.platform):
        runs[REFERENCE] = entry["metrics"]
    for label, launcher in launchers.items():
        if label in runs or (
            label in VARIATIONS and label != REPEAT and not VARIATIONS[label].environment(case.world_size)
        ):
            continue  # the reused reference, or a variation that changes nothing for this world size
        if label in imported:
            if case.id in imported[label]:
                runs[label] = imported[label][case.id]
            continue
        outcome = launch(with_reference(item, store, update=False), launcher, artifacts)
        seconds[label] = outcome.duration_s
        if outcome.error is not None:
            errors[label] = raised(outcome.error)
        else:
            runs[label] = outcome.metrics
    if REFERENCE not in runs:
        return f"{case.key}: no record, the reference run failed: {errors.get(REFERENCE)}"
    reference = "a fresh run" if REFERENCE in seconds else "the recorded baseline"
    record = CaseNoise.from_samples(runs, errors, info | {"reference": reference})
    if add and REFERENCE in seconds:
        return f"{case.key}: not added: its baseline was recorded on another fingerprint (the record's reference)"
    earlier = read_noise_file(noise_path(store.path(case.platform, case.suite))).get(case.id) if add else None
    record = earlier.extended(record) if earlier is not None else record
    write_case_noise(
        noise_path(store.path(case.platform, case.suite)), case.suite, store.environment(case.platform), case.id, record
    )
    baseline = entry.get("metrics", {})
    lines = [
        f"{case.key}: {len(record.metrics)} metrics over {', '.join(runs)} (reference: {reference}); runs took "
        + ", ".join(f"{label} {took:.1f} s" for label, took in seconds.items())
    ]
    if errors:
        lines += [f"  ERROR under {label}: {why}" for label, why in errors.items()]
    if entry and fingerprint(entry["provenance"], case.platform) == fingerprint(info, case.platform):
        stale = [
            n
            for n, m in record.metrics.items()
            if n in baseline and m.samples[REFERENCE] != baseline[n] and m.deviation(False) == 0
        ]
        if stale:
            lines.append(
                f"  NOTE: {len(stale)} deterministic metric(s) differ from the baseline recorded on this fingerprint "
                f"(e.g. {stale[0]}): the baseline is stale; re-record it in a commit that says why"
            )
    moved = _moved(record, baseline)
    lines.append(
        f"  {len(record.metrics) - len(moved)} bit-identical under every run; {len(moved)} moved"
        + (":" if moved else "")
    )
    lines += [f"    {text}" for text in moved[:SHOWN]]
    return "\n".join(lines)


def _finished_run(path: Path) -> dict[str, dict[str, dict[str, float]]]:
    """A `harness run --variation NAME` results file as {NAME: {case id: metrics}}: its finished CPU cases'
    metrics are that variation's samples, measured on this fingerprint (checked) like a study's own run."""
    data = json.loads(path.read_text(encoding="utf-8"))
    recorded = data["provenance"]
    name = recorded.get("variation")
    if name not in VARIATIONS:
        raise ValueError(f"not a run under a noise variation (provenance variation: {name!r})")
    here = provenance(Path.cwd())
    if fingerprint(recorded | {"variation": None}, "cpu") != fingerprint(here | {"variation": None}, "cpu"):
        raise ValueError("measured on another fingerprint (processor, pins, threads or torch) than this machine's")
    cases = {
        c["id"]: {m["name"]: m["measured"] for m in c["metrics"] if m["measured"] is not None}
        for c in data["cases"]
        if c["platform"] == "cpu" and c["metrics"] and not c["error"]
    }
    return {name: cases}


def main(args: argparse.Namespace) -> int:
    from harness.pipeline import collect
    from harness.schedule import schedule
    from harness.suites.expand import Resources

    names = [n.strip() for n in args.variations.split(",") if n.strip()]
    unknown = [n for n in names if n not in VARIATIONS]
    if unknown or args.repeats < 0:
        print(
            f"harness: unknown variation(s) {', '.join(unknown)}; known: {', '.join(VARIATIONS)}"
            if unknown
            else "harness: --repeats must be >= 0",
            file=sys.stderr,
        )
        return EXIT_USAGE
    if args.add and args.reference != "baseline":
        print(
            "harness: --add extends records measured against the baseline: give --reference baseline", file=sys.stderr
        )
        return EXIT_USAGE
    imported = {}
    if args.from_run is not None:
        try:
            imported = _finished_run(args.from_run)
        except (OSError, ValueError, KeyError) as err:
            print(f"harness: --from-run {args.from_run}: {err}", file=sys.stderr)
            return EXIT_USAGE
        names += [name for name in imported if name not in names]
    variations = []
    for name in names:
        why = VARIATIONS[name].unavailable()
        if why is not None:
            print(f"harness: variation {name} skipped: {why}", file=sys.stderr)
        else:
            variations.append(VARIATIONS[name])
    resources = Resources.detect()
    markexpr = " and ".join(f"({e})" for e in (args.markexpr, "cpu") if e)
    try:
        cases = collect(args.suites or sorted(Path("suites").glob("*.yaml")), resources, args.keyword, markexpr)
    except (SuiteError, ExpressionError) as err:
        print(f"harness: {err}", file=sys.stderr)
        return EXIT_USAGE
    plan = [item for item in schedule(cases, resources) if item.skip is None]
    if not plan:
        print("harness: no runnable CPU case selected (noise studies run CPU cases here)", file=sys.stderr)
        return EXIT_USAGE
    info = provenance(Path.cwd(), resources.gpu_name)
    store = BaselineStore(args.baselines, resources.environments)
    labels = _runs(variations, args.repeats)
    print(
        f"noise study: {len(plan)} case(s) x {len(labels)} runs ({', '.join(labels)}); records under {args.baselines}/"
    )
    try:
        # One world size at a time: each run label keeps a warm pool, and only one size's pools live at once.
        for _, group in itertools.groupby(plan, key=lambda item: item.case.world_size):
            launchers = {
                label: LocalLauncher(args.artifacts / label, None if v is None else v.environment)
                for label, v in labels.items()
            }
            try:
                for item in group:
                    reuse = args.reference == "baseline"
                    print(_study(item, launchers, store, info, args.artifacts, reuse, imported, args.add), flush=True)
            finally:
                for launcher in launchers.values():
                    launcher.close()
    except KeyboardInterrupt:
        print("harness: interrupted; the records of the finished cases are written", file=sys.stderr)
        return 1
    return 0
