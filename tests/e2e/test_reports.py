"""Real ``harness run`` invocations feeding the history, then ``harness report``; and runs killed
midway (SIGINT to the driver, SIGKILL to a worker) leaving a readable history."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest

from harness.cli import EXIT_FAILED, main
from harness.reports.history import History
from tests.conftest import CPU_ENV, ROOT, wait_for

CKPT_CASE = "ckpt/tiny-gpt/tp1pp1/none"
ONLY_TP1 = "tp1pp1 and none and not tp2pp1 and not tp1pp2 and not bf16"
pytestmark = pytest.mark.e2e


def emits_suite(folder: Path, value: float) -> Path:
    path = folder / "emits.yaml"
    path.write_text(
        f"suite: emits\ncheck: tests.support.fault_checks:EMITS\nparams: {{value: {value}}}\nmatrix:\n  model: "
        "[tiny-gpt]\n"
    )
    return path


def degraded_baselines(tmp_path: Path) -> Path:
    """The recorded baselines, except that the checkpoint case claims one quantizer should be enabled."""
    degraded = tmp_path / "degraded"
    shutil.copytree(ROOT / "baselines", degraded)
    path = degraded / CPU_ENV / "ckpt.json"
    data = json.loads(path.read_text())
    data["cases"][CKPT_CASE]["metrics"]["quantizers_enabled"] = 1.0
    path.write_text(json.dumps(data))
    return degraded


def test_three_runs_then_report_show_the_regression_its_start_and_the_drift(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    suites, history = tmp_path / "suites", tmp_path / "history.sqlite"
    suites.mkdir()
    baselines = tmp_path / "baselines"
    shutil.copytree(ROOT / "baselines", baselines)
    (baselines / CPU_ENV / "emits.json").write_text(
        json.dumps(
            {"format": 1, "cases": {"emits/tiny-gpt/tp1pp1/none": {"metrics": {"value": 1.0}, "provenance": {}}}}
        )
    )
    degraded = degraded_baselines(tmp_path)
    (degraded / CPU_ENV / "emits.json").write_text((baselines / CPU_ENV / "emits.json").read_text())
    # night 1 passes; night 2 the checkpoint baseline is degraded (a regression) and the emitted value
    # moves from 0.97 to 1.03: more than its tolerance (0.05), still inside the baseline band
    for value, recorded in ((0.97, baselines), (1.03, degraded), (1.04, degraded)):
        args = [
            "run",
            str(ROOT / "suites" / "ckpt.yaml"),
            str(emits_suite(suites, value)),
            "-k",
            ONLY_TP1,
            "--platform",
            "cpu",
            "--baselines",
            str(recorded),
            "--artifacts",
            str(tmp_path / "artifacts"),
            "--history",
            str(history),
        ]
        assert main(args) == (0 if recorded is baselines else EXIT_FAILED)
    capsys.readouterr()
    out = tmp_path / "report"
    assert main(["report", "--history", str(history), "--out", str(out), "--drift-runs", "2"]) == 0
    assert "1 still failing" in capsys.readouterr().out
    text = (out / "report.md").read_text()
    print(text)
    assert "## Still failing (1)" in text
    assert f"| {CKPT_CASE}[cpu] | fail | #2 " in text  # failing since the second run
    assert f"| {CKPT_CASE}[cpu] | quantizers_enabled | 1 | 0 | +100.000% | abs 0 | fail |" in text
    assert "| emits/tiny-gpt/tp1pp1/none[cpu] | value | 0.97 | 1.035 | +0.065 | 0.05 | 1 | #2 " in text
    page = (out / "report.html").read_text()
    # eight checkpoint metrics (a same-layout reload has no parity metrics) and the emitted value, each case with
    # its peak memory
    assert page.count('<svg class="trend"') == 11
    assert '<details open><summary class="bad">ckpt/tiny-gpt/tp1pp1/none[cpu]' in page
    assert 'fill="#d62728"' in page  # the failed points of the regression


def recorded_cases(history: Path) -> list[tuple[str, str]]:
    if not history.exists():
        return []
    try:
        with sqlite3.connect(history) as db:
            return db.execute("SELECT key, verdict FROM cases ORDER BY rowid").fetchall()
    except sqlite3.OperationalError:  # the driver has not created the tables yet
        return []


def start_run(
    tmp_path: Path, write_suite: Callable[[str, str], Path], seconds: list[float]
) -> tuple[subprocess.Popen, Path]:
    """``harness run`` in its own process: one quick sleeping case per entry of ``seconds``, in order."""
    suites = [
        write_suite(
            f"suite: s{i}\ncheck: tests.support.fault_checks:SLEEPS\ntimeout_s: 300\nparams: {{seconds: {s}}}\n"
            "matrix:\n  model: [tiny-gpt]\n",
            f"s{i}.yaml",
        )
        for i, s in enumerate(seconds)
    ]
    history = tmp_path / "history.sqlite"
    command = [
        sys.executable,
        "-m",
        "harness.cli",
        "run",
        *map(str, suites),
        "--baselines",
        str(tmp_path / "none"),
        "--artifacts",
        str(tmp_path / "artifacts"),
        "--history",
        str(history),
    ]
    # started as a background job is (SIGINT ignored, inherited): the driver must arm it itself
    driver = subprocess.Popen(
        command,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
    )
    return driver, history


@pytest.mark.parametrize(
    ("stop", "said"), [(signal.SIGINT, "interrupted"), (signal.SIGTERM, "terminated (SIGTERM)")], ids=["int", "term"]
)
def test_sigint_or_sigterm_to_the_driver_keeps_the_finished_cases(
    tmp_path: Path, write_suite, stop: signal.Signals, said: str
) -> None:
    """SIGTERM is what Slurm, CI runners and ``timeout`` send: the same clean stop as Ctrl-C."""
    driver, history = start_run(tmp_path, write_suite, [0.0, 600.0, 0.0])
    wait_for("the first case in the history", lambda: len(recorded_cases(history)) == 1)
    time.sleep(2)  # the second case is sleeping in its worker
    workers = psutil.Process(driver.pid).children(recursive=True)
    assert workers
    driver.send_signal(stop)
    out, err = driver.communicate(timeout=120)
    assert driver.returncode == EXIT_FAILED, err
    assert f"{said} after 1 of 3 cases" in err and "Traceback" not in err
    assert "1 cases: 1 no-baseline" in out  # the summary of what finished
    store = History(history)
    (runs,) = store.case_runs("s0/").values()
    assert [(r.verdict, r.finished) for r in runs] == [("no-baseline", False)]
    assert store.case_runs("s1/") == {} and store.case_runs("s2/") == {}
    store.close()
    # no worker outlives the driver
    _, alive = psutil.wait_procs(workers, timeout=30)
    assert alive == []


def test_sigkill_of_a_worker_fails_that_case_and_the_run_goes_on(tmp_path: Path, write_suite) -> None:
    driver, history = start_run(tmp_path, write_suite, [0.0, 600.0, 0.0])
    wait_for("the first case in the history", lambda: len(recorded_cases(history)) == 1)
    time.sleep(2)
    workers = psutil.Process(driver.pid).children(recursive=True)
    assert workers
    for worker in workers:
        worker.send_signal(signal.SIGKILL)
    out, err = driver.communicate(timeout=300)
    assert driver.returncode == EXIT_FAILED, err
    verdicts = dict(recorded_cases(history))
    assert verdicts == {
        "s0/tiny-gpt/tp1pp1/none[cpu]": "no-baseline",
        "s1/tiny-gpt/tp1pp1/none[cpu]": "error",
        "s2/tiny-gpt/tp1pp1/none[cpu]": "no-baseline",
    }
    assert "exited with code -9" in out
    assert main(["history", "tiny-gpt", "--history", str(history)]) == 0


def test_a_terminal_shows_the_progress_bar(tmp_path: Path, write_suite) -> None:
    import pty
    import re

    suite = write_suite(
        "suite: bar\ncheck: tests.support.fault_checks:SLEEPS\nparams: {seconds: 0.1}\nbudgets: {slept_s: {max: "
        "0.01}}\n"
        "matrix:\n  model: [tiny-gpt]\n",
        "bar.yaml",
    )
    leader, follower = pty.openpty()
    command = [
        sys.executable,
        "-m",
        "harness.cli",
        "run",
        str(suite),
        "--baselines",
        str(tmp_path / "none"),
        "--artifacts",
        str(tmp_path / "artifacts"),
    ]
    driver = subprocess.Popen(
        command,
        cwd=ROOT,
        stdin=follower,
        stdout=follower,
        stderr=follower,
        env={**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "120", "TERM": "xterm"},
    )
    os.close(follower)
    screen = b""
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # the driver exited and closed the terminal
            break
        if not chunk:
            break
        screen += chunk
    driver.wait(timeout=60)
    os.close(leader)
    text = re.sub(r"\x1b\[[0-9;?]*[a-zA-Z]", "", screen.decode(errors="replace"))
    assert "0/1 0 failing" in text and "1/1 1 failing" in text  # slept past its budget: the one case counts as failing
    assert "ETA" in text
