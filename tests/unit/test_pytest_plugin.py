"""Suite cases as pytest items: selection by marker and keyword, GPU cases skip with a reason."""

from __future__ import annotations

import shutil

import pytest

from harness.models.zoo import ZOO
from tests.conftest import ROOT


@pytest.fixture
def project(pytester: pytest.Pytester) -> pytest.Pytester:
    shutil.copytree(ROOT / "suites", pytester.path / "suites")
    pytester.makeini("[pytest]\ntestpaths = suites\n")
    return pytester


def collected(result: pytest.RunResult) -> list[str]:
    return [line.strip() for line in result.outlines if "[cpu]" in line or "[gpu]" in line]


def test_marker_selection(project: pytest.Pytester) -> None:
    result = project.runpytest_subprocess(
        "--collect-only", "-q", "-m", "ckpt and tp2 and cpu", "-p", "no:cacheprovider"
    )
    ids = collected(result)
    assert ids and all("tp2" in i for i in ids)
    suites = ("ckpt", "ckpt_layernorm", "ckpt_moe", "ckpt_parallel", "ckpt_mamba", "ckpt_llama")
    by_suite = {suite: sum(i.startswith(f"suites/{suite}.yaml::") for i in ids) for suite in suites}
    # ckpt: tp2pp1, tp2pp1->tp1pp1, tp1pp1->tp2pp1 for each of three optimizations in fp32 and two in bf16;
    # ckpt_layernorm: tp2pp1 x four (fp32 only); ckpt_moe: tp2pp1sp (sequence parallel) x three; ckpt_parallel:
    # tp2pp1sp, ->tp2pp1, ->tp1pp1 x two; ckpt_mamba: tp2pp1->tp1pp1, and tp2pp1 and ->tp1pp1 in fp8 (they skip on CPU);
    # ckpt_llama: tp2pp1, ->tp1pp1, tp1pp1->tp2pp1 x two
    assert (
        by_suite
        == {
            "ckpt": 15,
            "ckpt_layernorm": 4,
            "ckpt_moe": 3,
            "ckpt_parallel": 6,
            "ckpt_mamba": 3,
            "ckpt_llama": 6,
        }
        and len(ids) == 37
    )
    result = project.runpytest_subprocess(
        "--collect-only", "-q", "-m", "ckpt and pp2 and int4_awq and cpu", "-p", "no:cacheprovider"
    )
    assert sorted(collected(result)) == [
        "suites/ckpt.yaml::ckpt/tiny-gpt/tp1pp2->tp1pp1/int4_awq[cpu]",
        "suites/ckpt.yaml::ckpt/tiny-gpt/tp1pp2/int4_awq[cpu]",
    ]


def test_gpu_case_skips_with_reason_and_bad_suite_is_a_clear_collection_error(project: pytest.Pytester) -> None:
    (project.path / "suites" / "gpu.yaml").write_text(
        "suite: gpu\ncheck: ckpt_roundtrip\nplatforms: [gpu]\nmatrix:\n  model: [tiny-gpt]\n"
    )
    result = project.runpytest_subprocess("-rs", "-m", "gpu", "-p", "no:cacheprovider")
    result.stdout.fnmatch_lines(["*SKIPPED*GPU case: no CUDA device on this machine*"])
    (project.path / "suites" / "bad.yaml").write_text("suite: bad\ncheck: ckpt_roundtrip\nmatrix:\n  model: [gpt-9]\n")
    result = project.runpytest_subprocess("--collect-only", "-q", "-p", "no:cacheprovider")
    result.stdout.fnmatch_lines(
        [f"*/suites/bad.yaml:4: matrix.model[[]0[]]: unknown model 'gpt-9'; known: {', '.join(ZOO)}"]
    )
    assert "Traceback" not in result.stdout.str()
