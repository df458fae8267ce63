"""Post-training quantization through modelopt (``mtq.quantize`` with a calibration loop)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from harness.optimizations.base import ForwardLoop, Optimization

if TYPE_CHECKING:
    import torch

    from harness.records import Layout, ModelSpec

# The modelopt releases whose refusals below were read in their source (exclusive upper bound): a newer one
# runs the layouts, and shows by its own error (or by passing) whether the refusal still holds.
REFUSALS_VERIFIED_BELOW = "0.48"
# The same for megatron-core's refusal to checkpoint a quantized output layer (output_layer_checkpoint_problems).
OUTPUT_LAYER_REFUSAL_VERIFIED_BELOW = "0.17"


def mtq_config(config_name: str) -> dict:
    import modelopt.torch.quantization as mtq

    config = getattr(mtq, config_name, None)
    if not isinstance(config, dict):
        known = sorted(n for n in dir(mtq) if n.endswith("_CFG"))
        raise ValueError(f"modelopt {mtq.__name__} has no quantization config {config_name}; known: {', '.join(known)}")
    return config


def _verified(distribution: str, below: str) -> bool:
    """Whether the installed ``distribution`` is a release a refusal was verified on (older than ``below``)."""
    import importlib.metadata

    from packaging.version import Version

    try:
        return Version(importlib.metadata.version(distribution)) < Version(below)
    except importlib.metadata.PackageNotFoundError:
        return False


def _layout_problems(layout: Layout) -> list[str]:
    if not _verified("nvidia-modelopt", REFUSALS_VERIFIED_BELOW):
        return []
    problems = []
    if layout.tp > 1 and layout.ep > 1:
        problems.append(
            f"tp={layout.tp} with ep={layout.ep}: modelopt's quantized MoE experts refuse tensor and expert "
            "parallelism "
            "together (QuantSequentialMLP: 'TP+EP is not supported by QuantSequentialMLP. Set either TP or EP to 1!')"
        )
    if layout.vpp > 1:
        # Megatron's quantize example quantizes unwrap_model(model)[0], the first chunk
        problems.append(
            f"vpp={layout.vpp}: modelopt saves and restores its state for one model chunk only "
            "(save_sharded_modelopt_state refuses virtual pipeline parallelism), and Megatron's quantize example "
            "quantizes the first chunk alone"
        )
    return problems


def _blocks(inputs: int, tp: int, block: int) -> int:
    """How many quantization blocks a row-parallel weight's input dimension holds in all, split over ``tp`` ranks:
    each rank's shard is cut into blocks of its own, the last one short where the shard is not a whole number."""
    return tp * -(-(inputs // tp) // block)


def row_parallel_inputs(model: ModelSpec) -> dict[str, int]:
    """The input width of each row-parallel linear (split across tensor-parallel ranks along its input)."""
    heads_width = model.num_attention_heads * (model.kv_channels or model.hidden_size // model.num_attention_heads)
    return {"linear_proj": heads_width, "linear_fc2": model.ffn_hidden_size}


def block_reshard_problems(block: int) -> Callable[[Layout, Layout, ModelSpec], list[str]]:
    """Static block quantization (INT4 AWQ's weight blocks of 128) stores one amax per block of each rank's shard,
    and dist_checkpointing joins the ranks' amax tensors as one global tensor. Where the two layouts cut a
    row-parallel input into a different number of blocks the global shapes differ and the load fails
    ("Global shape mismatch ... weight_quantizer._amax"). Refused before start; where the counts agree but a
    shard is not a whole number of blocks, the load succeeds and is wrong (a known defect, suites/ckpt_llama.yaml)."""

    def problems(saved: Layout, reloaded: Layout, model: ModelSpec) -> list[str]:
        found = []
        for layer, inputs in row_parallel_inputs(model).items():
            before, after = _blocks(inputs, saved.tp, block), _blocks(inputs, reloaded.tp, block)
            if before != after:
                found.append(
                    f"{saved.token} -> {reloaded.token} cannot load: {layer}'s input {inputs} is "
                    f"{inputs // saved.tp} per rank at tp={saved.tp} ({before} blocks of {block} in all) and "
                    f"{inputs // reloaded.tp} at tp={reloaded.tp} ({after}): the global amax shapes of its weight "
                    "quantizer differ (dist_checkpointing: Global shape mismatch)"
                )
        return found

    return problems


def output_layer_checkpoint_problems(saved: Layout, reloaded: Layout, model: ModelSpec) -> list[str]:
    """megatron-core's GPTModel.sharded_state_dict pops ``output_layer._extra_state`` and asserts it holds nothing
    (old GPT checkpoints stored the weight alone), where modelopt keeps a quantized output layer's quantizer state:
    the save raises (measured with megatron-core 0.16.1: "Boolean value of Tensor with more than one value is
    ambiguous"), and a load would restore the layer unquantized (Megatron-LM PR #7086 proposes keeping the state)."""
    if not _verified("megatron-core", OUTPUT_LAYER_REFUSAL_VERIFIED_BELOW):
        return []
    return [
        "a quantized output layer cannot be checkpointed: megatron-core's GPTModel.sharded_state_dict asserts that "
        "output_layer._extra_state (modelopt's quantizer state) is empty (export in memory instead: "
        "export_roundtrip's via_checkpoint: false)"
    ]


def quantization(
    name: str,
    config_name: str,
    epsilon: float,
    gpu_only: str | None = None,
    kv_config_name: str | None = None,
    extra_cfg: list[dict] | None = None,
    weight_block: int | None = None,
    output_layer: bool = False,
) -> Optimization:
    """PTQ with ``mtq.<config_name>``, plus KV-cache quantization with ``mtq.<kv_config_name>``, plus
    ``extra_cfg`` entries appended to the config's ``quant_cfg`` list. ``weight_block``: the input block of its
    static block-quantized weights (INT4 AWQ: 128), whose reshards are judged before start; ``output_layer``:
    ``extra_cfg`` quantizes the output layer, whose checkpoints are judged before start."""

    def apply(model: torch.nn.Module, forward_loop: ForwardLoop) -> torch.nn.Module:
        import modelopt.torch.quantization as mtq
        from modelopt.torch.quantization.utils import update_quant_cfg_with_kv_cache_quant

        config = mtq_config(config_name)
        if kv_config_name is not None:
            config = update_quant_cfg_with_kv_cache_quant(config, mtq_config(kv_config_name)["quant_cfg"])
        if extra_cfg:
            config = {**config, "quant_cfg": [*config["quant_cfg"], *extra_cfg]}
        return mtq.quantize(model, config, forward_loop)

    judged = [block_reshard_problems(weight_block)] if weight_block else []
    judged += [output_layer_checkpoint_problems] if output_layer else []

    def reshard_problems(saved: Layout, reloaded: Layout, model: ModelSpec) -> list[str]:
        return [problem for judge in judged for problem in judge(saved, reloaded, model)]

    kv = f" + KV cache mtq.{kv_config_name}" if kv_config_name else ""
    extra = f" + {extra_cfg}" if extra_cfg else ""
    return Optimization(
        name=name,
        description=f"modelopt PTQ with mtq.{config_name}{kv}{extra}",
        apply=apply,
        gpu_only=gpu_only,
        layout_problems=_layout_problems,
        reshard_problems=reshard_problems,
        epsilon=epsilon,
    )
