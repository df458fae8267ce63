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


def layout_amaxes(model: torch.nn.Module) -> dict[str, torch.Tensor | None]:
    """Every enabled quantizer's amax outside the MoE experts (those: ``expert_amaxes``) by a name any layout
    shares (decoder layers numbered globally), as the sorted values the tensor-parallel ranks hold together: one
    copy where every rank holds the same tensor (an amax synchronised across ranks), the ranks' shards joined
    otherwise. A reload under another layout keeps every value where it restores the state; sorting leaves where
    each shard lands to the logits, which judge it."""
    from megatron.core import parallel_state as ps
    from megatron.core.transformer.transformer_layer import TransformerLayer
    from modelopt.torch.quantization.nn import TensorQuantizer

    mine: dict[str, torch.Tensor | None] = {}
    if ps.get_data_parallel_rank() == 0:
        layers = {
            f"{name}.": m.layer_number - 1 for name, m in model.named_modules() if isinstance(m, TransformerLayer)
        }
        for name, quantizer in model.named_modules():
            if isinstance(quantizer, TensorQuantizer) and quantizer.is_enabled and EXPERTS not in name:
                prefix = next((p for p in layers if name.startswith(p)), None)
                key = name if prefix is None else f"layers.{layers[prefix]}.{name.removeprefix(prefix)}"
                mine[key] = None if quantizer.amax is None else quantizer.amax.detach().float().flatten().cpu()
    gathered: list[dict[str, torch.Tensor | None]] = [{} for _ in range(dist.get_world_size())]
    dist.all_gather_object(gathered, mine)
    held: dict[str, list[torch.Tensor | None]] = {}
    for part in gathered:
        for key, amax in part.items():
            held.setdefault(key, []).append(amax)
    return {key: _joined(parts) for key, parts in held.items()}


def _joined(parts: list[torch.Tensor | None]) -> torch.Tensor | None:
    present = [p for p in parts if p is not None]
    if len(present) < len(parts):
        return None
    if all(torch.equal(p, present[0]) for p in present):
        return present[0].sort().values
    return torch.cat(present).sort().values


def amax_differences(here: dict[str, torch.Tensor | None], there: dict[str, torch.Tensor | None]) -> dict[str, float]:
    """Per quantizer, the largest relative difference of any amax element between two states of the same
    quantizers (inf where one side has a quantizer, or an amax, the other lacks, or an amax holds NaN: a value a
    reload did not fill). Uncalibrated on both sides is left out: the census counts it."""
    found = {}
    for key in sorted(here.keys() | there.keys()):
        a, b = here.get(key), there.get(key)
        if a is None and b is None and key in here and key in there:
            continue
        if a is None or b is None or a.shape != b.shape:
            found[key] = math.inf
            continue
        worst = float(((a - b).abs() / b.abs().clamp_min(1e-12)).max()) if a.numel() else 0.0
        found[key] = math.inf if math.isnan(worst) else worst
    return found


def amax_disagreement(here: dict[str, torch.Tensor | None], there: dict[str, torch.Tensor | None]) -> float:
    """The largest relative difference of any amax element between two calibrations of the same quantizers."""
    return max(amax_differences(here, there).values(), default=0.0)
