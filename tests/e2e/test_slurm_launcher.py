"""``harness run --launcher slurm`` against a real Slurm cluster started on this host (one node, and
two slurmd "nodes"): the ckpt suite passes as it does locally, TP=2 metrics match the local launcher
exactly, failed and hung cases are reported with their job, and Ctrl-C cancels the jobs."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.cli import EXIT_FAILED, main
from tests.conftest import CPU_ENV, ROOT, measured_cases, wait_for
from tests.support.fault_checks import fault_suite
from tests.support.slurm_cluster import local_cluster, missing, queued

pytestmark = pytest.mark.e2e
REQUIRED = bool(os.environ.get("HARNESS_REQUIRE_SLURM"))


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    why = (
        f"{', '.join(missing())} not installed (apt-get install slurm-wlm munge)"
        if missing()
        else "the local cluster's daemons need root"
        if os.geteuid() != 0
        else None
    )
    if why:
        assert not REQUIRED, f"HARNESS_REQUIRE_SLURM is set but {why}"
        pytest.skip(why)
    folder = tmp_path_factory.mktemp("slurm")
    with local_cluster(folder, nodes=2) as env, pytest.MonkeyPatch.context() as patch:
        patch.setenv("SLURM_CONF", env["SLURM_CONF"])
        yield folder


@pytest.mark.parametrize("nodes", [1, 2])
def test_ckpt_suite_under_slurm_passes_like_the_local_launcher(
    cluster: Path, local_tp2: dict, tmp_path: Path, nodes: int, capsys: pytest.CaptureFixture[str]
) -> None:
    artifacts = tmp_path / "artifacts"
    code = main(
        [
            "run",
            str(ROOT / "suites" / "ckpt.yaml"),
            "--platform",
            "cpu",
            "-m",
            "fp32",
            "--launcher",
            "slurm",
            "--nodes",
            str(nodes),
            "--artifacts",
            str(artifacts),
        ]
    )
    out = capsys.readouterr().out
    assert code == 0
    found = measured_cases(artifacts / "results.json")
    assert len(found) == 18 and {verdict for verdict, _ in found.values()} == {"pass"}
    assert len(local_tp2) == 2
    for case_id, local in local_tp2.items():
        assert found[case_id] == local, case_id  # bit-identical to the local launcher's ranks
    # the world-2 jobs ran as 2 tasks on one node, or 1 task on each of two nodes, and completed
    jobs = re.findall(r"slurm job (\d+): \d+ case\(s\), world size 2", out)
    assert jobs
    ran = {
        m[0]: (m[1], m[2])
        for m in re.findall(r"JobId=(\d+) .*?JobState=(\S+) .*?NodeList=(\S+)", (cluster / "jobcomp.txt").read_text())
    }
    for job in jobs:
        state, nodelist = ran[job]
        assert state == "COMPLETED" and (nodelist == "node[1-2]" if nodes == 2 else nodelist in ("node1", "node2")), (
            job,
            state,
            nodelist,
        )


def test_failed_and_hung_cases_report_their_job_and_the_run_goes_on(cluster: Path, write_suite, tmp_path: Path) -> None:
    suites = [
        write_suite(fault_suite("raises", "RAISES", 0, 60), "raises.yaml"),
        write_suite(fault_suite("hangs", "SLEEPS", 600, 5), "hangs.yaml"),
        write_suite(fault_suite("sleeps", "SLEEPS", 0.5, 60), "sleeps.yaml"),
    ]
    baselines = tmp_path / "baselines"
    (baselines / CPU_ENV).mkdir(parents=True)
    (baselines / CPU_ENV / "sleeps.json").write_text(
        json.dumps(
            {"format": 1, "cases": {"sleeps/tiny-gpt/tp2pp1/none": {"metrics": {"slept_s": 0.5}, "provenance": {}}}}
        )
    )
    artifacts = tmp_path / "artifacts"
    code = main(
        ["run", *map(str, suites), "--launcher", "slurm", "--baselines", str(baselines), "--artifacts", str(artifacts)]
    )
    assert code == EXIT_FAILED
    cases = {c["id"].split("/")[0]: c for c in json.loads((artifacts / "results.json").read_text())["cases"]}
    assert {name: c["verdict"] for name, c in cases.items()} == {"raises": "error", "hangs": "error", "sleeps": "pass"}
    raised = cases["raises"]["error"]
    assert "RuntimeError: deliberate failure in raises/tiny-gpt/tp2pp1/none" in raised
    assert re.search(r"slurm job \d+ \(CANCELLED", raised) and "--- job log" in raised
    log_tail = raised.split("--- job log", 1)[1]
    assert "RuntimeError: deliberate failure" in log_tail and "CANCELLED AT" in log_tail
    hung = cases["hangs"]["error"]
    assert "timed out after 5 s; job cancelled" in hung and re.search(r"slurm job \d+ \(CANCELLED", hung)
    wait_for("an empty queue", lambda: not queued(), timeout_s=60)


def test_ctrl_c_cancels_the_running_job(cluster: Path, write_suite, tmp_path: Path) -> None:
    suite = write_suite(fault_suite("long", "SLEEPS", 600, 900), "long.yaml")
    artifacts = tmp_path / "artifacts"
    driver = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "harness.cli",
            "run",
            str(suite),
            "--launcher",
            "slurm",
            "--baselines",
            str(tmp_path / "none"),
            "--artifacts",
            str(artifacts),
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    wait_for(
        "the case to start (or the driver to die)",
        lambda: driver.poll() is not None or bool(list(artifacts.glob("_jobs/*/0000.rank*.started"))),
        timeout_s=180,
    )
    assert driver.poll() is None, "the driver died before its case started"
    assert queued()
    driver.send_signal(signal.SIGINT)
    _, err = driver.communicate(timeout=120)
    assert driver.returncode == EXIT_FAILED, err
    assert "interrupted after 0 of 1 cases" in err
    wait_for("an empty queue", lambda: not queued(), timeout_s=60)
