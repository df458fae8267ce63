"""Quantized accuracy: held-out next-token accuracy and perplexity of the model before and after
PTQ, their delta, and (optionally) parity between the quantized model under two layouts.

Run it on a model whose accuracy means something (``tiny-gpt-trained``, or a real checkpoint): on
random weights every delta is noise around chance. The parity metrics catch calibration state that
is not synchronised across tensor-parallel ranks: the same recipe quantized at TP2 and at TP1 must
give the same model.
"""

from __future__ import annotations

import math
import time
from typing import Literal

from pydantic import PositiveInt

from harness.checks.base import Check, CheckContext, LayoutModel, MetricSpec, SecondLayout, StrictModel
from harness.records import INFORMATIONAL, Tolerance

CALIB_STREAM, EVAL_STREAM, PROBE_STREAM = 1, 2, 3  # corpus streams, disjoint from training


class QuantParams(StrictModel):
    eval_batches: PositiveInt = 8
    eval_batch_size: PositiveInt = 16
    eval_seq_len: PositiveInt = 64
    calib_batches: PositiveInt = 8
    calib_batch_size: PositiveInt = 8
    parity_layout: Literal["none"] | LayoutModel = "none"


PARITY = SecondLayout("parity_layout", sentinel="none", separator="~")


def run(ctx: CheckContext) -> dict[str, float]:
    import torch

    from harness.data.corpus import MarkovCorpus
    from harness.evals.lm import score_lm
    from harness.optimizations import get_optimization
    from harness.runtime.distributed import model_parallel
    from harness.runtime.forward import device, forward_logits
    from harness.runtime.quantizers import quantizer_census
    from harness.runtime.train import build_model

    params: QuantParams = ctx.params
    spec, seed = ctx.model, ctx.case.seed
    corpus = MarkovCorpus(spec.vocab_size, spec.recipe.corpus_seed if spec.recipe else 0)

    def batches(stream: int, count: int, size: int, seq: int) -> list[torch.Tensor]:
        return [torch.from_numpy(corpus.sample(size, seq, stream_seed=(stream, i))).to(device()) for i in range(count)]

    evals = batches(EVAL_STREAM, params.eval_batches, params.eval_batch_size, params.eval_seq_len + 1)
    calib = batches(CALIB_STREAM, params.calib_batches, params.calib_batch_size, params.eval_seq_len)
    probe = batches(PROBE_STREAM, 1, 4, params.eval_seq_len)[0]
    optimization = get_optimization(ctx.case.optimization)

    def calibrate(model: torch.nn.Module) -> None:
        for batch in calib:
            forward_logits(model, batch, spec.vocab_size)

    with model_parallel(ctx.case.layout, seed):
        model = build_model(spec, seed=seed)
        base = score_lm(model, evals, spec.vocab_size)
        start = time.perf_counter()
        model = optimization.apply(model, calibrate)
        calibration_s = time.perf_counter() - start
        quant = score_lm(model, evals, spec.vocab_size)
        probe_logits = forward_logits(model, probe, spec.vocab_size)
        census = quantizer_census(model)
        del model
    metrics = {
        "base_accuracy_pct": 100 * base.accuracy,
        "quant_accuracy_pct": 100 * quant.accuracy,
        "accuracy_delta_pts": 100 * (quant.accuracy - base.accuracy),
        "delta_significance_z": (quant.accuracy - base.accuracy) / max(1e-12, math.hypot(base.accuracy_stderr, quant.accuracy_stderr)),
        "base_perplexity": base.perplexity,
        "quant_perplexity": quant.perplexity,
        "accuracy_ceiling_pct": 100 * corpus.best_accuracy,
        "calibration_s": calibration_s,
        "quantizers_enabled": float(census.enabled),
        "kv_quantizers_enabled": float(census.kv_enabled),
    }
    other = PARITY.other(ctx.case.layout, params)
    if other is not None:
        with model_parallel(other, seed):
            twin = optimization.apply(build_model(spec, seed=seed), calibrate)
            twin_quant = score_lm(twin, evals, spec.vocab_size)
            twin_logits = forward_logits(twin, probe, spec.vocab_size)
        metrics["parity_max_abs_logit_diff"] = float((twin_logits - probe_logits).abs().max())
        metrics["parity_accuracy_delta_pts"] = 100 * (quant.accuracy - twin_quant.accuracy)
    return metrics


_POINTS = Tolerance(abs=0.05)  # accuracies in percent: deterministic on CPU, this allows reduction-order noise

CHECK = Check(
    name="quant_accuracy",
    description="held-out accuracy and perplexity before and after PTQ, and quantized parity across layouts",
    params=QuantParams,
    metrics={
        "base_accuracy_pct": MetricSpec("next-token accuracy (%) of the unquantized model", _POINTS),
        "quant_accuracy_pct": MetricSpec("next-token accuracy (%) after quantization", _POINTS),
        "accuracy_delta_pts": MetricSpec("quantized minus base accuracy, in points (negative: lost)", _POINTS),
        "delta_significance_z": MetricSpec("delta / sqrt(se_base^2 + se_quant^2): |z| < 2 is within noise", INFORMATIONAL),
        "base_perplexity": MetricSpec("held-out perplexity before quantization", Tolerance(rel=1e-3)),
        "quant_perplexity": MetricSpec("held-out perplexity after quantization", Tolerance(rel=1e-3)),
        "accuracy_ceiling_pct": MetricSpec("best accuracy any model can reach on the corpus", Tolerance()),
        "calibration_s": MetricSpec("wall time of mtq.quantize incl. calibration (seconds)", INFORMATIONAL),
        "quantizers_enabled": MetricSpec("enabled quantizers (one tensor-parallel replica)", Tolerance()),
        "kv_quantizers_enabled": MetricSpec("enabled KV-cache quantizers (0: the KV format changed nothing)", Tolerance()),
        "parity_max_abs_logit_diff": MetricSpec("max |logits| difference, quantized here vs under parity_layout",
                                                Tolerance(abs=1e-4)),
        "parity_accuracy_delta_pts": MetricSpec("accuracy here minus under parity_layout, in points", _POINTS),
    },
    run=run,
    **PARITY.hooks(),
)
