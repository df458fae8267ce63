"""Defects of modelopt's Megatron -> Hugging Face exporter: what it writes, quantized or not, and which scale."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from harness.mutations.base import Mutation, patch


def _unquantized(module: str) -> Callable[[], None]:
    """The exporter's quantized-state lookup misses ``module`` (a leaf of the exported names)."""

    def inject() -> None:
        from modelopt.torch.export import unified_export_megatron as exporter

        def make(quantized_state: Any) -> Any:
            def defective(self: Any, layer: Any, dtype: Any = None, prefix: str = "") -> Any:
                if module not in prefix:
                    return quantized_state(self, layer, dtype, prefix=prefix)
                # its weight goes out in high precision, unscaled
                return self._get_weight_bias(layer, dtype, {}), exporter.QUANTIZATION_NONE, 0

            return defective

        patch(exporter.GPTModelExporter, "_get_quantized_state", make)

    return inject


def _input_scale_dropped() -> None:
    from modelopt.torch.export import unified_export_megatron as exporter

    # get_activation_scaling_factor answers None: no input_scale is written, the runtime quantizes no activation
    patch(exporter, "get_activation_scaling_factor", lambda get: lambda module, *args, **kwargs: None)


def _stale_weight_scale() -> None:
    from modelopt.torch.export import unified_export_megatron as exporter

    last: list[Any] = []

    def make(get: Any) -> Any:
        def defective(module: Any, *args: Any, **kwargs: Any) -> Any:
            # a scale cached across calls: each linear is written with the previous linear's weight scale
            scale = get(module, *args, **kwargs)
            stale = last[-1] if last and scale is not None and last[-1].shape == scale.shape else scale
            if scale is not None:
                last.append(scale)
            return stale

        return defective

    patch(exporter, "get_weight_scaling_factor", make)


FP8_TP1 = "export/tiny-llama-trained/tp1pp1/fp8[cpu]"
FP8_TP2 = "export/tiny-llama-trained/tp2pp1/fp8[cpu]"
MUTATIONS = (
    Mutation(
        "export-linear-unquantized",
        "what is exported",
        "the exporter's quantized-state lookup misses down_proj: written in high precision without its scales",
        (FP8_TP1, FP8_TP2),
        _unquantized("down_proj"),
        fast=True,
    ),
    Mutation(
        "export-lm-head-unquantized",
        "what is exported",
        "an untied lm_head's quantized state is not looked up: written in high precision (Model-Optimizer PRs "
        "#2055/#2112)",
        ("export/tiny-llama-trained/tp1pp1/fp8+quant_lm_head[cpu]",),
        _unquantized("lm_head"),
    ),
    Mutation(
        "export-input-scale-dropped",
        "what is exported",
        "get_activation_scaling_factor returns None in the exporter: no layer's input_scale is written",
        (FP8_TP1,),
        _input_scale_dropped,
    ),
    Mutation(
        "export-stale-weight-scale",
        "which scale is exported",
        "get_weight_scaling_factor returns the previous linear's scale: each layer is quantized with another's",
        (FP8_TP1,),
        _stale_weight_scale,
    ),
)
