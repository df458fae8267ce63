"""Post-training quantization through modelopt (``mtq.quantize`` with a calibration loop)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from harness.optimizations.base import ForwardLoop, Optimization

if TYPE_CHECKING:
    import torch


def mtq_config(config_name: str) -> dict:
    import modelopt.torch.quantization as mtq

    config = getattr(mtq, config_name, None)
    if not isinstance(config, dict):
        known = sorted(n for n in dir(mtq) if n.endswith("_CFG"))
        raise ValueError(f"modelopt {mtq.__name__} has no quantization config {config_name}; known: {', '.join(known)}")
    return config


def quantization(name: str, config_name: str, gpu_only: str | None = None, kv_config_name: str | None = None,
                 extra_cfg: list[dict] | None = None) -> Optimization:
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
    return Optimization(name=name, description=f"modelopt PTQ with mtq.{config_name}{kv}{extra}", apply=apply, gpu_only=gpu_only)
