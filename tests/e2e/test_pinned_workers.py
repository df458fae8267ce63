"""Pinned CPU numerics end to end: workers compute under the pins whatever the host, and results say on what."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from harness.cli import main
from tests.conftest import CPU_ENV


@pytest.mark.e2e
def test_workers_compute_pinned_and_results_say_on_what(
    write_suite,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    suite = write_suite(
        "suite: numerics\ncheck: tests.support.fault_checks:NUMERICS\nmatrix:\n  model: [tiny-gpt]\n"
        "  layout: [{tp: 1, pp: 1}, {tp: 2, pp: 1}]\n",
        "numerics.yaml",
    )
    artifacts = tmp_path / "artifacts"
    # an empty baseline folder: this environment has no baselines, the run says so once and passes
    assert main(["run", str(suite), "--baselines", str(tmp_path / "none"), "--artifacts", str(artifacts)]) == 0
    captured = capsys.readouterr()
    assert captured.err.count(f"no baselines for environment {CPU_ENV}") == 1
    results = json.loads((artifacts / "results.json").read_text())
    measured = {c["id"]: {m["name"]: m["measured"] for m in c["metrics"]} for c in results["cases"]}
    # every case also reports its largest rank's peak resident memory (a worker process: hundreds of MiB)
    assert all(100 < case.pop("peak_memory_mib") < 8192 for case in measured.values())
    assert measured == {
        "numerics/tiny-gpt/tp1pp1/none": {"threads": 2.0, "avx2_kernels": 1.0},
        "numerics/tiny-gpt/tp2pp1/none": {"threads": 1.0, "avx2_kernels": 1.0},
    }
    assert {c["verdict"] for c in results["cases"]} == {"no-baseline"}
    provenance = results["provenance"]
    assert provenance["environments"]["cpu"] == CPU_ENV and provenance["cpu_model"]
    assert provenance["cpu_pins"]["ATEN_CPU_CAPABILITY"] == "avx2" and "avx2" in provenance["cpu_isa_flags"]
    # then --update-baselines records this environment's set, and the next run is judged against it
    assert (
        main(
            [
                "run",
                str(suite),
                "--baselines",
                str(tmp_path / "none"),
                "--artifacts",
                str(artifacts),
                "--update-baselines",
            ]
        )
        == 0
    )
    assert (tmp_path / "none" / CPU_ENV / "numerics.json").exists()
    assert main(["baselines", "--baselines", str(tmp_path / "none"), str(suite)]) == 0
    assert (
        f"{CPU_ENV}: 2 cases recorded, 2 of the 2 cpu cases of the suites  <- this machine" in capsys.readouterr().out
    )
