"""Speculative decoding speed end to end: a healthy baseline, then a 20% slower draft-then-verify loop that must
fail its case (pytest-benchmark's table and files on the way)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tests.support.fault_checks import SLOWDOWN

SUITE = """suite: spec
check: {check}
timeout_s: 900
# the suite's tight tier (suites/spec.yaml): four prompts per timed pass (two gave a shared CI machine +-5%
# in 60 pairs), up to 60 pairs
budgets: {{speedup_ci_half_width: {{max: 0.1}}}}
matrix:
  model: [tiny-gpt-trained]
  algorithm: [medusa]
  draft_steps: [2]
  train_steps: [150]
"""


@pytest.mark.e2e
def test_a_twenty_percent_slower_draft_path_fails_its_case(
    pytester: pytest.Pytester, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A healthy run under pytest records the baseline and shows the case in pytest-benchmark's table
    and JSON; the same case with its speculative loop 20% slower (tests.support.fault_checks:SLOWER_SPEC)
    must then fail on the speedup, naming baseline, measured value and tolerance. The verdict widens the 5%
    requirement by both runs' 95% intervals (their hypot), so on a shared machine (+-3.5% and +-4.6% seen in
    CI) a 10% drop is honestly "not sure"; the 10% catch is the sensitivity self-test's (spec-draft-loop-10pct)."""
    from harness.cli import main

    baselines, storage = tmp_path / "baselines", tmp_path / "benchmarks"
    (pytester.path / "suites").mkdir()
    (pytester.path / "suites" / "spec.yaml").write_text(SUITE.format(check="spec_decode"))
    pytester.makeini("[pytest]\ntestpaths = suites\n")
    healthy = pytester.runpytest_subprocess(
        "-p",
        "no:cacheprovider",
        "-m",
        "cpu",
        "--harness-update-baselines",
        "--harness-baselines",
        str(baselines),
        "--harness-artifacts",
        str(tmp_path / "healthy"),
        "--benchmark-json",
        str(tmp_path / "healthy.json"),
        "--benchmark-autosave",
        "--benchmark-storage",
        str(storage),
        "--benchmark-columns",
        "median,rounds",
    )
    assert healthy.ret == 0, healthy.stdout.str()
    healthy.stdout.fnmatch_lines(
        ["*- benchmark 'spec/tiny-gpt-trained/tp1pp1/medusa-k2-t150/none[[]cpu[]]': 2 tests -*"]
    )
    table = healthy.stdout.str().partition("- benchmark 'spec/")[2]
    assert "medusa-k2-t150/none[autoregressive]" in table and "medusa-k2-t150/none[speculative]" in table
    cases = json.loads((tmp_path / "healthy" / "results.json").read_text())["cases"]
    base = {m["name"]: m["measured"] for m in cases[0]["metrics"]}
    # +-2% is the aim, not a promise: this test's budget is +-10%, the verdict it tests the 5% speedup tolerance.
    assert base["speedup_ci_half_width"] <= 0.1 and base["lossless_mismatches"] == 0
    saved = json.loads((tmp_path / "healthy.json").read_text())["benchmarks"]
    assert [len(b["stats"]["data"]) for b in saved] == [base["timing_pairs"]] * 2

    mutated_suite = tmp_path / "mutated" / "suites" / "spec.yaml"
    mutated_suite.parent.mkdir(parents=True)
    mutated_suite.write_text(SUITE.format(check="tests.support.fault_checks:SLOWER_SPEC"))
    artifacts = tmp_path / "slower"
    monkeypatch.chdir(ROOT)  # the ranks import the mutated check from this checkout (pytester moved to its own folder)
    code = main(
        [
            "run",
            str(mutated_suite),
            "--platform",
            "cpu",
            "--baselines",
            str(baselines),
            "--artifacts",
            str(artifacts),
            "--benchmark-storage",
            str(storage),
        ]
    )
    assert code == 1
    case = json.loads((artifacts / "results.json").read_text())["cases"][0]
    metrics = {m["name"]: m for m in case["metrics"]}
    assert case["verdict"] == "fail" and metrics["speedup"]["verdict"] == "fail", metrics["speedup"]
    assert metrics["lossless_mismatches"]["measured"] == 0  # slower, still correct
    assert 0.75 < metrics["speedup"]["measured"] / base["speedup"] < 1 / (1 + SLOWDOWN) + 0.04
    assert json.loads((artifacts / "benchmarks.json").read_text())["benchmarks"][1]["name"].endswith("[speculative]")
    compare = subprocess.run(
        [sys.executable, "-m", "pytest_benchmark", "--storage", str(storage), "compare", "--columns", "median"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert compare.returncode == 0 and "(0001" in compare.stdout and "(0002" in compare.stdout, (
        compare.stdout + compare.stderr
    )
