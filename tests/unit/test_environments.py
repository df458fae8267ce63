"""Portable verdicts: shipped subjects (hash-checked, never retrained), pinned CPU numerics in the
workers, baselines keyed by environment, and runs in an environment without baselines."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from harness.baselines import BaselineStore, compare
from harness.cli import EXIT_FAILED, EXIT_USAGE, main
from harness.environment import THREADS_PER_WORLD, can_pin, cpu_environment, cpu_model, environment, gpu_environment
from harness.launchers.common import rank_environment
from harness.models.subjects import Manifest, SubjectError, manifest, subjects_root
from harness.models.zoo import ZOO
from harness.records import Budget, CaseOutcome, Tolerance, Verdict
from tests.conftest import ROOT
from tests.support.cases import make_case


@pytest.fixture
def tampered(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A copy of the shipped subjects whose tiny-gpt-trained lost one byte's worth of agreement."""
    copy = tmp_path / "subjects"
    shutil.copytree(subjects_root(), copy)
    target = copy / manifest().entry("tiny-gpt-trained")["file"]
    data = bytearray(target.read_bytes())
    data[-1] ^= 0x01  # one bit of the last weight
    target.write_bytes(bytes(data))
    monkeypatch.setenv("HARNESS_SUBJECTS", str(copy))
    return copy


def test_every_shipped_subject_matches_its_manifest(capsys: pytest.CaptureFixture[str]) -> None:
    assert manifest().problems() and all(problem is None for problem in manifest().problems().values())
    assert main(["models", "verify"]) == 0
    assert "tiny-gpt-trained  sha256" in capsys.readouterr().out


def test_a_subject_whose_hash_differs_is_refused_not_retrained(
    tampered: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SubjectError, match=r"tiny-gpt-trained: .* has sha256 .*the manifest says"):
        Manifest(tampered).verified_file("tiny-gpt-trained")
    assert main(["models", "verify"]) == EXIT_FAILED
    assert "MISMATCH" in capsys.readouterr().out
    # a run that needs it stops before any worker starts, naming the subject and what to do
    code = main(
        [
            "run",
            str(ROOT / "suites" / "quant.yaml"),
            "-k",
            "tp1pp1 and int8_sq and not kv",
            "--platform",
            "cpu",
            "--artifacts",
            str(tampered.parent / "artifacts"),
        ]
    )
    err = capsys.readouterr().err
    assert code == EXIT_USAGE
    assert "quant/tiny-gpt-trained/tp1pp1/int8_sq: subject tiny-gpt-trained" in err and "nothing was run" in err
    assert not (tampered.parent / "artifacts" / "results.json").exists()


def test_a_changed_recipe_is_refused_until_the_subject_is_rebuilt() -> None:
    from harness.runtime.subject import shipped_file

    with pytest.raises(
        SubjectError, match=r"was built by recipe .* rebuild it with `harness models build tiny-gpt-trained`"
    ):
        shipped_file("tiny-gpt-trained", {"steps": 1})


def test_a_subject_nobody_built_says_how_to_build_it() -> None:
    with pytest.raises(
        SubjectError, match=r"no shipped subject 'tiny-gpt-trained\+medusa-k9-t5'.*harness models build"
    ):
        manifest().verified_file("tiny-gpt-trained+medusa-k9-t5")


