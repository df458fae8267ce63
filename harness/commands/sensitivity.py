"""``harness sensitivity``: the mutation self-test. Each known defect (harness.mutations) is injected into
the libraries inside the workers, the cases that must catch it run against the recorded baselines, and the
report says per check how many defects were caught, by which metrics, and whether those metrics catch it
on any machine (judged with the across-machine noise bands) or only bit-exactly on the baseline's own."""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path

from harness.atomic import write_json_atomic, write_text_atomic
from harness.baselines import BaselineStore, compare
from harness.exit_codes import EXIT_FAILED, EXIT_USAGE
from harness.launchers.common import MUTATION_VARIABLE
from harness.launchers.local import LocalLauncher, raised, traceback_lines
from harness.mutations import MUTATIONS
from harness.mutations.base import Mutation
from harness.pipeline import launch, with_reference
from harness.provenance import provenance
from harness.records import Case, CaseResult, MetricResult, Verdict
from harness.schedule import Scheduled, skip_reason

REQUIRED_SCORE = 0.9  # share of the defects a full run must catch with a portable metric
REPORT = "sensitivity.json"


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "sensitivity", help="inject known library defects inside the workers; report which metrics catch them"
    )
    parser.add_argument(
        "mutations", nargs="*", help=f"mutation names (default: all {len(MUTATIONS)}; --list names them)"
    )
    parser.add_argument("--fast", action="store_true", help="only the CI subset")
    parser.add_argument("--list", action="store_true", help="list the mutations and exit")
    parser.add_argument(
        "--baselines", type=Path, default=Path("baselines"), help="baseline folder (default: baselines)"
    )
    parser.add_argument(
        "--artifacts", type=Path, default=Path("artifacts") / "sensitivity", help=f"worker logs, cases and {REPORT}"
    )


@dataclass(frozen=True)
class Catch:
    """What one metric of a mutated case did: its move against the baseline and the band that judges it."""

    metric: str
    baseline: float
    measured: float
    band: float  # the across-machine tolerance: the smallest effect any machine is sure to see
    portable: bool  # caught with that band too, not only bit-exactly on the baseline's fingerprint


@dataclass(frozen=True)
class CaseRun:
    mutation: str
    case: str
    check: str
    error: str | None = None
    skipped: str | None = None
    catches: tuple[Catch, ...] = ()
    broken: bool = False  # the error was raised by the mutation's own code: the self-test is wrong, nothing was caught

    @property
    def caught(self) -> bool:
        return (self.error is not None and not self.broken) or bool(self.catches)

    @property
    def caught_portably(self) -> bool:
        return (self.error is not None and not self.broken) or any(c.portable for c in self.catches)


def _in_mutation(error: str) -> bool:
    frames = [line for line in traceback_lines(error) if line.lstrip().startswith('File "')]
    return bool(frames) and "harness/mutations/" in frames[-1]


@dataclass
class Score:
    defects: int = 0
    caught: int = 0
    portable: int = 0
    missed: list[str] = field(default_factory=list)


def _failing(result: CaseResult) -> dict[str, MetricResult]:
    """The metrics that fail, except those the case's known defect excuses while it shows."""
    known = result.case.known_defect
    shows = known is not None and known.shows(result.outcome.metrics)
    return {
        m.name: m
        for m in result.metrics
        if m.verdict is Verdict.FAIL and not (shows and known is not None and known.excuses(m.name))
    }


def run_case(
    mutation: Mutation,
    case: Case,
    launcher: LocalLauncher,
    store: BaselineStore,
    info: dict,
    artifacts: Path,
    skip: str | None,
) -> CaseRun:
    if skip is not None:
        return CaseRun(mutation.name, case.key, case.check, skipped=skip)
    outcome = launch(with_reference(Scheduled(case, None), store, update=False), launcher, artifacts)
    if outcome.error is not None:
        return CaseRun(
            mutation.name, case.key, case.check, error=raised(outcome.error), broken=_in_mutation(outcome.error)
        )
    applied = [
        a for pool in launcher.pools.values() for a in pool.adaptations if a.startswith(f"MUTATION {mutation.name}:")
    ]
    if not applied:
        return CaseRun(mutation.name, case.key, case.check, skipped="the workers did not report the mutation applied")
    judged = compare(outcome, store, False, info, across_machines=False)
    # the mutated case's verdict as `harness run` prints it: what a user would see if the defect shipped
    write_text_atomic(Path(outcome.artifacts) / "verdict.txt", judged.message() + "\n")
    here = _failing(judged)
    elsewhere = compare(outcome, store, False, info, across_machines=True)
    there, judged_there = _failing(elsewhere), {m.name: m for m in elsewhere.metrics}
    catches = tuple(
        Catch(
            name,
            m.baseline if m.baseline is not None else float("nan"),
            m.measured,
            judged_there[name].tolerance.allowed(m.baseline or 0.0),
            name in there,
        )
        for name, m in sorted(here.items())
    )
    return CaseRun(mutation.name, case.key, case.check, catches=catches)


def _score(mutations: dict[str, list[CaseRun]]) -> Score:
    score = Score()
    for name, its in sorted(mutations.items()):
        score.defects += 1
        score.caught += any(r.caught for r in its)
        score.portable += any(r.caught_portably for r in its)
        if not any(r.caught_portably for r in its):
            score.missed.append(name)
    return score


