"""The run history: one SQLite file that every ``harness run`` appends to, a run row with its
provenance, then one transaction per finished case (its verdict and every metric with baseline and
tolerance). SQLite commits are atomic, so a run killed midway leaves every finished case recorded
and the run marked unfinished (``ended`` is NULL); nothing is ever half written.
"""

from __future__ import annotations

import datetime as dt
import json
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.records import CaseResult, Tolerance

_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY AUTOINCREMENT, started TEXT NOT NULL, ended TEXT, provenance TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS cases (
    run_id INTEGER NOT NULL REFERENCES runs(id), key TEXT NOT NULL, suite TEXT NOT NULL, verdict TEXT NOT NULL,
    duration_s REAL, error TEXT, artifacts TEXT, known_defect TEXT, PRIMARY KEY (run_id, key));
CREATE TABLE IF NOT EXISTS metrics (
    run_id INTEGER NOT NULL REFERENCES runs(id), key TEXT NOT NULL, name TEXT NOT NULL, measured REAL, baseline REAL,
    tolerance TEXT NOT NULL, verdict TEXT NOT NULL, PRIMARY KEY (run_id, key, name));
"""


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


@dataclass(frozen=True)
class CaseRun:
    """One case in one run, as the history holds it."""

    run_id: int
    started: str
    finished: bool  # False: the run was interrupted (this case itself completed)
    commit: str | None
    verdict: str
    metrics: dict[str, tuple[float | None, float | None]]  # name -> (measured, baseline)


@dataclass(frozen=True)
class RunRow:
    id: int
    started: str
    ended: str | None  # None: the run was interrupted or is still going
    provenance: dict[str, Any]


@dataclass(frozen=True)
class MetricRow:
    run_id: int
    key: str
    name: str
    measured: float | None
    baseline: float | None
    tolerance: Tolerance
    verdict: str


@dataclass(frozen=True)
class CaseRow:
    run_id: int
    key: str
    suite: str
    verdict: str
    duration_s: float | None
    error: str | None
    artifacts: str | None
    known_defect: str | None


@dataclass(frozen=True)
class Window:
    """The last N runs, oldest first, with every case and metric they recorded."""

    runs: list[RunRow]
    cases: list[CaseRow]
    metrics: list[MetricRow]


def _tolerance(text: str) -> Tolerance:
    return Tolerance.from_json(json.loads(text))


def _provenance(text: str) -> dict[str, Any]:
    value = json.loads(text)
    if not isinstance(value, dict):
        raise ValueError(f"a run's provenance is a JSON {type(value).__name__}, not an object")
    return value


_SQLITE_HEADER = b"SQLite format 3\x00"


def not_a_history(path: Path) -> str | None:
    """Why ``path`` cannot be read as a run history (None: it can). Read-only: a report or a history
    query must never turn a stray file into an empty history."""
    if not path.exists():
        return "no run history there (harness run writes one: --history, default <artifacts>/history.sqlite)"
    if not path.is_file():
        return "not a run history: a directory (give the history.sqlite file inside it)"
    try:
        with path.open("rb") as handle:
            header = handle.read(len(_SQLITE_HEADER))
    except OSError as err:
        return f"cannot read: {err.strerror}"
    if header != _SQLITE_HEADER:
        return "not a run history: " + ("an empty file" if not header else "not an SQLite database")
    try:
        db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
        try:
            tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        finally:
            db.close()
    except sqlite3.Error as err:
        return f"not a run history: {err}"
    missing = {"runs", "cases", "metrics"} - tables
    return (
        f"not a run history: an SQLite database without the table(s) {', '.join(sorted(missing))}" if missing else None
    )


class HistoryError(ValueError):
    """A history that cannot be used; the message names the file and what is wrong with it."""


BUSY_TIMEOUT_S = 120.0  # another run writing the same history holds its lock for one case's transaction


def foreign(path: Path) -> str | None:
    """Why a run must not write its history into ``path``: a file that holds something else (another tool's
    SQLite database gets no tables of ours). None for a history, a missing or an empty file."""
    if not path.exists() or (path.is_file() and path.stat().st_size == 0):
        return None
    problem = not_a_history(path)
    return None if problem is None else f"{problem}; --history takes a harness run history or a new file"


class History:
    def __init__(self, path: Path) -> None:
        if (problem := foreign(path)) is not None:
            raise HistoryError(f"{path}: {problem}")
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, timeout=BUSY_TIMEOUT_S)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.executescript(_SCHEMA)
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(cases)")}
        if "known_defect" not in columns:  # histories written before known defects were recorded
            with self._db:
                self._db.execute("ALTER TABLE cases ADD COLUMN known_defect TEXT")

    def close(self) -> None:
        self._db.close()

    def start_run(self, provenance: dict[str, Any]) -> int:
        with self._db:
            cursor = self._db.execute(
                "INSERT INTO runs (started, provenance) VALUES (?, ?)", (_now(), json.dumps(provenance))
            )
        return int(cursor.lastrowid)

    def record(self, run_id: int, result: CaseResult) -> None:
        case, outcome = result.case, result.outcome
        with self._db:  # one transaction: the case and all its metrics, or nothing
            self._db.execute(
                "INSERT OR REPLACE INTO cases VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    run_id,
                    case.key,
                    case.suite,
                    result.verdict.value,
                    outcome.duration_s,
                    outcome.error or outcome.skipped,
                    outcome.artifacts,
                    None if case.known_defect is None else case.known_defect.describe(),
                ),
            )
            self._db.executemany(
                "INSERT OR REPLACE INTO metrics VALUES (?, ?, ?, ?, ?, ?, ?)",
                [
                    (
                        run_id,
                        case.key,
                        m.name,
                        m.measured,
                        m.baseline,
                        json.dumps(m.tolerance.to_json()),
                        m.verdict.value,
                    )
                    for m in result.metrics
                ],
            )

    def finish_run(self, run_id: int) -> None:
        with self._db:
            self._db.execute("UPDATE runs SET ended = ? WHERE id = ?", (_now(), run_id))

    def _unreadable(self, err: Exception) -> HistoryError:
        return HistoryError(f"{self.path}: not a readable run history ({type(err).__name__}: {err})")

    def window(self, last: int) -> Window:
        """Raises HistoryError where a page, a column or a stored field is damaged."""
        try:
            return self._window(last)
        except (sqlite3.Error, ValueError, TypeError, KeyError, AttributeError) as err:
            raise self._unreadable(err) from None

    def _window(self, last: int) -> Window:
        runs = [
            RunRow(i, started, ended, _provenance(prov))
            for i, started, ended, prov in self._db.execute(
                "SELECT id, started, ended, provenance FROM runs ORDER BY id DESC LIMIT ?", (last,)
            )
        ][::-1]
        first = runs[0].id if runs else 0
        cases = [
            CaseRow(*row)
            for row in self._db.execute(
                "SELECT run_id, key, suite, verdict, duration_s, error, artifacts, known_defect FROM cases WHERE "
                "run_id >= ? "
                "ORDER BY run_id, key",
                (first,),
            )
        ]
        metrics = [
            MetricRow(run_id, key, name, measured, baseline, _tolerance(tolerance), verdict)
            for run_id, key, name, measured, baseline, tolerance, verdict in self._db.execute(
                "SELECT run_id, key, name, measured, baseline, tolerance, verdict FROM metrics WHERE run_id >= ? "
                "ORDER BY run_id, key, name",
                (first,),
            )
        ]
        return Window(runs, cases, metrics)

    def case_runs(self, pattern: str, limit: int = 20) -> dict[str, list[CaseRun]]:
        """The last ``limit`` runs of every case whose key contains ``pattern``, oldest first. Raises HistoryError
        where a page, a column or a stored field is damaged."""
        try:
            return self._case_runs(pattern, limit)
        except (sqlite3.Error, ValueError, TypeError, KeyError, AttributeError) as err:
            raise self._unreadable(err) from None

    def _case_runs(self, pattern: str, limit: int) -> dict[str, list[CaseRun]]:
        rows = self._db.execute(
            "SELECT c.key, r.id, r.started, r.ended, r.provenance, c.verdict FROM cases c JOIN runs r ON r.id = "
            "c.run_id "
            "WHERE instr(c.key, ?) > 0 ORDER BY c.key, r.id DESC",
            (pattern,),
        ).fetchall()
        found: dict[str, list[CaseRun]] = {}
        for key, run_id, started, ended, provenance, verdict in rows:
            if len(found.setdefault(key, [])) >= limit:
                continue
            metrics = {
                name: (measured, baseline)
                for name, measured, baseline in self._db.execute(
                    "SELECT name, measured, baseline FROM metrics WHERE run_id = ? AND key = ? ORDER BY name",
                    (run_id, key),
                )
            }
            found[key].append(
                CaseRun(run_id, started, ended is not None, _provenance(provenance).get("commit"), verdict, metrics)
            )
        return {key: runs[::-1] for key, runs in found.items()}


def number(value: float | None) -> str:
    """A metric value as the terminal and the reports show it."""
    return "-" if value is None else f"{value:.6g}"


def format_case_runs(key: str, runs: list[CaseRun]) -> str:
    """A terminal table: one column per run, one row per metric (latest baseline on the right)."""
    names = sorted({name for run in runs for name in run.metrics})
    label = max([len("run"), *map(len, names)])
    heads = [f"#{run.run_id}{'' if run.finished else '*'}" for run in runs]
    width = max([10, *map(len, heads)])
    lines = [
        f"{key}: {len(runs)} run(s)" + ("; * = the run was interrupted" if not all(r.finished for r in runs) else ""),
        f"{'run':<{label}}  " + "  ".join(f"{h:>{width}}" for h in heads) + "  baseline",
        f"{'commit':<{label}}  " + "  ".join(f"{(r.commit or '-')[:8]:>{width}}" for r in runs),
        f"{'verdict':<{label}}  " + "  ".join(f"{r.verdict:>{width}}" for r in runs),
    ]
    for name in names:
        values = [number(run.metrics.get(name, (None, None))[0]) for run in runs]
        latest = next((run.metrics[name][1] for run in reversed(runs) if name in run.metrics), None)
        lines.append(f"{name:<{label}}  " + "  ".join(f"{v:>{width}}" for v in values) + f"  {number(latest)}")
    return "\n".join(lines)
