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

# The epsilon of each number format: 2^-mantissa bits for floats (FP8 E4M3 3 bits, FP4 E2M1 1 bit), one step
# of the symmetric range for integers (INT8 1/127, INT4 1/7); a config the harness does not know gets FP4's.
FP8_EPS, INT8_EPS, INT4_EPS, FP4_EPS = 2.0**-3, 1 / 127, 1 / 7, 2.0**-1

# name -> (modelopt config, why it cannot run on CPU, the narrowest format's epsilon, the input block of its static
# block-quantized weights: modelopt 0.47's INT4_AWQ_CFG and W4A8_AWQ_BETA_CFG say block_sizes {-1: 128, static};
# NVFP4's blocks are dynamic, with no per-block amax in the checkpoint)
QUANT_FORMATS: dict[str, tuple[str, str | None, float, int | None]] = {
    "fp8": ("FP8_DEFAULT_CFG", None, FP8_EPS, None),
    "int8_sq": ("INT8_SMOOTHQUANT_CFG", None, INT8_EPS, None),
    "int4_awq": ("INT4_AWQ_CFG", None, INT4_EPS, 128),
    "w4a8_awq": ("W4A8_AWQ_BETA_CFG", None, INT4_EPS, 128),
    "nvfp4": ("NVFP4_DEFAULT_CFG", _CPU_BLOCK_QUANT, FP4_EPS, None),
}
KV_CACHE_FORMATS: dict[str, str] = {"fp8_kv": "FP8_KV_CFG", "nvfp4_kv": "NVFP4_KV_CFG"}
# name -> quant_cfg entries appended to the format's (later entries win in modelopt's list form)
MODIFIERS: dict[str, list[dict]] = {
    # Workaround for the LayerNorm-quantizer checkpoint defect (suites/ckpt_layernorm.yaml): modelopt
    # registers nn.LayerNorm as a quantized module whose input quantizer "*input_quantizer" enables.
    "skip_layernorm": [{"quantizer_name": "*", "parent_class": "nn.LayerNorm", "enable": False}],
    # modelopt's configs leave the output layer unquantized ("*output_layer*" disabled); this quantizes its weight
    # and input with the format's settings, the path an untied lm_head takes through export (Model-Optimizer PRs
    # #2055/#2112: exported in high precision instead of quantized).
    "quant_lm_head": [
        {"quantizer_name": "*output_layer.weight_quantizer", "enable": True},
        {"quantizer_name": "*output_layer.input_quantizer", "enable": True},
    ],
}


def _none(model: torch.nn.Module, forward_loop: ForwardLoop) -> torch.nn.Module:
    return model


OPTIMIZATIONS: dict[str, Optimization] = {
    "none": Optimization("none", "the model as built", _none),
    **{
        name: quantization(name, config, epsilon, gpu_only, weight_block=block)
        for name, (config, gpu_only, epsilon, block) in QUANT_FORMATS.items()
    },
}


def get_optimization(name: str) -> Optimization:
    if name in OPTIMIZATIONS:
        return OPTIMIZATIONS[name]
    if name.startswith("mtq:") and name.endswith("_CFG"):
        return quantization(name, name[len("mtq:") :], FP4_EPS)
    base, *extras = name.split("+")
    kv = [e for e in extras if e in KV_CACHE_FORMATS]
    modifiers = [e for e in extras if e in MODIFIERS]
    if base in QUANT_FORMATS and extras and len(kv) <= 1 and len(kv) + len(modifiers) == len(extras):
        config, gpu_only, epsilon, block = QUANT_FORMATS[base]
        extra_cfg = [entry for modifier in modifiers for entry in MODIFIERS[modifier]]
        kv_config = KV_CACHE_FORMATS[kv[0]] if kv else None
        return quantization(
            name, config, epsilon, gpu_only, kv_config, extra_cfg, block, output_layer="quant_lm_head" in modifiers
        )
    raise KeyError(
        f"unknown optimization {name!r}; known: {', '.join(OPTIMIZATIONS)}, mtq:<NAME>_CFG, "
        f"or <format>[+<{'|'.join(KV_CACHE_FORMATS)}>][+<{'|'.join(MODIFIERS)}>]"
    )
