"""Megatron distributed checkpoints (torch_dist) with modelopt state, as Megatron post-training
saves and resumes them: modelopt's mode state under ``<dir>/modelopt_state``, per-module quantizer
state in each module's ``_extra_state`` inside the main checkpoint. Virtual pipeline chunks are saved
as Megatron training saves them (``model0``, ``model1``, ...: the tensors' keys are global either way,
so a checkpoint saved with virtual stages reloads without them, and back)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from harness.runtime.forward import chunks_of


def save_checkpoint(model: torch.nn.Module, directory: Path) -> None:
    from megatron.core import dist_checkpointing
    from modelopt.torch.opt.plugins.mcore_dist_checkpointing import save_sharded_modelopt_state

    if dist.get_rank() == 0:
        directory.mkdir(parents=True, exist_ok=True)
    dist.barrier()
    chunks = chunks_of(model)
    save_sharded_modelopt_state(chunks, str(directory))
    dist_checkpointing.save(_sharded(chunks), str(directory))


def _sharded(chunks: list[torch.nn.Module]) -> dict[str, Any]:
    if len(chunks) == 1:
        return chunks[0].sharded_state_dict()
    return {f"model{i}": chunk.sharded_state_dict() for i, chunk in enumerate(chunks)}


def load_checkpoint(model: torch.nn.Module, directory: Path) -> torch.nn.Module:
    """Restore modelopt modes first (so quantizers exist), then every tensor (``_load_state``)."""
    from megatron.core import dist_checkpointing
    from modelopt.torch.opt.plugins.mcore_dist_checkpointing import restore_sharded_modelopt_state

    chunks = chunks_of(model)
    # modelopt returns early when the checkpoint holds no modelopt state, but refuses several chunks before it looks
    if (directory / "modelopt_state").exists():
        restore_sharded_modelopt_state(chunks, str(directory))  # replaces a converted chunk in the list
        _mark_unloaded(chunks)
    state = dist_checkpointing.load(_sharded(chunks), str(directory))
    if len(chunks) == 1:
        _load_state(chunks[0], state)
        return chunks[0]
    for i, chunk in enumerate(chunks):
        _load_state(chunk, state[f"model{i}"])
    return torch.nn.ModuleList(chunks)


def _te_extra_state(chunk: torch.nn.Module, key: str) -> bool:
    """Whether ``key`` is an ``_extra_state`` of a module modelopt did not quantize (or of none in this model)."""
    if not key.endswith("._extra_state"):
        return False
    try:
        owner = chunk.get_submodule(key.removesuffix("._extra_state"))
    except AttributeError:
        return True
    return not any(hasattr(owner, name) for name in ("weight_quantizer", "input_quantizer"))


def _load_state(chunk: torch.nn.Module, state: dict[str, Any]) -> None:
    """Every tensor, and every module's extra state except one thing: Transformer Engine's own ``_extra_state``
    (its FP8 metadata, e.g. ``core_attention._extra_state``), which TE is phasing out, may be absent on either
    side. A strict load would fail the day a TE release drops it; modelopt's quantizer state, which lives in
    quantized modules' ``_extra_state``, must still match exactly."""
    result = chunk.load_state_dict(state, strict=False)
    differ = [key for key in (*result.missing_keys, *result.unexpected_keys) if not _te_extra_state(chunk, key)]
    if differ:
        raise RuntimeError(
            f"the checkpoint and the model disagree on {len(differ)} key(s) (missing from one side): "
            + ", ".join(differ[:8])
        )


def _mark_unloaded(chunks: list[torch.nn.Module]) -> None:
    """NaN in every quantizer buffer until the load fills it. modelopt's restore allocates them with
    ``torch.empty`` (TensorQuantizer._reset_pytorch_state_from_metadata), and the allocator often hands back
    the freed model's memory, whose amax is the right value: a buffer the load skipped would pass unseen."""
    from modelopt.torch.quantization.nn import TensorQuantizer

    for chunk in chunks:
        for module in chunk.modules():
            if isinstance(module, TensorQuantizer):
                for buffer in module.buffers(recurse=False):
                    if buffer.is_floating_point():
                        buffer.fill_(float("nan"))