def scores(runs: list[CaseRun]) -> tuple[Score, dict[str, Score]]:
    """Over all defects (one caught by any of its cases counts), and per check (of the defects run against
    its cases, those its own cases caught: a defect one check is blind to by design shows there)."""
    overall: dict[str, list[CaseRun]] = defaultdict(list)
    by_check: dict[str, dict[str, list[CaseRun]]] = defaultdict(lambda: defaultdict(list))
    for run in runs:
        if run.skipped is None:
            overall[run.mutation].append(run)
            by_check[run.check][run.mutation].append(run)
    return _score(overall), {check: _score(mutations) for check, mutations in sorted(by_check.items())}


def _effect(c: Catch) -> str:
    return (
        f"{c.metric} {c.baseline:.4g} -> {c.measured:.4g} (band {c.band:.2g}{'' if c.portable else ', bit-exact only'})"
    )


def markdown(runs: list[CaseRun], total: Score, table: dict[str, Score]) -> str:
    lines = [
        "# Sensitivity (mutation self-test)",
        "",
        f"**{total.portable} of {total.defects} defects caught by a portable metric** (judged with the across-machine "
        "noise "
        f"bands), {total.caught} caught at all"
        + (f"; missed: {', '.join(total.missed)}" if total.missed else "")
        + ".",
        "",
        "| check | defects | caught | caught portably | missed |",
        "|---|---|---|---|---|",
    ]
    lines += [
        f"| {check} | {s.defects} | {s.caught} | {s.portable} | {', '.join(s.missed) or '-'} |"
        for check, s in table.items()
    ]
    lines += [
        "",
        "| defect | kind | case | caught by (baseline -> mutated, across-machine band = minimum detectable effect) |",
        "|---|---|---|---|",
    ]
    for run in runs:
        kind = MUTATIONS[run.mutation].kind if run.mutation in MUTATIONS else ""
        if run.skipped is not None:
            found = f"skipped: {run.skipped}"
        elif run.error is not None:
            found = f"{'**broken mutation**' if run.broken else 'error'}: {run.error}"
        else:
            portable = [c for c in run.catches if c.portable]
            shown = (portable or list(run.catches))[:4]
            found = "; ".join(map(_effect, shown)) + (
                f" (+{len(run.catches) - len(shown)} more)" if len(run.catches) > len(shown) else ""
            )
            found = found or "**not caught**"
        lines.append(f"| {run.mutation} | {kind} | {run.case} | {found.replace('|', '/')} |")
    return "\n".join(lines) + "\n"


def main(args: argparse.Namespace) -> int:
    from harness.pipeline import collect
    from harness.suites.expand import Resources

    if args.list:
        for m in MUTATIONS.values():
            print(f"{m.name}{'  [fast]' if m.fast else ''}  ({m.kind}): {m.defect}\n    cases: {', '.join(m.cases)}")
        return 0
    unknown = [name for name in args.mutations if name not in MUTATIONS]
    if unknown:
        print(
            f"harness: unknown mutation(s) {', '.join(unknown)}; `harness sensitivity --list` names them",
            file=sys.stderr,
        )
        return EXIT_USAGE
    selected = (
        [MUTATIONS[n] for n in args.mutations]
        if args.mutations
        else [m for m in MUTATIONS.values() if m.fast or not args.fast]
    )
    resources = Resources.detect()
    cases = {c.key: c for c in collect(sorted(Path("suites").glob("*.yaml")), resources, markexpr="cpu")}
    missing = sorted({key for m in selected for key in m.cases if key not in cases})
    if missing:
        print(f"harness: mutation cases not in suites/: {', '.join(missing)}", file=sys.stderr)
        return EXIT_USAGE
    info = provenance(Path.cwd(), resources.gpu_name)
    store = BaselineStore(args.baselines, resources.environments)
    runs: list[CaseRun] = []
    print(f"sensitivity: {len(selected)} defect(s), {sum(len(m.cases) for m in selected)} mutated case runs")
    try:
        for mutation in selected:
            launcher = LocalLauncher(
                args.artifacts / mutation.name, lambda world, name=mutation.name: {MUTATION_VARIABLE: name}
            )
            try:
                for key in mutation.cases:
                    run = run_case(
                        mutation, cases[key], launcher, store, info, args.artifacts, skip_reason(cases[key], resources)
                    )
                    runs.append(run)
                    verdict = (
                        "skipped"
                        if run.skipped
                        else "BROKEN MUTATION (its own code raised)"
                        if run.broken
                        else "CAUGHT"
                        if run.caught_portably
                        else "caught bit-exactly only"
                        if run.caught
                        else "NOT CAUGHT"
                    )
                    print(
                        f"{mutation.name} on {key}: {verdict}"
                        + "".join(f"\n  {_effect(c)}" for c in run.catches[:6])
                        + (f"\n  error: {run.error}" if run.error else ""),
                        flush=True,
                    )
            finally:
                launcher.close()
    except KeyboardInterrupt:
        print("harness: interrupted; the report covers the finished case runs", file=sys.stderr)
    total, table = scores(runs)
    write_json_atomic(
        args.artifacts / REPORT,
        {
            "provenance": info,
            "runs": [asdict(r) for r in runs],
            "total": asdict(total),
            "checks": {check: asdict(s) for check, s in table.items()},
        },
    )
    text = markdown(runs, total, table)
    write_text_atomic(args.artifacts / "sensitivity.md", text)
    print(text)
    return 0 if total.defects and total.portable / total.defects >= REQUIRED_SCORE else EXIT_FAILED
