"""Forward passes through megatron's own pipeline schedules, so PP cases use real p2p sends.

Every function returns full-vocabulary logits on every rank of the model-parallel group: checks
compare them wherever they run, whatever the layout.
"""

from __future__ import annotations

import gc
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist


def device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")


def chunks_of(model: torch.nn.Module) -> list[torch.nn.Module]:
    """This rank's model chunks: one, or one per virtual pipeline stage (``runtime.megatron.build_gpt``)."""
    return list(model) if isinstance(model, torch.nn.ModuleList) else [model]


def off_device(model: torch.nn.Module, where: torch.device) -> list[str]:
    """Names of the parameters and buffers of ``model`` that are not on ``where``."""
    return [name for name, tensor in [*model.named_parameters(), *model.named_buffers()] if tensor.device != where]


def on_device(model: torch.nn.Module, what: str) -> torch.nn.Module:
    """``model`` moved to the worker's device, every parameter and buffer checked: modules that
    libraries add after the model was built (modelopt's draft heads, created on the CPU when the
    config says ``use_cpu_initialization``) must not stay behind, or the first GPU forward mixes devices."""
    model = model.to(device())
    stray = off_device(model, device())
    if stray:
        raise RuntimeError(f"{what}: {len(stray)} tensor(s) not on {device()}: {', '.join(stray[:5])}")
    return model


def release_memory() -> None:
    """Collect what was dropped: megatron modules and modelopt quantizers hold each other (and their
    process groups) in reference cycles, so ``del model`` alone frees nothing until the collector runs,
    and on a GPU the allocator keeps the freed blocks cached for this process only."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def fixed_tokens(batch: int, seq: int, vocab: int, seed: int) -> torch.Tensor:
    """Deterministic token ids, identical on every rank and every layout."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (batch, seq), generator=generator).to(device())


def positions(tokens: torch.Tensor) -> torch.Tensor:
    """Position ids ``0..seq-1`` for every row of ``tokens``."""
    return torch.arange(tokens.shape[1], device=tokens.device).unsqueeze(0).expand_as(tokens)


def _identity_loss(output: torch.Tensor, non_loss_data: bool = False) -> torch.Tensor:
    return output


def _forward_step(data_iterator: Any, model: torch.nn.Module) -> tuple[torch.Tensor, Callable[..., Any]]:
    tokens, position_ids = next(data_iterator)
    return model(tokens, position_ids, None), _identity_loss


def context_shard(values: torch.Tensor, cp: int, rank: int) -> torch.Tensor:
    """Megatron's load-balanced context-parallel split (``get_batch_on_this_cp_rank``): the sequence in 2 x cp
    chunks, rank r keeping chunks r and 2cp-1-r (causal attention makes later chunks dearer)."""
    chunks = values.chunk(2 * cp, dim=1)
    return torch.cat([chunks[rank], chunks[2 * cp - 1 - rank]], dim=1)


def context_unshard(parts: list[torch.Tensor]) -> torch.Tensor:
    """The whole sequence from every context-parallel rank's shard (``context_shard``), in rank order."""
    cp = len(parts)
    chunks: list[torch.Tensor] = list(parts) * 2
    for rank, part in enumerate(parts):
        chunks[rank], chunks[2 * cp - 1 - rank] = part.chunk(2, dim=1)
    return torch.cat(chunks, dim=1)


def _context_gather(local: torch.Tensor, cp: int, group: Any) -> torch.Tensor:
    parts = [torch.empty_like(local) for _ in range(cp)]
    dist.all_gather(parts, local.contiguous(), group=group)
    return context_unshard(parts)


@torch.no_grad()
def forward_logits(model: torch.nn.Module, tokens: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """Logits ``[batch, seq, vocab]`` for ``tokens``, broadcast from the last pipeline stage. Sequence
    parallelism splits the sequence over the tensor-parallel ranks, so a length they do not divide (a
    decode step) is right-padded and the padding's logits dropped: causal attention keeps the others exact.
    Context parallelism splits it over the context-parallel ranks as megatron's training does (padded the same
    way to a length 2 x cp divides), and the logits are gathered back.
    Megatron's interleaved schedule (virtual pipeline stages) wants at least ``pp`` microbatches: the batch
    goes through ``pp`` times whole (a row split could change the kernels' reduction order) and the first is kept."""
    from megatron.core import parallel_state as ps
    from megatron.core.pipeline_parallel import get_forward_backward_func

    from harness.runtime.distributed import current_layout

    batch, seq = tokens.shape
    layout = current_layout()
    pad = -seq % ((layout.tp if layout.sp else 1) * (2 * layout.cp if layout.cp > 1 else 1))
    tokens = torch.cat([tokens, tokens.new_zeros(batch, pad)], dim=1) if pad else tokens
    inputs = (tokens, positions(tokens))
    if layout.cp > 1:
        inputs = tuple(context_shard(values, layout.cp, ps.get_context_parallel_rank()) for values in inputs)
    chunks = chunks_of(model)
    microbatches = 1 if len(chunks) == 1 else layout.pp
    store = get_forward_backward_func()(
        forward_step_func=_forward_step,
        data_iterator=[iter([inputs] * microbatches) for _ in chunks] if len(chunks) > 1 else iter([inputs]),
        model=chunks,
        num_microbatches=microbatches,
        seq_length=seq + pad,
        micro_batch_size=batch,
        forward_only=True,
        collect_non_loss_data=True,
    )
    if ps.is_pipeline_last_stage():
        logits = store[0]
        if layout.cp > 1:
            logits = _context_gather(logits, layout.cp, ps.get_context_parallel_group())
        logits = logits[:, :seq].float().contiguous()
    else:
        logits = torch.empty(batch, seq, vocab_size, dtype=torch.float32, device=tokens.device)
    if ps.get_pipeline_model_parallel_world_size() > 1:
        dist.broadcast(
            logits, src=ps.get_pipeline_model_parallel_last_rank(), group=ps.get_pipeline_model_parallel_group()
        )
    return logits


def greedy_decode(model: torch.nn.Module, prompt: torch.Tensor, new_tokens: int, vocab_size: int) -> torch.Tensor:
    """Greedy continuation by full re-forward each step (no KV cache: the decode path under test
    is the model's forward, not an inference engine)."""
    tokens = prompt
    for _ in range(new_tokens):
        logits = forward_logits(model, tokens, vocab_size)
        tokens = torch.cat([tokens, logits[:, -1].argmax(dim=-1, keepdim=True)], dim=1)
    return tokens[:, prompt.shape[1] :]
