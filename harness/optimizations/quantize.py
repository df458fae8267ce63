"""Post-training quantization through modelopt (``mtq.quantize`` with a calibration loop)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from harness.optimizations.base import ForwardLoop, Optimization

if TYPE_CHECKING:
    import torch

    from harness.records import Layout

# The modelopt releases whose refusals below were read in their source (exclusive upper bound): a newer one
# runs the layouts, and shows by its own error (or by passing) whether the refusal still holds.
REFUSALS_VERIFIED_BELOW = "0.48"


def mtq_config(config_name: str) -> dict:
    import modelopt.torch.quantization as mtq

    config = getattr(mtq, config_name, None)
    if not isinstance(config, dict):
        known = sorted(n for n in dir(mtq) if n.endswith("_CFG"))
        raise ValueError(f"modelopt {mtq.__name__} has no quantization config {config_name}; known: {', '.join(known)}")
    return config


def _layout_problems(layout: Layout) -> list[str]:
    import importlib.metadata

    from packaging.version import Version

    try:
        if Version(importlib.metadata.version("nvidia-modelopt")) >= Version(REFUSALS_VERIFIED_BELOW):
            return []
    except importlib.metadata.PackageNotFoundError:
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


def quantization(
    name: str,
    config_name: str,
    epsilon: float,
    gpu_only: str | None = None,
    kv_config_name: str | None = None,
    extra_cfg: list[dict] | None = None,
) -> Optimization:
    """PTQ with ``mtq.<config_name>``, plus KV-cache quantization with ``mtq.<kv_config_name>``, plus
    ``extra_cfg`` entries appended to the config's ``quant_cfg`` list."""

    def apply(model: torch.nn.Module, forward_loop: ForwardLoop) -> torch.nn.Module:
        import modelopt.torch.quantization as mtq
        from modelopt.torch.quantization.utils import update_quant_cfg_with_kv_cache_quant

        config = mtq_config(config_name)
        if kv_config_name is not None:
            config = update_quant_cfg_with_kv_cache_quant(config, mtq_config(kv_config_name)["quant_cfg"])
        if extra_cfg:
            config = {**config, "quant_cfg": [*config["quant_cfg"], *extra_cfg]}
        return mtq.quantize(model, config, forward_loop)

    kv = f" + KV cache mtq.{kv_config_name}" if kv_config_name else ""
    extra = f" + {extra_cfg}" if extra_cfg else ""
    return Optimization(
        name=name,
        description=f"modelopt PTQ with mtq.{config_name}{kv}{extra}",
        apply=apply,
        gpu_only=gpu_only,
        layout_problems=_layout_problems,
        epsilon=epsilon,
    )
