"""Distributed-checkpoint round trip: build -> optimize -> save (torch_dist + modelopt state) ->
rebuild under the reload layout with different random weights -> restore -> compare.

A quantized model must come back quantized: the quantizer census (enabled, calibrated) is a
metric, so a restore that silently drops quantizer state fails even when logits look close.
"""

from __future__ import annotations

from typing import Literal

from pydantic import PositiveInt

from harness.checks.base import Check, CheckContext, LayoutModel, MetricSpec, SecondLayout, StrictModel
from harness.records import INFORMATIONAL, Budget, Tolerance


class CkptParams(StrictModel):
    reload_layout: Literal["same"] | LayoutModel = "same"
    batch_size: PositiveInt = 2
    seq_len: PositiveInt = 32
    prompt_len: PositiveInt = 16
    decode_tokens: PositiveInt = 8
    calib_batches: PositiveInt = 4


RELOAD = SecondLayout("reload_layout", sentinel="same", separator="->")


def run(ctx: CheckContext) -> dict[str, float]:
    import torch
    import torch.distributed as dist

    from harness.evals.parity import bound, decisive_flips, parity_metrics
    from harness.optimizations import get_optimization
    from harness.runtime.checkpoint import load_checkpoint, save_checkpoint
    from harness.runtime.distributed import model_parallel
    from harness.runtime.forward import fixed_tokens, forward_logits, greedy_decode
    from harness.runtime.megatron import build_gpt
    from harness.runtime.quantizers import quantizer_census
    from harness.runtime.subject import build_model

    params: CkptParams = ctx.params
    spec, seed, vocab = ctx.model, ctx.case.seed, ctx.model.vocab_size
    tokens = fixed_tokens(params.batch_size, params.seq_len, vocab, seed)
    prompt = tokens[:, : params.prompt_len]
    calib = [fixed_tokens(params.batch_size, params.seq_len, vocab, seed + 1 + i) for i in range(params.calib_batches)]
    directory = ctx.artifacts / "checkpoint"
    optimization = get_optimization(ctx.case.optimization)

    def calibrate(model: object) -> None:
        for batch in calib:
            forward_logits(model, batch, vocab)

    with model_parallel(ctx.case.layout, seed):
        model = build_model(spec, seed=seed)
        model = optimization.apply(model, calibrate)
        logits_before = forward_logits(model, tokens, vocab)
        decoded_before = greedy_decode(model, prompt, params.decode_tokens, vocab)
        # the logits that chose each decoded token, on the decoded sequence itself (teacher-forced)
        decoded_sequence = torch.cat([prompt, decoded_before], dim=1)
        choices = slice(prompt.shape[1] - 1, decoded_sequence.shape[1] - 1)
        choices_before = forward_logits(model, decoded_sequence, vocab)[:, choices]
        census_before = quantizer_census(model)
        save_checkpoint(model, directory)
        del model
    dist.barrier()
    with model_parallel(RELOAD.other(ctx.case.layout, params) or ctx.case.layout, seed):
        # Different random weights: a tensor the restore silently skips shows up as a difference.
        fresh = load_checkpoint(build_gpt(spec, seed=seed + 7919), directory)
        logits_after = forward_logits(fresh, tokens, vocab)
        decoded_after = greedy_decode(fresh, prompt, params.decode_tokens, vocab)
        choices_after = forward_logits(fresh, decoded_sequence, vocab)[:, choices]
        census_after = quantizer_census(fresh)
    limit = bound(spec.num_layers, spec.dtype, optimization.epsilon)
    return {
        "max_abs_logit_diff": float((logits_after - logits_before).abs().max()),
        "greedy_token_mismatches": float((decoded_after != decoded_before).sum()),
        **decisive_flips(choices_before, choices_after, limit),
        "quantizers_enabled_lost": float(census_before.enabled - census_after.enabled),
        "quantizers_calibration_lost": float(census_before.calibrated - census_after.calibrated),
        "quantizers_enabled": float(census_after.enabled),
        # a reshard changes the reduction order, so its logits obey the parity bound; the same layout must be
        # bit-identical
        **(
            parity_metrics("logit_", logits_after, logits_before, limit)
            if RELOAD.other(ctx.case.layout, params)
            else {}
        ),
    }


_EXACT = Tolerance(abs=0.0)
_NONE = Budget(max=0.0)
# A reload may change the reduction order (a reshard) and nothing else: the logits stay within the parity
# bound of harness.evals.parity, whose negative control (the logits one position off) must exceed it.
_WITHIN_BOUND, _ABOVE_BOUND = Budget(max=1.0), Budget(min=1.0)

CHECK = Check(
    name="ckpt_roundtrip",
    description="torch_dist save + modelopt state -> restore under the same or another layout",
    params=CkptParams,
    metrics={
        "max_abs_logit_diff": MetricSpec("max |logits after reload - logits before save| on fixed inputs", _EXACT),
        "logit_rel_error": MetricSpec("||logits after reload - before save||_F / ||before||_F", _EXACT),
        "logit_rel_error_bound": MetricSpec(
            "the parity bound K sqrt(4L+1) eps of the path (harness.evals.parity)", INFORMATIONAL
        ),
        "logit_rel_error_control": MetricSpec(
            "the same error against the logits one position off (negative control)", INFORMATIONAL
        ),
        "logit_error_to_bound": MetricSpec(
            "logit_rel_error / its bound: a reload changes rounding only", INFORMATIONAL, _WITHIN_BOUND
        ),
        "logit_control_to_bound": MetricSpec(
            "negative control / bound: the bound tells a wrong reload from a right one", INFORMATIONAL, _ABOVE_BOUND
        ),
        "greedy_token_mismatches": MetricSpec(
            "greedy-decoded tokens that differ after reload (free-running: every token after a flip counts)", _EXACT
        ),
        "greedy_flips": MetricSpec(
            "next-token choices on the decoded sequence (teacher-forced) that differ after reload, near ties "
            "included (shown; the decisive ones are judged)",
            INFORMATIONAL,
        ),
        "greedy_decisive_flips": MetricSpec(
            "those flips where the saved model's top-1 margin exceeds what rounding within the parity bound can "
            "move (sqrt(2) x bound x ||logits||): a near tie may flip, a decided choice may not",
            _EXACT,
            _NONE,
        ),
        "greedy_flip_margin_to_threshold": MetricSpec(
            "the largest margin / threshold among the flips (0: none; > 1: a decisive flip)", INFORMATIONAL
        ),
        "quantizers_enabled_lost": MetricSpec("enabled quantizers before save minus after reload", _EXACT, _NONE),
        "quantizers_calibration_lost": MetricSpec(
            "calibrated (amax-holding) quantizers lost by the reload", _EXACT, _NONE
        ),
        "quantizers_enabled": MetricSpec("enabled quantizers after reload (structure of the restored model)", _EXACT),
    },
    run=run,
    virtual_pipeline=True,
    reloads_under=lambda layout, params: RELOAD.other(layout, params) or layout,
    headline=(
        "max_abs_logit_diff",
        "logit_error_to_bound",
        "logit_control_to_bound",
        "greedy_token_mismatches",
        "greedy_decisive_flips",
        "quantizers_enabled",
        "quantizers_calibration_lost",
    ),
    **RELOAD.hooks(),
)
