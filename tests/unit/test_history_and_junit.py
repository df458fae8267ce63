"""The run history (a real SQLite file) and JUnit XML, from real result records: finished cases of
an interrupted run stay readable, and ``harness history`` prints a case's metrics run by run."""

from __future__ import annotations

import sqlite3
import threading
import xml.etree.ElementTree as ET
from dataclasses import replace
from pathlib import Path

import pytest

from harness.baselines import BaselineStore, compare
from harness.cli import main
from harness.outputs import ResultStores
from harness.records import Budget, CaseOutcome, CaseResult, KnownDefect
from harness.reports.history import History
from harness.reports.junit import junit_xml
from tests.conftest import ROOT
from tests.support.cases import make_case


def results(tmp_path: Path, x: float) -> CaseResult:
    store = BaselineStore(tmp_path / "baselines")
    if store.lookup("cpu", "s", "s/tiny-gpt/tp1pp1/none") is None:
        compare(CaseOutcome(make_case(), {"x": 1.0, "speed": 2.0}, None, 1.0, "/a"), store, update=True, provenance={})
    return compare(
        CaseOutcome(make_case(), {"x": x, "speed": 2.0}, None, 1.5, "/a"), store, update=False, provenance={}
    )


def test_history_keeps_every_finished_case_and_marks_interrupted_runs(tmp_path: Path, capsys) -> None:
    path = tmp_path / "history.sqlite"
    history = History(path)
    for x, finish in ((1.0, True), (1.05, True), (1.5, False)):  # the third run dies after its case
        run_id = history.start_run({"commit": f"c{x}"})
        history.record(run_id, results(tmp_path, x))
        if finish:
            history.finish_run(run_id)
    history._db.close()  # as a killed process leaves it: no finish, no clean close
    reopened = History(path)
    (runs,) = reopened.case_runs("tp1pp1/none").values()
    assert [(r.verdict, r.finished, r.metrics["x"]) for r in runs] == [
        ("pass", True, (1.0, 1.0)),
        ("pass", True, (1.05, 1.0)),
        ("fail", False, (1.5, 1.0)),
    ]
    reopened.close()
    assert main(["history", "tp1pp1/none", "--history", str(path)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "s/tiny-gpt/tp1pp1/none[cpu]: 3 run(s); * = the run was interrupted"
    assert out[1].split() == ["run", "#1", "#2", "#3*", "baseline"]
    assert out[3].split() == ["verdict", "pass", "pass", "fail"]
    assert out[-1].split() == ["x", "1", "1.05", "1.5", "1"]
    assert main(["history", "nothing-like-this", "--history", str(path)]) == 2


def test_junit_maps_verdicts(tmp_path: Path) -> None:
    passing, failing = results(tmp_path, 1.0), results(tmp_path, 1.5)
    known = replace(
        failing,
        outcome=replace(
            failing.outcome,
            case=replace(
                make_case("s/tiny-gpt/tp2pp1/none"),
                known_defect=KnownDefect("bug 1 of upstream", {"x": Budget(min=1.2)}),
            ),
        ),
    )
    root = ET.fromstring(junit_xml([passing, failing, known]))
    suite = root.find("testsuite")
    assert suite is not None and (suite.get("tests"), suite.get("failures"), suite.get("skipped")) == ("3", "1", "1")
    cases = [(c.get("name"), [child.tag for child in c]) for c in suite.iter("testcase")]
    assert cases == [
        ("s/tiny-gpt/tp1pp1/none", []),
        ("s/tiny-gpt/tp1pp1/none", ["failure"]),
        ("s/tiny-gpt/tp2pp1/none", ["skipped"]),
    ]
    failure = suite.find("testcase/failure")
    expected = "x: measured 1.5, baseline 1, tolerance abs 0.1 (no noise record: judged as declared) -> fail"
    assert failure is not None and expected in (failure.text or "")


def _damaged(path: Path, how: str) -> None:
    """A history as a crash, a disk or another tool can leave it."""
    history = History(path)
    for x in (1.0, 1.5):
        run_id = history.start_run({"commit": f"c{x}", "pad": "x" * 3000})
        history.record(run_id, results(path.parent, x))
        history.finish_run(run_id)
    history.close()
    db = sqlite3.connect(path)
    with db:
        if how == "provenance":
            db.execute("UPDATE runs SET provenance = 'not json {'")
        elif how == "provenance-list":
            db.execute("UPDATE runs SET provenance = '[1, 2]'")
        elif how == "tolerance":
            db.execute('UPDATE metrics SET tolerance = \'{"abs": "wide"}\'')
        elif how == "columns":
            db.executescript("DROP TABLE metrics; CREATE TABLE metrics (run_id, something_else);")
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.close()
    if how == "page":
        data = bytearray(path.read_bytes())
        assert len(data) > 3 * 4096
        data[4096 + 100 : 2 * 4096] = b"\xa5" * (4096 - 100)  # a page's cells overwritten, the header intact
        path.write_bytes(bytes(data))


@pytest.mark.parametrize("how", ["provenance", "provenance-list", "tolerance", "columns", "page"])
def test_report_and_history_on_a_damaged_history_are_one_line(tmp_path: Path, capsys, how: str) -> None:
    path = tmp_path / "history.sqlite"
    _damaged(path, how)
    commands = [["report", "--history", str(path), "--out", str(tmp_path / "r")]]
    if how != "tolerance":  # `history` shows measured values only: it never reads a tolerance
        commands.append(["history", "tp1", "--history", str(path)])
    for argv in commands:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert err.startswith(f"harness: {path}: not a readable run history (") and "\n" not in err, err
    assert not (tmp_path / "r").exists()


def test_run_refuses_to_write_its_history_into_another_tools_database(tmp_path: Path, capsys) -> None:
    other = tmp_path / "theirs.sqlite"
    with sqlite3.connect(other) as db:
        db.execute("CREATE TABLE accounts (name)")
    before = other.read_bytes()
    argv = ["run", str(ROOT / "suites" / "ckpt.yaml"), "-k", "tp1pp1/none", "--history", str(other)]
    assert main([*argv, "--artifacts", str(tmp_path / "a")]) == 2
    err = capsys.readouterr().err
    assert f"--history {other}: not a run history: an SQLite database without the table(s)" in err
    assert "nothing was run" in err and other.read_bytes() == before


def test_a_history_locked_by_another_writer_for_longer_than_sqlites_default_waits_for_it(tmp_path: Path) -> None:
    """SQLite's default busy timeout is 5 s; a run dropped its history after it. Now the writer waits."""
    path = tmp_path / "history.sqlite"
    History(path).close()
    other = sqlite3.connect(path, check_same_thread=False)
    other.execute("BEGIN IMMEDIATE")  # the other run's case transaction, holding the write lock
    release = threading.Timer(6.0, other.commit)
    release.start()
    stores = ResultStores(path, tmp_path / "results.json", {})
    assert stores.keep(results(tmp_path, 1.0)) == [] and stores.finish() == []
    release.join()
    other.close()
    history = History(path)
    assert len(history.case_runs("tp1pp1/none")) == 1
    history.close()
