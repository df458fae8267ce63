"""Quantized accuracy: held-out next-token accuracy and perplexity of the model before and after
PTQ, their delta, and (optionally) parity between the quantized model under two layouts.

Run it on a model whose accuracy means something (``tiny-gpt-trained``, or a real checkpoint): on
random weights every delta is noise around chance. The parity metrics catch calibration state that
is not synchronised across tensor-parallel ranks: the same recipe quantized at TP2 and at TP1 must
give the same model.
"""

from __future__ import annotations

import functools
import math
import time
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import NonNegativeInt, PositiveInt

from harness.checks.base import Check, CheckContext, LayoutModel, MetricSpec, SecondLayout, StrictModel
from harness.data.files import expand_path, stamp
from harness.data.multiple_choice import McItem
from harness.data.text import CORPUS, text_file_problem, token_rows
from harness.evals.mmlu import McScores, MmluError, load_with_shots, write_mmlu
from harness.records import INFORMATIONAL, Budget, Layout, Tolerance
from harness.stats import mcnemar_exact

if TYPE_CHECKING:
    import torch

    from harness.data.corpus import MarkovCorpus
    from harness.records import ModelSpec

CALIB_STREAM, EVAL_STREAM, MMLU_STREAM, MMLU_DEV_STREAM = 1, 2, 4, 5  # corpus streams, disjoint from training


class QuantParams(StrictModel):
    # Held-out text: "corpus" (the synthetic chain) or a .txt / .jsonl file, in the model's tokens.
    eval_text: str = CORPUS
    eval_batches: PositiveInt = 8
    eval_batch_size: PositiveInt = 16
    eval_seq_len: PositiveInt = 64
    # Calibration text for mtq.quantize's forward loop, from the same kinds of source.
    calib_text: str = CORPUS
    calib_batches: PositiveInt = 8
    calib_batch_size: PositiveInt = 8
    # Multiple-choice accuracy (harness.evals.mmlu): "none", "corpus" (a set the harness writes in
    # the MMLU layout from its chain) or an MMLU directory (<dir>/<split>/<subject>_<split>.csv).
    mmlu: str = "none"
    mmlu_split: str = "test"
    mmlu_shots: NonNegativeInt = 0  # few-shot examples per prompt, from the dev split
    mmlu_limit: NonNegativeInt = 0  # questions per subject (0: all)
    # prompts per forward: each holds full-vocabulary fp32 logits at every position (5-shot MMLU at a
    # 128k vocabulary: ~0.5 GB per prompt)
    mmlu_batch_size: PositiveInt = 16
    mmlu_corpus_items: PositiveInt = 400
    # For Hugging Face models: also run transformers on the checkpoint and compare logits with the
    # imported megatron model (the importer's correctness; costs a second copy of the weights).
    hf_reference: bool = False
    # Distribution metrics (harness.evals.divergence) over the first N eval batches: both models' log-probs
    # are held on the host meanwhile (tokens x vocabulary x 4 bytes each).
    divergence_batches: PositiveInt = 8
    parity_layout: Literal["none"] | LayoutModel = "none"


PARITY = SecondLayout("parity_layout", sentinel="none", separator="~")


def _mmlu_sets(
    params: QuantParams, corpus: MarkovCorpus, artifacts: Path
) -> tuple[list[McItem], dict[str, list[McItem]]]:
    """Questions and few-shot examples; the corpus set is written in the MMLU layout and read back
    through the same loader users' directories go through."""
    import torch.distributed as dist

    root = Path(expand_path(params.mmlu))
    if params.mmlu == CORPUS:
        root = artifacts / "mmlu"
        if dist.get_rank() == 0:
            write_mmlu(
                root, params.mmlu_split, corpus.multiple_choice(params.mmlu_corpus_items, stream_seed=MMLU_STREAM)
            )
            write_mmlu(root, "dev", corpus.multiple_choice(max(1, params.mmlu_shots), stream_seed=MMLU_DEV_STREAM))
        dist.barrier()
    return load_with_shots(root, params.mmlu_split, params.mmlu_shots, params.mmlu_limit)


