"""Per-layer outputs of a model on fixed tokens, and how far a second forward's outputs moved from them
(the signal-to-quantization-noise ratio per decoder layer), so a quantization failure names its layer."""

from __future__ import annotations

import math

import torch
import torch.distributed as dist

from harness.runtime.forward import chunks_of, device, forward_logits

# 10 log10(1 / (2^-52)^2): outputs equal to fp64 resolution. A finite stand-in for "identical" keeps
# baselines plain JSON numbers (and a defect that switches quantization off still shows: it jumps here).
EXACT_SQNR_DB = 20 * 52 * math.log10(2)


@torch.no_grad()
def layer_outputs(model: torch.nn.Module, tokens: torch.Tensor, vocab_size: int) -> dict[int, torch.Tensor]:
    """This rank's decoder layers' outputs for ``tokens``, by megatron's global 1-based ``layer_number``
    (``[seq, batch, hidden]``, or this rank's sequence shard under sequence parallelism), fp64 on the host."""
    captured: dict[int, torch.Tensor] = {}

    def keep(number: int, output: object) -> None:
        captured[number] = (output[0] if isinstance(output, tuple) else output).detach().double().cpu()

    handles = [
        layer.register_forward_hook(lambda module, args, output, n=layer.layer_number: keep(n, output))
        for chunk in chunks_of(model)
        for layer in chunk.decoder.layers
    ]
    try:
        forward_logits(model, tokens, vocab_size)
    finally:
        for handle in handles:
            handle.remove()
    return captured


def layer_sqnr_db(base: dict[int, torch.Tensor], moved: dict[int, torch.Tensor]) -> dict[int, float]:
    """SQNR in dB of every decoder layer of the model (all pipeline stages), the same on every rank."""
    from megatron.core import parallel_state as ps

    from harness.runtime.distributed import current_layout

    numbers = sorted(base)
    energy = torch.tensor(
        [[float((base[n] ** 2).sum()), float(((moved[n] - base[n]) ** 2).sum())] for n in numbers],
        dtype=torch.float64,
        device=device(),
    ).reshape(-1, 2)  # NCCL reduces device tensors only
    if current_layout().sp and numbers:  # each tensor-parallel rank holds a shard of the sequence
        dist.all_reduce(energy, group=ps.get_tensor_model_parallel_group())
    local = {n: (float(signal), float(noise)) for n, (signal, noise) in zip(numbers, energy.tolist(), strict=True)}
    gathered: list[dict[int, tuple[float, float]]] = [{} for _ in range(dist.get_world_size())]
    dist.all_gather_object(gathered, local)
    merged = {n: pair for part in gathered for n, pair in part.items()}
    return {
        n: EXACT_SQNR_DB if noise == 0 else min(EXACT_SQNR_DB, 10 * math.log10(signal / noise))
        for n, (signal, noise) in sorted(merged.items())
    }
