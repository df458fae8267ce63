"""``harness report``: the nightly report (Markdown for a CI job summary, one self-contained HTML page with
trend plots) of the last N runs of a history, optionally with a sensitivity score."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections import Counter
from pathlib import Path

from harness.atomic import write_text_atomic
from harness.commands.history import DEFAULT_HISTORY, open_history, unreadable
from harness.exit_codes import EXIT_USAGE
from harness.reports.history import HistoryError
from harness.reports.html import html
from harness.reports.render import markdown, sensitivity_table
from harness.reports.trends import Settings, analyse, run_label


def add_parser(sub: argparse._SubParsersAction) -> None:
    report = sub.add_parser("report", help="Markdown + self-contained HTML report of the last N runs in the history")
    report.add_argument(
        "--history", type=Path, default=DEFAULT_HISTORY, help=f"run history (default: {DEFAULT_HISTORY})"
    )
    report.add_argument(
        "--out", type=Path, default=Path("artifacts") / "report", help="folder for report.md and report.html"
    )
    report.add_argument(
        "-n", dest="runs", type=int, default=Settings.runs, help=f"last N runs (default: {Settings.runs})"
    )
    report.add_argument(
        "--drift-runs",
        type=int,
        default=Settings.drift_runs,
        help=f"a drift is this many latest runs beyond tolerance (default: {Settings.drift_runs})",
    )
    report.add_argument(
        "--sensitivity",
        type=Path,
        metavar="FILE",
        help="also show a `harness sensitivity` score (its sensitivity.json)",
    )
    report.add_argument(
        "--drift-window",
        type=int,
        default=Settings.drift_window,
        help=f"runs before the move that make the reference (default: {Settings.drift_window})",
    )


def main(args: argparse.Namespace) -> int:
    store = open_history(args.history)
    if store is None:
        return EXIT_USAGE
    try:
        window = store.window(args.runs)
    except HistoryError as err:
        return unreadable(err)
    finally:
        store.close()
    if not window.runs:
        print(f"harness: {args.history} holds no runs", file=sys.stderr)
        return EXIT_USAGE
    analysis = analyse(window, Settings(args.runs, args.drift_runs, args.drift_window))
    extra = ()
    if args.sensitivity is not None:
        try:
            extra = (sensitivity_table(json.loads(args.sensitivity.read_text())),)
        except (OSError, ValueError, KeyError, TypeError) as err:
            print(
                f"harness: {args.sensitivity}: not a sensitivity report ({getattr(err, 'strerror', None) or err})",
                file=sys.stderr,
            )
            return EXIT_USAGE
    text = markdown(analysis, extra)
    write_text_atomic(args.out / "report.md", text)
    write_text_atomic(args.out / "report.html", html(analysis, extra))
    summary_file = os.environ.get("GITHUB_STEP_SUMMARY")
    if summary_file:
        with open(summary_file, "a") as handle:
            handle.write(text)
    statuses = Counter(s.status for s in analysis.cases)
    print(
        f"report of {len(window.runs)} run(s), latest {run_label(analysis.latest)}: "
        + ", ".join(f"{n} {status}" for status, n in sorted(statuses.items()))
        + f", {len(analysis.drifts)} drift(s)"
    )
    print(f"written: {args.out / 'report.md'} and {args.out / 'report.html'}")
    return 0
