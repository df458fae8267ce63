"""Optimization registry.

Any modelopt quantization config is also reachable as ``mtq:<NAME>_CFG``, and a KV-cache format
composes with a quantization format as ``<format>+<kv format>`` (e.g. ``fp8+fp8_kv``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from harness.optimizations.base import ForwardLoop, Optimization
from harness.optimizations.quantize import quantization

if TYPE_CHECKING:
    import torch

_CPU_BLOCK_QUANT = "needs CUDA: modelopt's dynamic block quantization requires amax on a CUDA tensor"

# name -> (modelopt config, why it cannot run on CPU)
QUANT_FORMATS: dict[str, tuple[str, str | None]] = {
    "fp8": ("FP8_DEFAULT_CFG", None),
    "int8_sq": ("INT8_SMOOTHQUANT_CFG", None),
    "int4_awq": ("INT4_AWQ_CFG", None),
    "w4a8_awq": ("W4A8_AWQ_BETA_CFG", None),
    "nvfp4": ("NVFP4_DEFAULT_CFG", _CPU_BLOCK_QUANT),
}
KV_CACHE_FORMATS: dict[str, str] = {"fp8_kv": "FP8_KV_CFG", "nvfp4_kv": "NVFP4_KV_CFG"}


def _none(model: torch.nn.Module, forward_loop: ForwardLoop) -> torch.nn.Module:
    return model


OPTIMIZATIONS: dict[str, Optimization] = {
    "none": Optimization("none", "the model as built", _none),
    **{name: quantization(name, config, gpu_only) for name, (config, gpu_only) in QUANT_FORMATS.items()},
}


def get_optimization(name: str) -> Optimization:
    if name in OPTIMIZATIONS:
        return OPTIMIZATIONS[name]
    if name.startswith("mtq:") and name.endswith("_CFG"):
        return quantization(name, name[len("mtq:") :])
    base, plus, kv = name.partition("+")
    if plus and base in QUANT_FORMATS and kv in KV_CACHE_FORMATS:
        config, gpu_only = QUANT_FORMATS[base]
        return quantization(name, config, gpu_only, KV_CACHE_FORMATS[kv])
    raise KeyError(f"unknown optimization {name!r}; known: {', '.join(OPTIMIZATIONS)}, mtq:<NAME>_CFG, "
                   f"or <format>+<{'|'.join(KV_CACHE_FORMATS)}>")
