"""A census of modelopt quantizers, summed over pipeline stages, so layouts can be compared."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist

from harness.runtime.forward import device


@dataclass(frozen=True)
class QuantizerCensus:
    total: int
    enabled: int
    calibrated: int  # enabled and holding an amax


def quantizer_census(model: torch.nn.Module) -> QuantizerCensus:
    """Counts of one tensor-parallel replica (tp rank 0, dp rank 0) over all pipeline stages."""
    from megatron.core import parallel_state as ps
    from modelopt.torch.quantization.nn import TensorQuantizer

    quantizers = [m for m in model.modules() if isinstance(m, TensorQuantizer)]
    counts = torch.tensor(
        [len(quantizers), sum(q.is_enabled for q in quantizers), sum(q.is_enabled and q.amax is not None for q in quantizers)],
        dtype=torch.int64,
    )
    counted = ps.get_tensor_model_parallel_rank() == 0 and ps.get_data_parallel_rank() == 0
    counts = (counts if counted else torch.zeros_like(counts)).to(device())
    dist.all_reduce(counts)
    total, enabled, calibrated = (int(c) for c in counts.tolist())
    return QuantizerCensus(total, enabled, calibrated)
