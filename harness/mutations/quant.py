"""Defects of modelopt's post-training quantization: calibration, scales, synchronisation across ranks."""

from __future__ import annotations

from typing import Any

from harness.mutations.base import Mutation, patch


def _amax_clipped() -> None:
    from modelopt.torch.quantization.calib.max import MaxCalibrator

    # local_amax = 0.9 * reduce_amax(x, axis=reduce_axis): a percentile-like statistic where the max belongs
    patch(MaxCalibrator, "collect", lambda collect: lambda self, x: collect(self, x * 0.9))


def _amax_not_synced() -> None:
    from modelopt.torch.quantization.nn.modules.tensor_quantizer import TensorQuantizer

    # sync_amax_across_distributed_group returns before its all_reduce: each rank keeps its own scale
    patch(TensorQuantizer, "sync_amax_across_distributed_group", lambda sync: lambda self, group: None)


def _int8_step_128() -> None:
    from modelopt.torch.quantization.nn.modules.tensor_quantizer import TensorQuantizer

    def make(get_amax: Any) -> Any:
        def defective(self: Any, inputs: Any) -> Any:
            amax = get_amax(self, inputs)
            # an INT8 scale of amax / 128 where the narrow range needs amax / 127
            return amax * (127 / 128) if self._num_bits == 8 else amax

        return defective

    patch(TensorQuantizer, "_get_amax", make)


def _smoothquant_alpha() -> None:
    from modelopt.torch.quantization.mode import SmoothQuantModeDescriptor

    calib = SmoothQuantModeDescriptor._calib_func
    # the migration strength of SmoothQuant ignored: alpha 0.5 (the paper's default) where the config asks for 1.0
    SmoothQuantModeDescriptor._calib_func = lambda model, forward_loop=None, alpha=1.0, **kw: calib(
        model, forward_loop, alpha=0.5, **kw
    )


TP1_INT8 = "quant/tiny-gpt-trained/tp1pp1/int8_sq[cpu]"
MUTATIONS = (
    Mutation(
        "quant-amax-clipped",
        "calibration statistic",
        "MaxCalibrator.collect keeps 0.9 x the batch's absolute max (amax 10% low: values clip)",
        ("quant/tiny-gpt-trained/tp1pp1/fp8[cpu]", TP1_INT8),
        _amax_clipped,
        fast=True,
    ),
    Mutation(
        "quant-amax-not-synced",
        "scale synchronisation across ranks",
        "TensorQuantizer.sync_amax_across_distributed_group skips its all_reduce (per-rank scales under TP/EP)",
        ("quant/tiny-gpt-trained/tp2pp1~tp1pp1/fp8[cpu]", "quant/tiny-gpt-trained/tp2pp1~tp1pp1/int8_sq[cpu]"),
        _amax_not_synced,
    ),
    Mutation(
        "quant-int8-step-128",
        "a scale's arithmetic",
        "INT8 fake quantization scales by amax / 128 instead of amax / 127 (0.8% coarser grid)",
        (TP1_INT8,),
        _int8_step_128,
    ),
    Mutation(
        "quant-smoothquant-alpha",
        "a calibration parameter",
        "SmoothQuant runs with alpha 0.5 whatever the config asks (1.0)",
        (TP1_INT8,),
        _smoothquant_alpha,
    ),
)
