"""Export round trip: the Hugging Face checkpoint a team ships computes what the harness validated.

Build -> optimize under the case's layout (the validated model: its logits are the reference) -> save a torch_dist
checkpoint and reload it at TP1 PP1, where modelopt exports (Megatron-LM's quantize and export scripts hand over the
same way) -> export with modelopt's ``export_mcore_gpt_to_hf`` -> read the folder without modelopt
(``harness.evals.exported``: safetensors, ``hf_quant_config.json``, each format dequantized by its published
definition, a transformers model in fp32 with the activation scales as fake quantization) -> compare logits and
next-token choices with the validated model's.

Integrity is judged beside the numbers, at each stage: every quantizer the recipe enabled is still enabled and
calibrated after the reload, with the amax values it had (a copy: exactly), the exported folder states the
recipe's format, and every enabled quantizer has its exported scale, equal (to rounding) to its amax over the
format's range. Both models run the same tokens, and each activation quantizer must be handed, in the exported
model, the inputs it was calibrated on in the validated one. The worker log names each quantizer a stage lost or
changed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from pydantic import PositiveInt

from harness.checks.base import Check, CheckContext, MetricSpec, StrictModel
from harness.records import INFORMATIONAL, Budget, Layout, ModelSpec, Tolerance

if TYPE_CHECKING:
    import torch

    from harness.evals.exported import Exported, InputRanges
    from harness.runtime.quantizers import QuantizerCensus


class ExportParams(StrictModel):
    batch_size: PositiveInt = 2
    seq_len: PositiveInt = 32
    calib_batches: PositiveInt = 4
    # hand the validated model to the exporter through a torch_dist checkpoint reloaded at TP1 PP1 (Megatron-LM's
    # quantize-then-export flow), or as it is in memory (quantize and export in one process: TP1 PP1 only)
    via_checkpoint: bool = True


# The hf_quant_config.json "quant_algo" each recipe must state (modelopt's unified checkpoint names).
STATED_FORMAT = {"none": None, "fp8": "FP8", "int8_sq": "INT8_SQ", "int4_awq": "INT4_AWQ", "w4a8_awq": "W4A8_AWQ"}
# A megatron GPT layer's quantized linears -> the Hugging Face modules the exporter splits them into (Llama, Qwen).
HF_MODULES = {
    "self_attention.linear_qkv": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
    "self_attention.linear_proj": ("self_attn.o_proj",),
    "mlp.linear_fc1": ("mlp.gate_proj", "mlp.up_proj"),
    "mlp.linear_fc2": ("mlp.down_proj",),
}
EXPORT_LAYOUT = Layout()


EXPERT = "mlp.experts.local_experts."  # a megatron MoE layer's experts (SequentialMLP): all of them at EP1


def hf_modules(megatron_name: str) -> tuple[str, ...]:
    """The exported modules holding a megatron linear's weights (``output_layer``: ``lm_head``; an expert's
    ``mlp.experts.<e>.*_proj``, ``e`` its index at EP1, where modelopt exports)."""
    if megatron_name == "output_layer":
        return ("lm_head",)
    prefix, _, rest = megatron_name.removeprefix("decoder.layers.").partition(".")
    if rest.startswith(EXPERT):
        expert, _, linear = rest.removeprefix(EXPERT).partition(".")
        leaves = HF_MODULES.get(f"mlp.{linear}", ())
        return tuple(f"model.layers.{prefix}.{leaf.replace('mlp.', f'mlp.experts.{expert}.')}" for leaf in leaves)
    return tuple(f"model.layers.{prefix}.{leaf}" for leaf in HF_MODULES.get(rest, ()))


def _compared(expected: torch.Tensor, scales: list[torch.Tensor]) -> float | None:
    """Largest relative difference of the exported ``scales`` (one per split module) from ``expected``, as sorted
    sets (the exporter reorders a fused linear's rows into q/k/v, gate/up); None where the counts differ."""
    import torch

    got = torch.cat([s.float().flatten() for s in scales])
    if got.numel() != expected.numel():  # one per-tensor scale repeated for each split module
        got = got.unique()
    if got.numel() != expected.numel():
        return None
    want = expected.float().flatten().sort().values
    return float(((got.sort().values - want).abs() / want.abs().clamp_min(1e-30)).max())


def _linear_scales(name: str, module: torch.nn.Module, exported: Exported) -> tuple[list[str], float]:
    from harness.evals.exported import INPUT_RANGE, WEIGHT_RANGE, WEIGHT_SCALE

    targets, missing, worst = hf_modules(name), [], 0.0
    fmt = exported.layer_format(targets[0])
    for kind, ranges, scale_name in (
        ("weight_quantizer", WEIGHT_RANGE, WEIGHT_SCALE.get(fmt or "", "weight_scale")),
        ("input_quantizer", INPUT_RANGE, "input_scale"),
    ):
        quantizer = getattr(module, kind, None)
        if quantizer is None or not quantizer.is_enabled:
            continue
        scales = [exported.scales(target).get(scale_name) for target in targets]
        present = [s for s in scales if s is not None]
        error = (
            _compared(quantizer.amax / ranges[fmt], present)
            if len(present) == len(scales) and fmt in ranges and quantizer.amax is not None
            else None
        )
        if error is None:
            missing += [f"{target}.{scale_name}" for target in targets]
        else:
            worst = max(worst, error)
    smooth = getattr(getattr(module, "input_quantizer", None), "_pre_quant_scale", None)
    if smooth is not None:
        missing += [f"{t}.pre_quant_scale" for t in targets if "pre_quant_scale" not in exported.scales(t)]
    return missing, worst


def _kv_scales(name: str, module: torch.nn.Module, exported: Exported) -> tuple[list[str], float]:
    """K and V cache scales: amax / 448, raised to at least 1 (the exporter's default ``clamp_kv_cache_scales``)."""
    import torch

    from harness.evals.exported import FP8_MAX

    layer = name.removeprefix("decoder.layers.").partition(".")[0]
    missing: list[str] = []
    worst = 0.0
    for kind, leaf in (("k_bmm_quantizer", "k_scale"), ("v_bmm_quantizer", "v_scale")):
        quantizer = getattr(module, kind, None)
        if quantizer is None or not quantizer.is_enabled:
            continue
        key = f"model.layers.{layer}.self_attn.{leaf}"
        stored = exported.tensors.get(key)
        if stored is None or quantizer.amax is None or not (exported.quantization or {}).get("kv_cache_quant_algo"):
            missing.append(key)
            continue
        error = _compared(torch.clamp_min(quantizer.amax.float() / FP8_MAX, 1.0), [stored])
        if error is None:
            missing.append(key)
        else:
            worst = max(worst, error)
    return missing, worst


def integrity(model: torch.nn.Module, exported: Exported) -> dict[str, float]:
    """Enabled quantizers of ``model`` (megatron, TP1) whose exported state is missing (a scale, the smoothing
    factor, the format statement), each named in the worker log, and the largest relative difference between an
    exported scale and what the quantizer's amax makes it."""
    missing: list[str] = []
    worst = 0.0
    for name, module in model.named_modules():
        if hf_modules(name):
            found = _linear_scales(name, module, exported)
        elif name.endswith("self_attention.core_attention"):
            found = _kv_scales(name, module, exported)
        else:
            continue
        missing, worst = missing + found[0], max(worst, found[1])
    for entry in missing:
        print(f"[export_roundtrip] exported without its state: {entry}", flush=True)
    return {"export_quantizers_missing": float(len(missing)), "export_scale_max_rel_error": worst}


def _handed(smooth: torch.Tensor | None, records: list[Callable[[torch.Tensor], None]]) -> Callable[..., None]:
    def seen(_: torch.nn.Module, args: tuple) -> None:
        x = args[0] if smooth is None else args[0] * smooth
        for record in records:
            record(x)

    return seen


def validated_input_ranges(model: torch.nn.Module, tokens: torch.Tensor, vocab: int) -> InputRanges:
    """What each enabled input quantizer of ``model`` (megatron, at the export layout: the reloaded model, which
    the reload metrics tie to the validated one) is handed on ``tokens`` (after AWQ / SmoothQuant smoothing), by
    the exported module names it maps to (collective: a forward)."""
    from harness.evals.exported import InputRanges
    from harness.runtime.forward import forward_logits

    ranges, hooks = InputRanges(), []
    for name, module in model.named_modules():
        quantizer = getattr(module, "input_quantizer", None)
        if not hf_modules(name) or quantizer is None or not quantizer.is_enabled:
            continue
        records = [ranges.recorder(target) for target in hf_modules(name)]
        smooth = getattr(quantizer, "_pre_quant_scale", None)
        hooks.append(quantizer.register_forward_pre_hook(_handed(smooth, records)))
    forward_logits(model, tokens, vocab)
    for hook in hooks:
        hook.remove()
    return ranges


def input_range_change(validated: InputRanges, exported: InputRanges) -> float:
    """The largest relative difference between what a module's activation quantizer is handed in the exported
    model and in the validated one (same tokens), naming each above zero in the worker log: both compute the same
    function, so the exported ``input_scale`` covers the same inputs, unless the runtime's computation feeds the
    layer something else (a scaling applied on another side of it)."""
    worst = 0.0
    for module in sorted(validated.keys() & exported.keys()):
        change = abs(exported[module] - validated[module]) / max(validated[module], 1e-30)
        worst = max(worst, change)
        if change > 1e-3:
            print(
                f"[export_roundtrip] {module}: the exported model hands its input quantizer up to "
                f"{exported[module]:.6g}, the validated model {validated[module]:.6g}",
                flush=True,
            )
    return worst


def amaxes(model: torch.nn.Module) -> dict[str, torch.Tensor | None]:
    """Every enabled quantizer's amax by a name every layout shares, MoE experts included (collective)."""
    from harness.runtime.quantizers import expert_amaxes, layout_amaxes

    return layout_amaxes(model) | expert_amaxes(model)


def reload_integrity(
    before: QuantizerCensus, amax_before: dict[str, torch.Tensor | None], reloaded: torch.nn.Module
) -> dict[str, float]:
    """What the checkpoint stage lost: enabled and calibrated quantizers, and the largest relative change of any
    enabled quantizer's amax (``amaxes`` on each side), naming in the worker log each that changed or went
    missing. Collective: every rank calls it."""
    from harness.runtime.distributed import is_reporting_rank
    from harness.runtime.quantizers import amax_differences, quantizer_census

    after, amax_after = quantizer_census(reloaded), amaxes(reloaded)
    changed = {key: diff for key, diff in amax_differences(amax_before, amax_after).items() if diff != 0.0}
    for key, diff in changed.items() if is_reporting_rank() else ():
        print(f"[export_roundtrip] amax changed by the reload: {key} (max relative difference {diff:g})", flush=True)
    return {
        "quantizers_enabled_lost": float(before.enabled - after.enabled),
        "quantizers_calibration_lost": float(before.calibrated - after.calibrated),
        "reload_amax_max_rel_change": max(changed.values(), default=0.0),
    }


def case_problems(layout: Layout, params: ExportParams, model: ModelSpec) -> list[tuple[str, str]]:
    from harness.models.hf_config import NotExportable, hf_config

    problems = []
    if not params.via_checkpoint and layout != EXPORT_LAYOUT:
        problems.append(
            ("via_checkpoint", f"false needs the export layout tp1pp1 (modelopt exports there), not {layout.token}")
        )
    if model.hf_path is None:
        try:
            hf_config(model)
        except NotExportable as err:
            problems.append(("model", str(err)))
    return problems


def run(ctx: CheckContext) -> dict[str, float]:
    import json
    from pathlib import Path

    import torch
    import torch.distributed as dist
    from modelopt.torch.export import export_mcore_gpt_to_hf

    from harness.evals.exported import InputRanges, read_exported
    from harness.evals.exported import build_model as build_exported
    from harness.evals.parity import decisive_flips, export_bound, parity_metrics
    from harness.models.hf_config import hf_config
    from harness.optimizations import get_optimization
    from harness.runtime.checkpoint import load_checkpoint, save_checkpoint
    from harness.runtime.distributed import is_reporting_rank, model_parallel
    from harness.runtime.forward import fixed_tokens, forward_logits
    from harness.runtime.megatron import build_gpt, torch_dtype
    from harness.runtime.quantizers import quantizer_census
    from harness.runtime.subject import build_model

    params: ExportParams = ctx.params
    spec, seed, vocab = ctx.model, ctx.case.seed, ctx.model.vocab_size
    tokens = fixed_tokens(params.batch_size, params.seq_len, vocab, seed)
    calib = [fixed_tokens(params.batch_size, params.seq_len, vocab, seed + 1 + i) for i in range(params.calib_batches)]
    optimization = get_optimization(ctx.case.optimization)
    # what the exporter reads the architecture from: an imported checkpoint's own folder, else the zoo model's config
    source = Path(spec.hf_path) if spec.hf_path else ctx.artifacts / "hf_source"
    if spec.hf_path is None and dist.get_rank() == 0:
        source.mkdir(parents=True, exist_ok=True)
        (source / "config.json").write_text(json.dumps(hf_config(spec), indent=1))
    dist.barrier()

    def calibrate(model: object) -> None:
        for batch in calib:
            forward_logits(model, batch, vocab)

    with model_parallel(ctx.case.layout, seed):
        model = optimization.apply(build_model(spec, seed=seed), calibrate)
        reference = forward_logits(model, tokens, vocab)
        census, amax_before = quantizer_census(model), amaxes(model) if params.via_checkpoint else {}
        if params.via_checkpoint:
            save_checkpoint(model, ctx.artifacts / "checkpoint")
            del model
    dist.barrier()
    folder = ctx.artifacts / "export"
    with model_parallel(EXPORT_LAYOUT, seed):
        if params.via_checkpoint:
            # different random weights under the reload: a tensor the restore skips shows up as a difference
            exporting = load_checkpoint(build_gpt(spec, seed=seed + 7919), ctx.artifacts / "checkpoint")
            reload = reload_integrity(census, amax_before, exporting)
        else:
            exporting, reload = model, {}
        export_mcore_gpt_to_hf(exporting, str(source), dtype=torch_dtype(spec), export_dir=str(folder))
        dist.barrier()
        exported = read_exported(folder)
        reporting = is_reporting_rank()
        checks = {**reload, **integrity(exporting, exported)} if reporting else {}
        validated_ranges = validated_input_ranges(exporting, tokens, vocab)
    exported_ranges = InputRanges()
    with torch.no_grad():
        logits = build_exported(exported, exported_ranges)(tokens.cpu()).logits.to(reference.device)
    stated = (exported.quantization or {}).get("quant_algo")
    limit = export_bound(spec.num_layers, spec.dtype, optimization.epsilon)
    top1 = logits.argmax(-1) == reference.argmax(-1)
    change = input_range_change(validated_ranges, exported_ranges) if reporting else 0.0
    input_ranges = {"export_input_range_max_rel_diff": change, "export_input_range_to_bound": change / limit}
    return {
        **parity_metrics("logit_", logits.float(), reference.float(), limit),
        "max_abs_logit_diff": float((logits.float() - reference.float()).abs().max()),
        "top1_agreement": float(top1.float().mean()),
        **decisive_flips(reference, logits, limit),
        "quantizers_enabled": float(census.enabled),
        "export_recipe_stated": float(stated == STATED_FORMAT.get(ctx.case.optimization.split("+")[0], "?")),
        **checks,
        **input_ranges,
    }


_EXACT = Tolerance(abs=0.0)
_NONE = Budget(max=0.0)
_WITHIN_BOUND, _ABOVE_BOUND = Budget(max=1.0), Budget(min=1.0)
# Scales are amax / range in fp32 on both sides; the exporter may divide where modelopt multiplies by the inverse.
_SCALE_ROUNDING = Budget(max=4 * 2.0**-23)

CHECK = Check(
    name="export_roundtrip",
    description="modelopt unified Hugging Face export, reloaded without modelopt, against the validated model",
    params=ExportParams,
    metrics={
        # judged against the baseline within its measured noise, besides the bound (which a coarse format in bf16
        # makes vacuous: the export bound exceeds 1 there)
        "logit_rel_error": MetricSpec("||exported logits - validated||_F / ||validated||_F", _EXACT),
        "logit_rel_error_bound": MetricSpec(
            "the export bound K sqrt(4L+1) eps_export (harness.evals.parity.export_bound)", INFORMATIONAL
        ),
        "logit_rel_error_control": MetricSpec(
            "the same error against the validated logits one position off (negative control)", INFORMATIONAL
        ),
        "logit_error_to_bound": MetricSpec(
            "logit_rel_error / its bound: the exported model differs by rounding only", INFORMATIONAL, _WITHIN_BOUND
        ),
        "logit_control_to_bound": MetricSpec(
            "negative control / bound: the bound tells a wrong export from a right one", INFORMATIONAL, _ABOVE_BOUND
        ),
        "max_abs_logit_diff": MetricSpec("max |exported logits - validated logits|", _EXACT),
        "top1_agreement": MetricSpec("positions where both choose the same next token", _EXACT),
        "greedy_flips": MetricSpec("next-token choices that differ, near ties included (shown)", INFORMATIONAL),
        "greedy_decisive_flips": MetricSpec(
            "flips where the validated model's top-1 margin exceeds what the export bound can move", _EXACT, _NONE
        ),
        "greedy_flip_margin_to_threshold": MetricSpec(
            "the largest margin / threshold among the flips (0: none; > 1: a decisive flip)", INFORMATIONAL
        ),
        "quantizers_enabled": MetricSpec("enabled quantizers of the validated model (the recipe's)", _EXACT),
        "quantizers_enabled_lost": MetricSpec("enabled quantizers lost by the reload before export", _EXACT, _NONE),
        "quantizers_calibration_lost": MetricSpec("calibrated quantizers lost by that reload", _EXACT, _NONE),
        "reload_amax_max_rel_change": MetricSpec(
            "largest relative change of an enabled quantizer's amax from the validated model to the reloaded one "
            "(a checkpoint copies them: none)",
            INFORMATIONAL,
            _NONE,
        ),
        "export_recipe_stated": MetricSpec(
            "1 if hf_quant_config.json states the recipe's format (none: states no quantization)",
            _EXACT,
            Budget(min=1.0),
        ),
        "export_quantizers_missing": MetricSpec(
            "exported modules without the scale (weight, input, AWQ/SmoothQuant pre_quant_scale) of an enabled "
            "quantizer, or whose format the folder does not state",
            _EXACT,
            _NONE,
        ),
        "export_scale_max_rel_error": MetricSpec(
            "largest |exported scale - amax / range| / (amax / range)", INFORMATIONAL, _SCALE_ROUNDING
        ),
        "export_input_range_max_rel_diff": MetricSpec(
            "largest relative difference between the largest |input| an activation quantizer is handed in the "
            "exported model and in the validated one, same tokens",
            INFORMATIONAL,
        ),
        "export_input_range_to_bound": MetricSpec(
            "export_input_range_max_rel_diff / the export bound: the exported scales quantize what was calibrated",
            INFORMATIONAL,
            _WITHIN_BOUND,
        ),
    },
    run=run,
    case_problems=case_problems,
    reloads_under=lambda layout, params: EXPORT_LAYOUT if params.via_checkpoint else None,
    headline=(
        "logit_error_to_bound",
        "logit_control_to_bound",
        "top1_agreement",
        "greedy_decisive_flips",
        "export_recipe_stated",
        "export_quantizers_missing",
    ),
)
