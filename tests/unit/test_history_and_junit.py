"""The run history (a real SQLite file) and JUnit XML, from real result records: finished cases of
an interrupted run stay readable, and ``harness history`` prints a case's metrics run by run."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import replace
from pathlib import Path

from harness.baselines import BaselineStore, compare
from harness.cli import main
from harness.records import Budget, CaseOutcome, CaseResult, KnownDefect
from harness.reports.history import History
from harness.reports.junit import junit_xml
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