@functools.cache
def _data_problems(
    mmlu: str, split: str, shots: int, limit: int, texts: tuple[tuple[str, str], ...], stamps: tuple[object, ...]
) -> tuple[tuple[str, str], ...]:
    """Every problem of the data files a case reads, found before any worker starts (cached per
    version of the files: ``stamps``)."""
    problems: list[tuple[str, str]] = []
    if mmlu not in ("none", CORPUS):
        try:
            load_with_shots(expand_path(mmlu), split, shots, limit)
        except MmluError as err:
            problems.extend(("mmlu", line) for line in str(err).splitlines())
    problems.extend((key, problem) for key, source in texts if (problem := text_file_problem(source)) is not None)
    return tuple(problems)


def _case_problems(layout: Layout, params: QuantParams, model: ModelSpec) -> list[tuple[str, str]]:
    texts = (("eval_text", params.eval_text), ("calib_text", params.calib_text))
    stamps = tuple(stamp(expand_path(source)) for source in (params.mmlu, params.eval_text, params.calib_text))
    return list(_data_problems(params.mmlu, params.mmlu_split, params.mmlu_shots, params.mmlu_limit, texts, stamps))


def _hf_logit_diff(path: str, model_logits: torch.Tensor, tokens: torch.Tensor) -> float:
    import torch
    from transformers import AutoModelForCausalLM

    reference = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    with torch.no_grad():
        logits = reference(tokens.cpu()).logits
    return float((logits - model_logits.cpu()).abs().max())


