"""Optimization registry.

Any modelopt quantization config is also reachable as ``mtq:<NAME>_CFG``. A quantization format
composes with a KV-cache format and with config modifiers: ``<format>[+<kv format>][+<modifier>]``
(e.g. ``fp8+fp8_kv``, ``int8_sq+skip_layernorm``).
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
# name -> quant_cfg entries appended to the format's (later entries win in modelopt's list form)
MODIFIERS: dict[str, list[dict]] = {
    # Workaround for the LayerNorm-quantizer checkpoint defect (suites/ckpt_layernorm.yaml): modelopt
    # registers nn.LayerNorm as a quantized module whose input quantizer "*input_quantizer" enables.
    "skip_layernorm": [{"quantizer_name": "*", "parent_class": "nn.LayerNorm", "enable": False}],
}


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
    base, *extras = name.split("+")
    kv = [e for e in extras if e in KV_CACHE_FORMATS]
    modifiers = [e for e in extras if e in MODIFIERS]
    if base in QUANT_FORMATS and extras and len(kv) <= 1 and len(kv) + len(modifiers) == len(extras):
        config, gpu_only = QUANT_FORMATS[base]
        extra_cfg = [entry for modifier in modifiers for entry in MODIFIERS[modifier]]
        return quantization(name, config, gpu_only, KV_CACHE_FORMATS[kv[0]] if kv else None, extra_cfg)
    raise KeyError(f"unknown optimization {name!r}; known: {', '.join(OPTIMIZATIONS)}, mtq:<NAME>_CFG, "
                   f"or <format>[+<{'|'.join(KV_CACHE_FORMATS)}>][+<{'|'.join(MODIFIERS)}>]")
