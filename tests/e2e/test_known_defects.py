"""Known defects on the real checkpoint suite: a symptom edited so it no longer matches makes the
defective case fail, and a defect entry on a case that passes is flagged FIXED?."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from harness.cli import EXIT_FAILED, main
from tests.conftest import ROOT

pytestmark = pytest.mark.e2e
DEFECTIVE = "ckpt-layernorm/tiny-gpt-layernorm/tp1pp1/int8_sq"
WORKAROUND = "ckpt-layernorm/tiny-gpt-layernorm/tp1pp1/int8_sq+skip_layernorm"


def test_a_mismatched_symptom_fails_and_a_passing_case_is_flagged_fixed(
    write_suite,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    suite = yaml.safe_load((ROOT / "suites" / "ckpt_layernorm.yaml").read_text())
    for entry in suite["known_defects"]:
        if entry["when"] == {"optimization": "int8_sq"}:
            entry["symptom"] = {"quantizers_calibration_lost": {"min": 10}}  # 9 are lost: no longer the symptom
    suite["known_defects"].append(
        {
            "id": "not-really-a-defect",
            "when": {"optimization": "int8_sq+skip_layernorm"},
            "defect": "declared on the workaround variant, which passes",
            "symptom": {"quantizers_calibration_lost": {"min": 1}},
        }
    )
    path = write_suite(yaml.safe_dump(suite), "ckpt_layernorm.yaml")
    artifacts = tmp_path / "artifacts"
    code = main(
        [
            "run",
            str(path),
            "--platform",
            "cpu",
            "-k",
            "tp1pp1 and int8_sq and not bf16",
            "--baselines",
            str(ROOT / "baselines"),
            "--artifacts",
            str(artifacts),
        ]
    )
    out = capsys.readouterr().out
    print(out)
    assert code == EXIT_FAILED
    verdicts = {c["id"]: c["verdict"] for c in json.loads((artifacts / "results.json").read_text())["cases"]}
    assert verdicts == {DEFECTIVE: "fail", WORKAROUND: "xpass"}
    assert f"{DEFECTIVE} [cpu]: fail (not the known defect's symptom: ckpt-layernorm-amax-lost-int8_sq:" in out
    assert "quantizers_calibration_lost: measured 9, baseline 9, tolerance abs 0, budget [-inf, 0] -> fail" in out
    assert (
        f"{WORKAROUND} [cpu]: xpass -- FIXED? the known defect's symptom is gone; remove its known_defects entry" in out
    )
    assert f"FIXED? 1 known defect(s) no longer show their symptom: {WORKAROUND}[cpu]" in out
