"""``harness history``: one case's metrics over the runs a history recorded; and how every reading command
opens a history (read-only, refusing what is not one)."""

from __future__ import annotations

import argparse
import sqlite3
import sys
from pathlib import Path

from harness.exit_codes import EXIT_USAGE
from harness.reports.history import History, HistoryError, format_case_runs, not_a_history

DEFAULT_HISTORY = Path("artifacts") / "history.sqlite"


def add_parser(sub: argparse._SubParsersAction) -> None:
    history = sub.add_parser("history", help="print a case's metrics over the recorded runs")
    history.add_argument("case", help="a case id or any part of one: tp2pp1->tp1pp1/int4_awq")
    history.add_argument(
        "--history", type=Path, default=DEFAULT_HISTORY, help=f"run history (default: {DEFAULT_HISTORY})"
    )
    history.add_argument("-n", type=int, default=10, help="last N runs (default: 10)")


def open_history(path: Path) -> History | None:
    problem = not_a_history(path)
    if problem is not None:
        print(f"harness: {path}: {problem}", file=sys.stderr)
        return None
    try:
        return History(path)
    except (HistoryError, sqlite3.Error) as err:
        print(f"harness: {path}: not a readable run history ({err})", file=sys.stderr)
        return None


def unreadable(err: HistoryError) -> int:
    print(f"harness: {err}", file=sys.stderr)
    return EXIT_USAGE


def main(args: argparse.Namespace) -> int:
    store = open_history(args.history)
    if store is None:
        return EXIT_USAGE
    try:
        found = store.case_runs(args.case, args.n)
    except HistoryError as err:
        return unreadable(err)
    finally:
        store.close()
    if not found:
        print(f"harness: no case matching {args.case!r} in {args.history}", file=sys.stderr)
        return EXIT_USAGE
    print("\n\n".join(format_case_runs(key, runs) for key, runs in found.items()))
    return 0
