"""The optimization registry: formats, KV-cache formats and modifiers compose into one modelopt config."""

from __future__ import annotations

import pytest

from harness.optimizations import get_optimization


def test_kv_cache_formats_compose_with_quantization_formats() -> None:
    assert (
        get_optimization("fp8+fp8_kv").description == "modelopt PTQ with mtq.FP8_DEFAULT_CFG + KV cache mtq.FP8_KV_CFG"
    )
    assert get_optimization("nvfp4+nvfp4_kv").gpu_only is not None
    for bad in ("fp8+int8_kv", "none+fp8_kv", "fp9"):
        with pytest.raises(KeyError):
            get_optimization(bad)


def test_quant_lm_head_quantizes_the_output_layer_with_the_formats_settings() -> None:
    """modelopt's configs leave ``output_layer`` unquantized; the modifier enables its weight and input quantizers
    (FP8: E4M3) and nothing else of it. Real modelopt, on a two-linear model."""
    import torch

    class Tiny(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.linear_fc1, self.output_layer = torch.nn.Linear(8, 8), torch.nn.Linear(8, 8)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.output_layer(self.linear_fc1(x))

    def calibrate(model: torch.nn.Module) -> None:
        model(torch.randn(4, 8, generator=torch.Generator().manual_seed(0)))

    plain = get_optimization("fp8").apply(Tiny(), calibrate)
    assert plain.linear_fc1.weight_quantizer.is_enabled and not plain.output_layer.weight_quantizer.is_enabled
    quantized = get_optimization("fp8+quant_lm_head").apply(Tiny(), calibrate)
    head = quantized.output_layer
    assert head.weight_quantizer.is_enabled and head.input_quantizer.is_enabled
    assert head.weight_quantizer.num_bits == (4, 3) and head.weight_quantizer.amax is not None
    assert not head.output_quantizer.is_enabled
