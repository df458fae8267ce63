"""A census of modelopt quantizers, summed over pipeline stages, so layouts can be compared."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist

from harness.runtime.forward import device

KV_QUANTIZER_SUFFIXES = ("k_bmm_quantizer", "v_bmm_quantizer")


@dataclass(frozen=True)
class QuantizerCensus:
    total: int
    enabled: int
    calibrated: int  # enabled and holding an amax
    kv_enabled: int  # enabled KV-cache quantizers (0 where the attention has no KV quantizer)


def quantizer_census(model: torch.nn.Module) -> QuantizerCensus:
    """Counts of one tensor-parallel replica (tp rank 0, dp rank 0) over all pipeline stages."""
    from megatron.core import parallel_state as ps
    from modelopt.torch.quantization.nn import TensorQuantizer

    quantizers = [(name, m) for name, m in model.named_modules() if isinstance(m, TensorQuantizer)]
    counts = torch.tensor(
        [
            len(quantizers),
            sum(q.is_enabled for _, q in quantizers),
            sum(q.is_enabled and q.amax is not None for _, q in quantizers),
            sum(q.is_enabled and name.endswith(KV_QUANTIZER_SUFFIXES) for name, q in quantizers),
        ],
        dtype=torch.int64,
        device=device(),
    )
    counted = ps.get_tensor_model_parallel_rank() == 0 and ps.get_data_parallel_rank() == 0
    counts = counts if counted else torch.zeros_like(counts)
    dist.all_reduce(counts)
    return QuantizerCensus(*(int(c) for c in counts.tolist()))
