"""Optimization registry. Any modelopt quantization config is also reachable as ``mtq:<NAME>_CFG``."""

from __future__ import annotations

from typing import TYPE_CHECKING

from harness.optimizations.base import ForwardLoop, Optimization
from harness.optimizations.quantize import quantization

if TYPE_CHECKING:
    import torch

_CPU_BLOCK_QUANT = "needs CUDA: modelopt's dynamic block quantization requires amax on a CUDA tensor"


def _none(model: torch.nn.Module, forward_loop: ForwardLoop) -> torch.nn.Module:
    return model


OPTIMIZATIONS: dict[str, Optimization] = {
    opt.name: opt
    for opt in (
        Optimization("none", "the model as built", _none),
        quantization("fp8", "FP8_DEFAULT_CFG"),
        quantization("int8_sq", "INT8_SMOOTHQUANT_CFG"),
        quantization("int4_awq", "INT4_AWQ_CFG"),
        quantization("w4a8_awq", "W4A8_AWQ_BETA_CFG"),
        quantization("nvfp4", "NVFP4_DEFAULT_CFG", gpu_only=_CPU_BLOCK_QUANT),
    )
}


def get_optimization(name: str) -> Optimization:
    if name in OPTIMIZATIONS:
        return OPTIMIZATIONS[name]
    if name.startswith("mtq:") and name.endswith("_CFG"):
        return quantization(name, name[len("mtq:") :])
    raise KeyError(f"unknown optimization {name!r}; known: {', '.join(OPTIMIZATIONS)} (or mtq:<NAME>_CFG)")
