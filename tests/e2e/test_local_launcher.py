"""Real worker pools: hung, crashed and failing cases are reported as that case's error, the
worker process group is killed, and the other cases of the run still pass."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import pytest

from harness.cli import EXIT_FAILED, main
from tests.conftest import CPU_ENV, ROOT
from tests.support.fault_checks import fault_suite

pytestmark = pytest.mark.e2e


def run_cli(args: list[str], tmp_path: Path, baselines: Path) -> tuple[int, dict]:
    artifacts = tmp_path / "artifacts"
    code = main(["run", *args, "--baselines", str(baselines), "--artifacts", str(artifacts)])
    return code, json.loads((artifacts / "results.json").read_text())


def test_hung_crashed_and_raising_cases_do_not_stop_the_run(write_suite, tmp_path: Path, capsys) -> None:
    suites = [
        write_suite(fault_suite("hangs", "SLEEPS", seconds=600, timeout_s=5), "hangs.yaml"),
        write_suite(fault_suite("crashes", "CRASHES", seconds=0, timeout_s=60), "crashes.yaml"),
        write_suite(fault_suite("raises", "RAISES", seconds=0, timeout_s=60), "raises.yaml"),
        write_suite(fault_suite("sleeps", "SLEEPS", seconds=0.5, timeout_s=60), "sleeps.yaml"),
    ]
    baselines = tmp_path / "baselines"
    (baselines / CPU_ENV).mkdir(parents=True)
    (baselines / CPU_ENV / "sleeps.json").write_text(
        json.dumps(
            {"format": 1, "cases": {"sleeps/tiny-gpt/tp2pp1/none": {"metrics": {"slept_s": 0.5}, "provenance": {}}}}
        )
    )
    code, results = run_cli([str(s) for s in suites], tmp_path, baselines)
    out = capsys.readouterr().out
    assert code == EXIT_FAILED
    verdicts = {c["id"]: c["verdict"] for c in results["cases"]}
    assert verdicts == {
        "hangs/tiny-gpt/tp2pp1/none": "error",
        "crashes/tiny-gpt/tp2pp1/none": "error",
        "raises/tiny-gpt/tp2pp1/none": "error",
        "sleeps/tiny-gpt/tp2pp1/none": "pass",
    }
    errors = {c["id"].split("/")[0]: c["error"] for c in results["cases"]}
    assert "timed out after 5 s" in errors["hangs"]
    assert "exited with code 3" in errors["crashes"]
    assert "RuntimeError: deliberate failure in raises/tiny-gpt/tp2pp1/none" in errors["raises"]
    assert "slept_s: measured 0.5, baseline 0.5" in out
    # the hung pool's whole process group is gone
    group = int(re.search(r"worker process group (\d+) killed", errors["hangs"]).group(1))
    with pytest.raises(ProcessLookupError):
        os.killpg(group, 0)
    # the run history holds every case, errors included, with the run marked finished
    from harness.reports.history import History

    history = History(tmp_path / "artifacts" / "history.sqlite")
    recorded = {key.split("/")[0]: runs[-1] for key, runs in history.case_runs("/tiny-gpt/").items()}
    history.close()
    assert {name: (run.verdict, run.finished) for name, run in recorded.items()} == {
        "hangs": ("error", True),
        "crashes": ("error", True),
        "raises": ("error", True),
        "sleeps": ("pass", True),
    }
    assert recorded["sleeps"].metrics["slept_s"] == (0.5, 0.5)


def edited_baselines(tmp_path: Path, suite: str, case_id: str, metric: str, change: float) -> tuple[Path, float]:
    """A copy of the recorded baselines with one value moved by ``change``; returns it and the old value."""
    baselines = tmp_path / "baselines"
    shutil.copytree(ROOT / "baselines", baselines)
    path = baselines / CPU_ENV / f"{suite}.json"
    data = json.loads(path.read_text())
    recorded = data["cases"][case_id]["metrics"][metric]
    data["cases"][case_id]["metrics"][metric] = recorded + change
    path.write_text(json.dumps(data))
    return baselines, recorded


def test_editing_one_baseline_fails_exactly_that_case(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    victim = "ckpt/tiny-gpt/tp2pp1->tp1pp1/int4_awq"
    baselines, _ = edited_baselines(tmp_path, "ckpt", victim, "quantizers_enabled", 1)
    code, results = run_cli(
        [str(ROOT / "suites" / "ckpt.yaml"), "--platform", "cpu", "-k", "tp2pp1 and int4_awq"], tmp_path, baselines
    )
    out = capsys.readouterr().out
    verdicts = {c["id"]: c["verdict"] for c in results["cases"]}
    assert verdicts == {
        victim: "fail",
        "ckpt/tiny-gpt/tp2pp1/int4_awq": "pass",
        "ckpt/tiny-gpt/tp1pp1->tp2pp1/int4_awq": "pass",
    }
    assert code == EXIT_FAILED
    assert f"{victim} [cpu]: fail" in out
    assert re.search(r"^  quantizers_enabled: measured 16, baseline 17, tolerance abs 0\b.* -> fail$", out, re.M)
    assert f"artifacts: {tmp_path / 'artifacts'}" in out


def test_a_tighter_recorded_delta_fails_that_format(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    victim = "quant/tiny-gpt-trained/tp1pp1/int8_sq"
    # the recorded delta now claims int8_sq used to lose 0.5 points less than it does
    baselines, recorded = edited_baselines(tmp_path, "quant", victim, "accuracy_delta_pts", 0.5)
    code, results = run_cli(
        [
            str(ROOT / "suites" / "quant.yaml"),
            "--platform",
            "cpu",
            "-k",
            "not tp2 and not bf16 and (int8_sq or int4_awq)",
        ],
        tmp_path,
        baselines,
    )
    out = capsys.readouterr().out
    assert {c["id"]: c["verdict"] for c in results["cases"]} == {
        victim: "fail",
        "quant/tiny-gpt-trained/tp1pp1/int4_awq": "pass",
    }
    assert code == EXIT_FAILED
    assert re.search(
        rf"^  accuracy_delta_pts: measured {recorded:.6g}, baseline {recorded + 0.5:.6g}, tolerance .* -> fail$",
        out,
        re.M,
    )


def test_warm_workers_do_not_leak_process_groups(tmp_path: Path) -> None:
    """Each case creates megatron's ~20 groups; a warm worker must free them (threads stay flat)."""
    from harness.launchers.local import LocalLauncher
    from harness.suites.expand import Resources, expand
    from harness.suites.load import load_suites

    cases = [
        c
        for c in expand(load_suites([ROOT / "suites" / "ckpt.yaml"]), Resources(cpu_ranks=2, gpus=0))
        if c.platform == "cpu" and c.world_size == 2 and c.optimization == "none"
    ]
    launcher = LocalLauncher(tmp_path / "artifacts")
    try:
        counts = []
        for case in cases:
            assert launcher.launch(case).error is None
            pids = [proc.pid for proc in launcher.pools[("cpu", 2)].procs]
            counts.append(
                [int(Path(f"/proc/{pid}/status").read_text().split("Threads:")[1].split()[0]) for pid in pids]
            )
    finally:
        launcher.close()
    assert len(counts) >= 4
    assert counts[-1] == counts[1], counts  # after the first case's one-off threads, no growth
