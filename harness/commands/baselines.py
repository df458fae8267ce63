"""``harness baselines``: the recorded baseline environments and how many of this machine's cases each covers;
with ``--markdown``, every recorded value with its noise band (docs/measured/baselines.md)."""

from __future__ import annotations

import argparse
import glob
import sys
from collections import Counter
from pathlib import Path

from harness.atomic import write_text_atomic
from harness.baselines import BaselineError, baseline_files, drop_cases, read_baseline_file
from harness.checks import get_check
from harness.exit_codes import EXIT_USAGE
from harness.pipeline import collect
from harness.reports.measured import baselines_markdown
from harness.suites.expand import Resources
from harness.suites.yaml_lines import SuiteError


def add_parser(sub: argparse._SubParsersAction) -> None:
    baselines = sub.add_parser(
        "baselines", help="the baseline environments and how many of this machine's cases each covers"
    )
    baselines.add_argument(
        "--baselines", type=Path, default=Path("baselines"), help="baseline folder (default: baselines)"
    )
    baselines.add_argument("suites", nargs="*", help="suite files (default: suites/*.yaml)")
    baselines.add_argument(
        "--markdown",
        type=Path,
        metavar="FILE",
        help="write every recorded value (headline metrics, noise bands) "
        "as Markdown to FILE instead (docs/measured/baselines.md: `nox -s docs`)",
    )
    baselines.add_argument(
        "--prune",
        action="store_true",
        help="remove the entries (and noise records) of cases the suites no longer declare",
    )


def _stale(folder: Path, unknown: set[tuple[str, str]], declared_suites: set[str], prune: bool) -> None:
    """Entries of the loaded suites' files whose case no suite declares any more (a renamed axis value, a dropped
    layout): said, and removed with ``--prune``. Files of suites not loaded are left alone."""
    stale = sorted((suite, case_id) for suite, case_id in unknown if suite in declared_suites)
    if not stale:
        return
    verb = "removed" if prune else "name cases no suite declares (`--prune` removes them)"
    print(f"  {len(stale)} stale entr{'y' if len(stale) == 1 else 'ies'} {verb}:")
    for suite, case_id in stale:
        print(f"    {suite}.json: {case_id}")
    if prune:
        for suite in sorted({suite for suite, _ in stale}):
            drop_cases(folder / f"{suite}.json", {case_id for s, case_id in stale if s == suite})


def main(args: argparse.Namespace) -> int:
    """Each recorded environment: which suites and how many of this machine's cases of its platform it covers."""
    try:
        cases = collect(args.suites or sorted(glob.glob("suites/*.yaml")), Resources.detect())
    except SuiteError as err:
        print(f"harness: {err}", file=sys.stderr)
        return EXIT_USAGE
    if args.markdown is not None:
        headlines = {case.suite: get_check(case.check).headline for case in cases}
        write_text_atomic(args.markdown, baselines_markdown(args.baselines, headlines))
        print(f"written: {args.markdown}")
        return 0
    here = Resources.detect().environments
    found = sorted(p for p in args.baselines.iterdir() if p.is_dir()) if args.baselines.is_dir() else []
    declared_suites = {c.suite for c in cases}
    for folder in found:
        recorded: set[tuple[str, str]] = set()
        for file in baseline_files(folder):
            try:
                recorded |= {(file.stem, case_id) for case_id in read_baseline_file(file)["cases"]}
            except BaselineError as err:
                print(f"harness: {err}", file=sys.stderr)
        platform = "gpu" if folder.name.startswith("gpu-") else "cpu"
        mine = [c for c in cases if c.platform == platform]
        covered = sum((c.suite, c.id) in recorded for c in mine)
        tag = "  <- this machine" if here.get(platform) == folder.name else ""
        print(
            f"{folder.name}: {len(recorded)} cases recorded, {covered} of the {len(mine)} {platform} cases of the "
            f"suites{tag}"
        )
        suites = Counter(suite for suite, _ in recorded)
        print("  " + ", ".join(f"{suite} {n}" for suite, n in sorted(suites.items())))
        _stale(folder, recorded - {(c.suite, c.id) for c in mine}, declared_suites, args.prune)
    missing = sorted(set(here.values()) - {f.name for f in found} - {"gpu-none"})
    for name in missing:
        print(f"{name}: no baselines (this machine's environment; record with `harness run --update-baselines`)")
    return 0
