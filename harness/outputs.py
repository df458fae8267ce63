"""Where finished cases are kept: the run history first (it is the durable record, one transaction
per case), then ``results.json``. A store that fails to write (a full disk, a read-only folder, lost
permissions) is reported once, as what the OS said, and dropped; the other store keeps every case,
and the run ends with exit 1 naming what was not written. Never a traceback, never a lost case that
one of the stores could have held.
"""

from __future__ import annotations

import contextlib
import sqlite3
import sys
from pathlib import Path
from typing import Any

from harness.atomic import unwritable
from harness.records import CaseResult
from harness.report import write_results
from harness.reports.history import History, HistoryError

STORE_ERRORS = (OSError, sqlite3.Error, HistoryError)


def say(problems: list[str]) -> None:
    """Output problems go to stderr as they happen, one line each."""
    for line in problems:
        print(f"harness: {line}", file=sys.stderr, flush=True)


def _why(err: BaseException) -> str:
    if isinstance(err, OSError):
        return f"{err.strerror or err}" + (f" ({err.filename})" if err.filename else "")
    return str(err)


class ResultStores:
    def __init__(self, history_path: Path, results_path: Path, provenance: dict[str, Any]) -> None:
        self.history_path, self.results_path, self.provenance = history_path, results_path, provenance
        self.results: list[CaseResult] = []
        self.failures: dict[str, str] = {}  # store -> why it stopped taking cases
        self._history: History | None = None
        self._run_id: int | None = None
        self._started = False

    def _fail(self, store: str, where: Path, err: BaseException) -> str:
        self.failures[store] = f"{store} {where}: {_why(err)}"
        return f"cannot write the {self.failures[store]}; finished cases go on to the other store"

    def start(self) -> list[str]:
        """Open the history and start this run in it; the problems, if any (the run goes on without it)."""
        self._started = True
        try:
            self._history = History(self.history_path)
            self._run_id = self._history.start_run(self.provenance)
        except STORE_ERRORS as err:
            self._history = None
            why = unwritable(self.history_path.parent) or _why(err)  # sqlite says "unable to open", the OS says why
            self.failures["run history"] = f"run history {self.history_path}: {why} (could not be opened)"
            return [f"cannot write the {self.failures['run history']}; results go to {self.results_path} only"]
        return []

    def keep(self, result: CaseResult) -> list[str]:
        """Store one finished case: history first, then results.json. Returns the new problems."""
        problems = [] if self._started else self.start()
        self.results.append(result)
        if self._history is not None and self._run_id is not None:
            try:
                self._history.record(self._run_id, result)
            except STORE_ERRORS as err:
                problems.append(self._fail("run history", self.history_path, err))
                self._close_history()
        if "results file" not in self.failures:
            try:
                write_results(self.results_path, self.results, self.provenance)
            except STORE_ERRORS as err:
                problems.append(self._fail("results file", self.results_path, err))
        return problems

    def _close_history(self) -> None:
        if self._history is not None:
            with contextlib.suppress(*STORE_ERRORS):  # already reported: the history stopped taking cases
                self._history.close()
            self._history = None

    def finish(self, interrupted: bool = False) -> list[str]:
        """Mark the run finished (unless interrupted) and close; the problems, if any."""
        problems: list[str] = []
        if self._history is not None and self._run_id is not None and not interrupted:
            try:
                self._history.finish_run(self._run_id)
            except STORE_ERRORS as err:
                problems.append(self._fail("run history", self.history_path, err))
        self._close_history()
        return problems

    def summary(self) -> str | None:
        """One line per store that failed, with where the finished cases are; None when both worked."""
        if not self.failures:
            return None
        lost = "; ".join(self.failures.values())
        return (
            f"output problems: {lost}. {len(self.results)} finished case(s) were kept in the store(s) that still worked"
        )
