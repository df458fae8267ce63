"""The quant check on models declared by checkpoint path, through real worker pools: a Hugging Face
Llama written here and imported with modelopt's megatron importer, and the harness's own trained
model read back as a plain megatron torch_dist checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from harness.cli import main
from tests.support.hf_fixtures import write_tiny_llama, write_tiny_qwen3_moe

pytestmark = pytest.mark.e2e

SMALL = "{eval_batches: 2, calib_batches: 2, mmlu: corpus, mmlu_corpus_items: 400%s}"


def quant_suite(name: str, models: str, model: str, layout: str, extra: str = "") -> str:
    return (
        f"suite: {name}\ncheck: quant_accuracy\ntimeout_s: 900\nmodels:\n{models}\nparams: {SMALL % extra}\n"
        f"matrix:\n  model: [{model}]\n  layout: [{layout}]\n  optimization: [fp8]\n"
    )


def run_recording(suite: Path, tmp_path: Path) -> dict[str, dict]:
    artifacts = tmp_path / f"artifacts-{suite.stem}"
    code = main(
        [
            "run",
            str(suite),
            "--baselines",
            str(tmp_path / "baselines"),
            "--artifacts",
            str(artifacts),
            "--update-baselines",
        ]
    )
    assert code == 0
    results = json.loads((artifacts / "results.json").read_text())
    return {case["id"]: {m["name"]: m["measured"] for m in case["metrics"]} for case in results["cases"]}


def test_hugging_face_checkpoint_is_imported_quantized_and_scored(write_suite, tmp_path: Path, capsys) -> None:
    checkpoint = write_tiny_llama(tmp_path / "tiny-llama")
    suite = write_suite(
        quant_suite(
            "hf",
            f"  hf-llama: {{hf: {checkpoint}}}",
            "hf-llama",
            "{tp: 2, pp: 1}",
            ", hf_reference: true, parity_layout: {tp: 1, pp: 1}",
        )
    )
    (metrics,) = run_recording(suite, tmp_path).values()
    print(capsys.readouterr().out)
    # megatron (GQA, SwiGLU, RMSNorm, RoPE) sharded over TP2 computes what transformers computes
    assert metrics["hf_import_max_abs_logit_diff"] < 1e-4
    assert metrics["quantizers_enabled"] > 0
    # quantized at TP2 and at TP1 with synchronised amax: only FP8 rounding flips caused by the
    # reduction order remain (measured 0.016 on logits of magnitude ~1; unsynced scales give more)
    assert metrics["parity_max_abs_logit_diff"] < 0.05
    assert metrics["mmlu_items"] == 400
    assert 0 <= metrics["base_mmlu_pct"] <= 100


def test_hugging_face_mixture_of_experts_is_imported_under_expert_parallelism(write_suite, tmp_path: Path) -> None:
    checkpoint = write_tiny_qwen3_moe(tmp_path / "tiny-qwen3-moe")
    suite = write_suite(
        quant_suite(
            "hf-moe",
            f"  hf-qwen3-moe: {{hf: {checkpoint}}}",
            "hf-qwen3-moe",
            "{tp: 1, pp: 1, ep: 2}",
            ", hf_reference: true, parity_layout: {tp: 1, pp: 1}",
        )
    )
    (metrics,) = run_recording(suite, tmp_path).values()
    # the experts split over two ranks compute what transformers' Qwen3MoeForCausalLM computes (measured 9e-7; with the
    # router's top-k renormalisation mapped the wrong way round, 0.27)
    assert metrics["hf_import_max_abs_logit_diff"] < 1e-4
    assert metrics["expert_quantizers"] == 2 * 4 * 4  # layers x experts x (fc1, fc2) x (input, weight)
    assert metrics["expert_quantizers_uncalibrated"] == 0
    assert metrics["parity_expert_amax_max_rel_diff"] <= 1e-4


def test_torch_dist_checkpoint_scores_exactly_like_the_model_that_wrote_it(write_suite, tmp_path: Path) -> None:
    trained = run_recording(
        write_suite(quant_suite("zoo", "  {}", "tiny-gpt-trained", "{tp: 1, pp: 1}"), "zoo.yaml"), tmp_path
    )
    assert (
        main(["models", "export", "tiny-gpt-trained", str(tmp_path / "ckpt"), "--artifacts", str(tmp_path / "export")])
        == 0
    )
    declared = f"  tiny-dist: {{torch_dist: {tmp_path / 'ckpt'}, like: tiny-gpt}}"
    loaded = run_recording(
        write_suite(quant_suite("dist", declared, "tiny-dist", "{tp: 2, pp: 1}"), "dist.yaml"), tmp_path
    )
    (zoo_metrics,), (dist_metrics,) = trained.values(), loaded.values()
    for name in ("base_accuracy_pct", "base_mmlu_pct", "quant_accuracy_pct"):
        assert dist_metrics[name] == pytest.approx(zoo_metrics[name], abs=0.05), name
    assert zoo_metrics["base_mmlu_pct"] > 45  # the trained model answers its corpus questions far above chance (25)