def run(ctx: CheckContext) -> dict[str, float]:
    import torch

    from harness.data.tokenizer import tokenizer_for
    from harness.evals.divergence import divergence_metrics, next_token_logprobs
    from harness.evals.lm import score_lm
    from harness.evals.mmlu import score_mc
    from harness.evals.parity import bound, parity_metrics
    from harness.optimizations import get_optimization
    from harness.runtime.activations import layer_outputs, layer_sqnr_db
    from harness.runtime.distributed import model_parallel
    from harness.runtime.forward import device, forward_logits, release_memory
    from harness.runtime.quantizers import amax_disagreement, expert_amaxes, quantizer_census
    from harness.runtime.subject import build_model
    from harness.runtime.train import corpus_of

    params: QuantParams = ctx.params
    spec, seed = ctx.model, ctx.case.seed
    corpus, tokenizer = corpus_of(spec), tokenizer_for(spec)

    def batches(source: str, stream: int, count: int, size: int, seq: int) -> list[torch.Tensor]:
        rows = torch.from_numpy(token_rows(source, tokenizer, corpus, count * size, seq, stream)).to(device())
        return list(rows.split(size))

    evals = batches(params.eval_text, EVAL_STREAM, params.eval_batches, params.eval_batch_size, params.eval_seq_len + 1)
    calib = batches(params.calib_text, CALIB_STREAM, params.calib_batches, params.calib_batch_size, params.eval_seq_len)
    probe = evals[0][:4, :-1]
    compared = evals[: params.divergence_batches]
    mmlu = _mmlu_sets(params, corpus, ctx.artifacts) if params.mmlu != "none" else None
    optimization = get_optimization(ctx.case.optimization)

    def calibrate(model: torch.nn.Module) -> None:
        for batch in calib:
            forward_logits(model, batch, spec.vocab_size)

    def mc(model: torch.nn.Module) -> McScores | None:
        return (
            None
            if mmlu is None
            else score_mc(
                model,
                tokenizer,
                mmlu[0],
                spec.vocab_size,
                shots=mmlu[1],
                max_len=spec.max_seq_len,
                batch_size=params.mmlu_batch_size,
            )
        )

    metrics: dict[str, float] = {}
    with model_parallel(ctx.case.layout, seed):
        model = build_model(spec, seed=seed)
        base, base_mc = score_lm(model, evals, spec.vocab_size), mc(model)
        base_logprobs, base_layers = (
            next_token_logprobs(model, compared, spec.vocab_size),
            layer_outputs(model, probe, spec.vocab_size),
        )
        if params.hf_reference and spec.hf_path is not None:
            metrics["hf_import_max_abs_logit_diff"] = _hf_logit_diff(
                spec.hf_path, forward_logits(model, probe, spec.vocab_size), probe
            )
        start = time.perf_counter()
        model = optimization.apply(model, calibrate)
        calibration_s = time.perf_counter() - start
        quant, quant_mc = score_lm(model, evals, spec.vocab_size), mc(model)
        divergence = divergence_metrics(
            base_logprobs,
            next_token_logprobs(model, compared, spec.vocab_size),
            [batch[:, 1:] for batch in compared],
            seed,
        )
        sqnr = layer_sqnr_db(base_layers, layer_outputs(model, probe, spec.vocab_size))
        del base_logprobs, base_layers
        probe_logits = forward_logits(model, probe, spec.vocab_size)
        census = quantizer_census(model)
        experts = expert_amaxes(model) if spec.num_moe_experts else None
        del model
        release_memory()  # before the parity twin is built: an 8B model and its twin would not fit together
    metrics |= {
        "base_accuracy_pct": 100 * base.accuracy,
        "quant_accuracy_pct": 100 * quant.accuracy,
        "accuracy_delta_pts": 100 * (quant.accuracy - base.accuracy),
        "delta_significance_z": (quant.accuracy - base.accuracy)
        / max(1e-12, math.hypot(base.accuracy_stderr, quant.accuracy_stderr)),
        "base_perplexity": base.perplexity,
        "quant_perplexity": quant.perplexity,
        "calibration_s": calibration_s,
        "quantizers_enabled": float(census.enabled),
        "kv_quantizers_enabled": float(census.kv_enabled),
        **divergence,
        **{f"layer_sqnr_db@{number:02d}": value for number, value in sqnr.items()},
        "layer_sqnr_min_db": min(sqnr.values()),
    }
    if experts is not None:
        metrics["expert_quantizers"] = float(len(experts))
        metrics["expert_quantizers_uncalibrated"] = float(sum(amax is None for amax in experts.values()))
    if params.eval_text == CORPUS:
        metrics["accuracy_ceiling_pct"] = 100 * corpus.best_accuracy
    if base_mc is not None and quant_mc is not None:
        metrics |= {
            "mmlu_items": float(base_mc.items),
            "base_mmlu_pct": 100 * base_mc.accuracy,
            "quant_mmlu_pct": 100 * quant_mc.accuracy,
            "mmlu_delta_pts": 100 * (quant_mc.accuracy - base_mc.accuracy),
            "base_mmlu_macro_pct": 100 * base_mc.macro_accuracy,
            "quant_mmlu_macro_pct": 100 * quant_mc.macro_accuracy,
            "mmlu_macro_delta_pts": 100 * (quant_mc.macro_accuracy - base_mc.macro_accuracy),
        }
        lost, gained = base_mc.flips(quant_mc)
        metrics |= {
            "mmlu_flips_lost": float(lost),
            "mmlu_flips_gained": float(gained),
            "mmlu_mcnemar_p": mcnemar_exact(lost, gained),
        }
        for subject in base_mc.by_subject:
            base_pct, quant_pct = 100 * base_mc.subject_accuracy(subject), 100 * quant_mc.subject_accuracy(subject)
            metrics |= {
                f"subject_base_pct@{subject}": base_pct,
                f"subject_quant_pct@{subject}": quant_pct,
                f"subject_delta_pts@{subject}": quant_pct - base_pct,
            }
    other = PARITY.other(ctx.case.layout, params)
    if other is not None:
        with model_parallel(other, seed):
            twin = optimization.apply(build_model(spec, seed=seed), calibrate)
            twin_quant = score_lm(twin, evals, spec.vocab_size)
            twin_logits = forward_logits(twin, probe, spec.vocab_size)
            if experts is not None:
                # calibration statistics of the unquantized model: the two layouts may differ by its rounding only
                metrics["parity_expert_amax_max_rel_diff"] = amax_disagreement(experts, expert_amaxes(twin))
                metrics["parity_expert_amax_to_bound"] = metrics["parity_expert_amax_max_rel_diff"] / bound(
                    spec.num_layers, spec.dtype
                )
        metrics["parity_max_abs_logit_diff"] = float((twin_logits - probe_logits).abs().max())
        metrics |= parity_metrics(
            "parity_logit_", probe_logits, twin_logits, bound(spec.num_layers, spec.dtype, optimization.epsilon)
        )
        metrics["parity_accuracy_delta_pts"] = 100 * (quant.accuracy - twin_quant.accuracy)
    return metrics