def test_cpu_ranks_run_pinned_numerics_whatever_the_host(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("os.cpu_count", lambda: 96)  # a big host must not get more threads per rank
    for world in (1, 2):
        variables = rank_environment("cpu", world)
        assert variables["OMP_NUM_THREADS"] == variables["MKL_NUM_THREADS"] == str(max(1, THREADS_PER_WORLD // world))
        assert variables["ATEN_CPU_CAPABILITY"] == "avx2" and variables["MKL_CBWR"] == "COMPATIBLE"
        assert variables["ONEDNN_MAX_CPU_ISA"] == "AVX2" and variables["CUDA_VISIBLE_DEVICES"] == ""


@pytest.mark.skipif(not can_pin(), reason="the x86 pins apply on x86-64 hosts with AVX2 only")
def test_mkl_runs_the_pinned_branch_on_this_cpu_vendor() -> None:
    """MKL honours some CBWR branches on Intel CPUs only (AVX2 became AUTO on an AMD EPYC): the pinned
    one must be the one MKL reports running, whatever the vendor."""
    env = {**os.environ, **rank_environment("cpu", 1), "MKL_VERBOSE": "1"}
    code = "import torch; torch.ones(64, 64) @ torch.ones(64, 64)"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    modes = set(re.findall(r"CNR:(\w+)", out))
    assert modes == {env["MKL_CBWR"]}, f"MKL ran CNR modes {modes}, the pin asks {env['MKL_CBWR']} ({cpu_model()})"


def test_environments_name_the_platform_and_the_gpu_model() -> None:
    assert cpu_environment() == environment("cpu", None) == "cpu-x86_64-avx2"
    assert gpu_environment("NVIDIA H100 80GB HBM3") == "gpu-nvidia-h100-80gb-hbm3"
    assert environment("gpu", "NVIDIA H200") == "gpu-nvidia-h200"


def _judged(tmp_path: Path, metrics: dict[str, float], environments: dict[str, str]) -> tuple:
    budgets = {"lost": Budget(max=0.0)}
    case = replace(make_case(), budgets=budgets, tolerances={"x": Tolerance(abs=0.1)})
    store = BaselineStore(tmp_path, environments)
    return compare(CaseOutcome(case, metrics, None, 1.0, "/a"), store, update=False, provenance={}), case, store


def test_an_environment_without_baselines_judges_invariants_only(tmp_path: Path) -> None:
    fresh = {"cpu": "cpu-riscv64-native"}
    result, _, _ = _judged(tmp_path, {"x": 5.0, "lost": 0.0}, fresh)
    assert result.verdict is Verdict.NO_BASELINE and result.ok and result.new_environment
    assert {m.name: m.verdict for m in result.metrics} == {"lost": Verdict.PASS, "x": Verdict.NO_BASELINE}
    assert "environment cpu-riscv64-native has no baselines yet" in result.message()
    broken, _, _ = _judged(tmp_path, {"x": 5.0, "lost": 2.0}, fresh)  # an invariant fails in any environment
    assert broken.verdict is Verdict.FAIL and not broken.ok


def test_baselines_live_per_environment_and_record_the_subjects(tmp_path: Path) -> None:
    here = {"cpu": "cpu-x86_64-avx2"}
    case = replace(make_case(), model="tiny-gpt-trained", model_spec=ZOO["tiny-gpt-trained"])
    store = BaselineStore(tmp_path, here)
    compare(CaseOutcome(case, {"x": 1.0}, None, 1.0, "/a"), store, update=True, provenance={"cpu_model": "test"})
    saved = json.loads((tmp_path / "cpu-x86_64-avx2" / "s.json").read_text())
    entry = saved["cases"][case.id]["provenance"]
    assert saved["environment"] == entry["environment"] == "cpu-x86_64-avx2"
    assert entry["subjects"] == {"tiny-gpt-trained": manifest().expected_hash("tiny-gpt-trained")}
    # a baseline that was measured on other weights cannot judge the case: a clear error, not a verdict
    saved["cases"][case.id]["provenance"]["subjects"]["tiny-gpt-trained"] = "0" * 64
    (tmp_path / "cpu-x86_64-avx2" / "s.json").write_text(json.dumps(saved))
    stale = compare(CaseOutcome(case, {"x": 1.0}, None, 1.0, "/a"), store, update=False, provenance={})
    assert stale.verdict is Verdict.ERROR and "measured on subject tiny-gpt-trained sha256 0000" in stale.message()
    # and another environment does not see this one's baselines
    other = compare(
        CaseOutcome(case, {"x": 1.0}, None, 1.0, "/a"),
        BaselineStore(tmp_path, {"cpu": "cpu-aarch64-native"}),
        False,
        {},
    )
    assert other.verdict is Verdict.NO_BASELINE and other.new_environment
