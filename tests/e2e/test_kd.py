"""The recorded KD trajectory is a real baseline: changing the distillation temperature in the suite
fails the case step by step, naming each step's measured value, baseline and tolerance."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from harness.cli import EXIT_FAILED, main
from tests.conftest import ROOT

pytestmark = pytest.mark.e2e


def test_a_perturbed_temperature_fails_the_trajectory_at_every_step(tmp_path: Path, capsys) -> None:
    # Step-exact goldens judge only on the fingerprint that recorded them: record this machine's first, so
    # the test holds on any CPU (elsewhere the committed baselines judge the final-window statistics only).
    suites = tmp_path / "suites"
    suites.mkdir()
    original = (ROOT / "suites" / "kd_trajectory.yaml").read_text()
    select = [
        "-k",
        "not tp2pp1 and not tp1pp2 and not bf16",
        "--platform",
        "cpu",
        "--baselines",
        str(tmp_path / "baselines"),
    ]
    (suites / "kd_trajectory.yaml").write_text(original)
    assert (
        main(
            [
                "run",
                str(suites / "kd_trajectory.yaml"),
                *select,
                "--update-baselines",
                "--artifacts",
                str(tmp_path / "recorded"),
            ]
        )
        == 0
    )
    (suites / "kd_trajectory.yaml").write_text(original.replace("temperature: 2.0", "temperature: 2.5"))
    capsys.readouterr()
    artifacts = tmp_path / "artifacts"
    code = main(["run", str(suites / "kd_trajectory.yaml"), *select, "--artifacts", str(artifacts)])
    out = capsys.readouterr().out
    assert code == EXIT_FAILED
    assert "kd-trajectory/tiny-gpt-student/tp1pp1/logits+cosine-t2/none [cpu]: fail" in out
    failing_steps = re.findall(r"^  kd_loss@(\d{3}): measured \S+, baseline \S+, tolerance [^\n]* -> fail$", out, re.M)
    assert failing_steps[:3] == ["001", "002", "003"] and len(failing_steps) == 30
    (case,) = json.loads((artifacts / "results.json").read_text())["cases"]
    assert case["verdict"] == "fail"