_EXACT = Tolerance()  # widened to the metric's measured noise (harness.noise)
# Base vs quantized on the same tokens, in one run (harness.evals.divergence): each mean with its bootstrap interval.
_DISTRIBUTION = {
    "kld_mean": MetricSpec("mean per-token KL(base || quantized) of the next-token distributions (nats)", _EXACT),
    "kld_median": MetricSpec("median per-token KL(base || quantized) (nats)", _EXACT),
    "kld_p99": MetricSpec("99th percentile of the per-token KL (nats)", _EXACT),
    "kld_max": MetricSpec("largest per-token KL (nats)", _EXACT),
    "top1_agreement_pct": MetricSpec("tokens (%) whose most likely next token is the same for both models", _EXACT),
    "dp_correct_mean_pct": MetricSpec(
        "mean change of the correct token's probability, quantized minus base (points)", _EXACT
    ),
    "dp_correct_rms_pct": MetricSpec("RMS change of the correct token's probability (points)", _EXACT),
    **{
        f"{name}_ci_{end}": MetricSpec(f"95% bootstrap interval of {name} over sequences, {end} end", INFORMATIONAL)
        for name in ("kld_mean", "top1_agreement_pct", "dp_correct_mean_pct", "dp_correct_rms_pct")
        for end in ("low", "high")
    },
}

