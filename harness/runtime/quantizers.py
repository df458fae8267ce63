"""A census of modelopt quantizers, summed over pipeline stages, so layouts can be compared."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.distributed as dist

from harness.runtime.forward import device

KV_QUANTIZER_SUFFIXES = ("k_bmm_quantizer", "v_bmm_quantizer")
EXPERTS = "local_experts."  # in the module names of a megatron MoE layer's experts (SequentialMLP, modelopt's too)


@dataclass(frozen=True)
class QuantizerCensus:
    total: int
    enabled: int
    calibrated: int  # enabled and holding an amax
    kv_enabled: int  # enabled KV-cache quantizers (0 where the attention has no KV quantizer)


def _calibrated(amax: torch.Tensor | None) -> bool:
    """An amax that holds a number: None is a quantizer never calibrated, NaN one a reload did not fill
    (harness.runtime.checkpoint marks restored buffers NaN until the load writes them)."""
    return amax is not None and bool(torch.isfinite(amax).all())


def quantizer_census(model: torch.nn.Module) -> QuantizerCensus:
    """Counts of one model replica over all pipeline stages: dense layers' quantizers from tp rank 0 of
    data-parallel rank 0, MoE experts' from every expert-parallel rank (each holds its own experts)."""
    from megatron.core import parallel_state as ps
    from modelopt.torch.quantization.nn import TensorQuantizer

    dense = ps.get_tensor_model_parallel_rank() == 0 and ps.get_data_parallel_rank() == 0
    expert = ps.get_expert_tensor_parallel_rank() == 0 and ps.get_expert_data_parallel_rank() == 0
    quantizers = [
        (name, m)
        for name, m in model.named_modules()
        if isinstance(m, TensorQuantizer) and (expert if EXPERTS in name else dense)
    ]
    counts = torch.tensor(
        [
            len(quantizers),
            sum(q.is_enabled for _, q in quantizers),
            sum(q.is_enabled and _calibrated(q.amax) for _, q in quantizers),
            sum(q.is_enabled and name.endswith(KV_QUANTIZER_SUFFIXES) for name, q in quantizers),
        ],
        dtype=torch.int64,
        device=device(),
    )
    dist.all_reduce(counts)
    return QuantizerCensus(*(int(c) for c in counts.tolist()))


def expert_amaxes(model: torch.nn.Module) -> dict[str, torch.Tensor | None]:
    """Every enabled expert quantizer's amax (None: never calibrated) by a name that is the same under
    any expert-parallel layout (``layers.<global layer>.experts.<global expert>.<quantizer>``), gathered
    from all expert-parallel ranks: an expert that received no calibration tokens, or amax that
    expert-parallel ranks disagree on, shows here and not in a census of one replica."""
    from megatron.core import parallel_state as ps
    from megatron.core.transformer.transformer_layer import TransformerLayer
    from modelopt.torch.quantization.nn import TensorQuantizer

    mine: dict[str, torch.Tensor | None] = {}
    if ps.get_expert_tensor_parallel_rank() == 0 and ps.get_expert_data_parallel_rank() == 0:
        layers = [
            m for m in model.modules() if isinstance(m, TransformerLayer) and hasattr(m.mlp, "local_expert_indices")
        ]
        for layer in layers:
            for name, quantizer in layer.mlp.named_modules():
                if isinstance(quantizer, TensorQuantizer) and quantizer.is_enabled and EXPERTS in name:
                    local, _, rest = name.partition(EXPERTS)[2].partition(".")
                    key = f"layers.{layer.layer_number - 1}.experts.{layer.mlp.local_expert_indices[int(local)]}.{rest}"
                    mine[key] = None if quantizer.amax is None else quantizer.amax.detach().float().cpu()
    gathered: list[dict[str, torch.Tensor | None]] = [{} for _ in range(dist.get_world_size())]
    dist.all_gather_object(gathered, mine)
    return {key: amax for part in gathered for key, amax in part.items()}


def amax_disagreement(here: dict[str, torch.Tensor | None], there: dict[str, torch.Tensor | None]) -> float:
    """The largest relative difference of any amax element between two calibrations of the same
    quantizers (inf where one side has a quantizer, or an amax, the other lacks)."""
    worst = 0.0
    for key in here.keys() | there.keys():
        a, b = here.get(key), there.get(key)
        if a is None and b is None and key in here and key in there:
            continue  # uncalibrated either way: counted by the census, not a disagreement
        if a is None or b is None or a.shape != b.shape:
            return math.inf
        worst = max(worst, float(((a - b).abs() / b.abs().clamp_min(1e-12)).max()))
    return worst
