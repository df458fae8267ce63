"""`harness noise` end to end: real workers under real variations, a record beside the baselines, and the
comparison step widening exactly the tolerances the record says moved."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.conftest import CPU_ENV, ROOT

CASE = "quant/tiny-gpt-trained/tp1pp1/fp8[cpu]"


@pytest.mark.e2e
def test_a_noise_study_records_each_variation_and_the_run_is_judged_by_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from harness.cli import main

    baselines = tmp_path / "baselines"
    shutil.copytree(ROOT / "baselines" / CPU_ENV, baselines / CPU_ENV)
    (baselines / CPU_ENV / "quant.noise.json").unlink(missing_ok=True)
    monkeypatch.chdir(ROOT)
    common = ["-k", CASE, "--baselines", str(baselines)]
    # this machine's baseline first: the study reuses it as its reference, as a study on the recording machine does
    assert main(["run", *common, "--update-baselines", "--artifacts", str(tmp_path / "recorded")]) == 0
    study = ["noise", *common, "--reference", "baseline", "--artifacts", str(tmp_path / "noise")]
    assert main([*study, "--variations", "repeat,unpinned"]) == 0
    path = baselines / CPU_ENV / "quant.noise.json"
    record = json.loads(path.read_text())["cases"]["quant/tiny-gpt-trained/tp1pp1/fp8"]
    assert record["variations"] == ["reference", "repeat", "unpinned"] and not record["errors"]
    metrics = record["metrics"]
    # the pinned repeat is bit-identical; the unpinned kernels (AVX-512, MKL's own branch) move the fp32 logits
    assert all(m["deviation_repeat"] == 0 for name, m in metrics.items() if not name.endswith(("_s", "_mib")))
    assert any(
        m["deviation_all"] > 0
        for name, m in metrics.items()
        if name.startswith(("kld", "base_perplexity", "layer_sqnr"))
    )
    assert main(["run", *common, "--artifacts", str(tmp_path / "run")]) == 0
    judged = {m["name"]: m for m in json.loads((tmp_path / "run" / "results.json").read_text())["cases"][0]["metrics"]}
    assert judged["kld_mean"]["note"].startswith("noise band 0 on its fingerprint")
    assert judged["kld_mean"]["tolerance"]["abs"] == 0

    # a held-out run under another variation joins the record afterwards, without running it again
    assert main(["run", *common, "--variation", "threads", "--artifacts", str(tmp_path / "held")]) in (0, 1)
    held = {
        m["name"]: m["measured"]
        for m in json.loads((tmp_path / "held" / "results.json").read_text())["cases"][0]["metrics"]
    }
    assert (
        main(
            [
                *study,
                "--variations",
                "",
                "--repeats",
                "0",
                "--add",
                "--from-run",
                str(tmp_path / "held" / "results.json"),
            ]
        )
        == 0
    )
    grown = json.loads(path.read_text())["cases"]["quant/tiny-gpt-trained/tp1pp1/fp8"]
    assert grown["variations"] == ["reference", "repeat", "unpinned", "threads"]
    assert grown["metrics"]["kld_mean"]["samples"]["threads"] == held["kld_mean"]
    assert grown["metrics"]["kld_mean"]["samples"]["unpinned"] == metrics["kld_mean"]["samples"]["unpinned"]