CHECK = Check(
    name="quant_accuracy",
    description="held-out accuracy and perplexity before and after PTQ, and quantized parity across layouts",
    params=QuantParams,
    metrics={
        "base_accuracy_pct": MetricSpec("next-token accuracy (%) of the unquantized model", _EXACT),
        "quant_accuracy_pct": MetricSpec("next-token accuracy (%) after quantization", _EXACT),
        "accuracy_delta_pts": MetricSpec("quantized minus base accuracy, in points (negative: lost)", _EXACT),
        "delta_significance_z": MetricSpec(
            "delta / sqrt(se_base^2 + se_quant^2): |z| < 2 is within noise", INFORMATIONAL
        ),
        "base_perplexity": MetricSpec("held-out perplexity before quantization", _EXACT),
        "quant_perplexity": MetricSpec("held-out perplexity after quantization", _EXACT),
        "accuracy_ceiling_pct": MetricSpec("best accuracy any model can reach on the corpus", _EXACT),
        "calibration_s": MetricSpec("wall time of mtq.quantize incl. calibration (seconds)", INFORMATIONAL),
        "quantizers_enabled": MetricSpec("enabled quantizers (one tensor-parallel replica)", _EXACT),
        "kv_quantizers_enabled": MetricSpec("enabled KV-cache quantizers (0: the KV format changed nothing)", _EXACT),
        "expert_quantizers": MetricSpec("enabled quantizers of MoE experts, over all expert-parallel ranks", _EXACT),
        "expert_quantizers_uncalibrated": MetricSpec(
            "enabled expert quantizers holding no amax: experts no calibration token reached", _EXACT, Budget(max=0)
        ),
        "mmlu_items": MetricSpec("multiple-choice questions scored", _EXACT),
        "base_mmlu_pct": MetricSpec("multiple-choice accuracy (%) of the unquantized model (chance: 25)", _EXACT),
        "quant_mmlu_pct": MetricSpec("multiple-choice accuracy (%) after quantization", _EXACT),
        "mmlu_delta_pts": MetricSpec("quantized minus base multiple-choice accuracy, in points", _EXACT),
        "base_mmlu_macro_pct": MetricSpec(
            "mean of the subjects' accuracies (%), unquantized (every subject weighs the same)", _EXACT
        ),
        "quant_mmlu_macro_pct": MetricSpec("mean of the subjects' accuracies (%) after quantization", _EXACT),
        "mmlu_macro_delta_pts": MetricSpec("quantized minus base macro accuracy, in points", _EXACT),
        "subject_base_pct@*": MetricSpec("one subject's multiple-choice accuracy (%), unquantized (@subject)", _EXACT),
        "subject_quant_pct@*": MetricSpec(
            "one subject's multiple-choice accuracy (%) after quantization (@subject)", _EXACT
        ),
        "subject_delta_pts@*": MetricSpec("one subject's quantized minus base accuracy, in points (@subject)", _EXACT),
        **_DISTRIBUTION,
        "mmlu_flips_lost": MetricSpec(
            "questions the base model answers right and the quantized one wrong (paired)", _EXACT
        ),
        "mmlu_flips_gained": MetricSpec(
            "questions the quantized model answers right and the base one wrong (paired)", _EXACT
        ),
        "mmlu_mcnemar_p": MetricSpec(
            "McNemar's exact p-value of the paired flips (small: the quantized model answers differently "
            "beyond chance)",
            _EXACT,
        ),
        "layer_sqnr_db@*": MetricSpec(
            "signal-to-quantization-noise ratio (dB) of a decoder layer's output, quantized vs base, on "
            "fixed tokens (@layer number): a drop names the layer",
            _EXACT,
        ),
        "layer_sqnr_min_db": MetricSpec("the lowest layer SQNR (dB)", _EXACT),
        "hf_import_max_abs_logit_diff": MetricSpec(
            "max |logits| difference, imported megatron model vs transformers", _EXACT
        ),
        "parity_max_abs_logit_diff": MetricSpec(
            "max |logits| difference, quantized here vs under parity_layout", _EXACT
        ),
        "parity_logit_rel_error": MetricSpec(
            "||logits here - under parity_layout||_F / ||under parity_layout||_F", _EXACT
        ),
        "parity_logit_rel_error_bound": MetricSpec(
            "the parity bound K sqrt(4L+1) eps of the quantized path (harness.evals.parity)", INFORMATIONAL
        ),
        "parity_logit_rel_error_control": MetricSpec(
            "the same error against the twin's logits one position off (negative control)", INFORMATIONAL
        ),
        "parity_logit_error_to_bound": MetricSpec(
            "parity_logit_rel_error / its bound: layouts differ by rounding only", INFORMATIONAL, Budget(max=1.0)
        ),
        "parity_logit_control_to_bound": MetricSpec(
            "negative control / bound: the bound tells unsynchronised scales from rounding",
            INFORMATIONAL,
            Budget(min=1.0),
        ),
        "parity_expert_amax_max_rel_diff": MetricSpec(
            "largest relative difference of an expert quantizer's amax element, here vs under parity_layout (same "
            "tokens: "
            "layouts must agree to rounding)",
            _EXACT,
        ),
        "parity_expert_amax_to_bound": MetricSpec(
            "parity_expert_amax_max_rel_diff / the layout-parity bound of the unquantized path",
            INFORMATIONAL,
            Budget(max=1.0),
        ),
        "parity_accuracy_delta_pts": MetricSpec("accuracy here minus under parity_layout, in points", _EXACT),
    },
    run=run,
    case_problems=_case_problems,
    headline=(
        "accuracy_delta_pts",
        "kld_mean",
        "top1_agreement_pct",
        "dp_correct_rms_pct",
        "layer_sqnr_min_db",
        "mmlu_delta_pts",
        "mmlu_mcnemar_p",
        "parity_logit_error_to_bound",
    ),
    **PARITY.hooks(),
)
