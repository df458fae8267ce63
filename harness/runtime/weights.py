"""Shipped weights: whole (unsharded) tensors in safetensors, cut to any layout at load.

The tensors are keyed and shaped the way megatron's distributed checkpoints key them
(``sharded_state_dict``: global names, layers stacked on a leading axis, tensor-parallel shards
placed by their global offsets), so one file serves TP1 and TP2, PP1 and PP2 alike, and the format
belongs to no torch or megatron-core version: safetensors is plain bytes plus a JSON header.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import torch
import torch.distributed as dist

from harness.runtime.forward import chunks_of


def _sharded_tensors(model: torch.nn.Module) -> Iterator[object]:
    from megatron.core import parallel_state as ps
    from megatron.core.dist_checkpointing.dict_utils import nested_values
    from megatron.core.dist_checkpointing.mapping import ShardedTensor, ShardedTensorFactory

    # modelopt's draft heads read the data-parallel group from the metadata (megatron's own modules default it)
    metadata = {"dp_cp_group": ps.get_data_parallel_group(with_context_parallel=True)}
    states = [chunk.sharded_state_dict(metadata=metadata) for chunk in chunks_of(model)]
    for value in (value for state in states for value in nested_values(state)):
        if isinstance(
            value, ShardedTensorFactory
        ):  # a gated MLP's fc1 (EAGLE's draft layer): two halves, views of one weight
            yield from (built for built in nested_values(value.build()) if isinstance(built, ShardedTensor))
        elif isinstance(value, ShardedTensor):
            yield value


def whole_tensors(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Every tensor of ``model`` (built under TP1/PP1) at its global shape."""
    from megatron.core import parallel_state as ps

    if ps.get_tensor_model_parallel_world_size() * ps.get_pipeline_model_parallel_world_size() != 1:
        raise ValueError("whole tensors are exported from a TP1/PP1 model, which holds every shard")
    out: dict[str, torch.Tensor] = {}
    for sharded in _sharded_tensors(model):
        whole = out.setdefault(sharded.key, torch.zeros(sharded.global_shape, dtype=sharded.data.dtype))
        whole[sharded.global_slice()] = sharded.data.detach().cpu()
    return out


def save_whole(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str]) -> None:
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in sorted(tensors.items())}, str(path), metadata=metadata)


def load_whole(model: torch.nn.Module, path: Path, *, partial: bool = False) -> int:
    """Copy this rank's shard of every tensor in ``path`` into ``model`` under the current layout;
    returns how many tensors were filled. Every model tensor must be in the file unless ``partial``
    (draft heads, which fill only their own), and every file tensor must fit the model."""
    from safetensors import safe_open

    filled, missing = 0, []
    with safe_open(str(path), framework="pt") as source:
        names = set(source.keys())
        used: set[str] = set()
        for sharded in _sharded_tensors(model):
            if sharded.key not in names:
                missing.append(sharded.key)
                continue
            whole = source.get_slice(sharded.key)
            if tuple(whole.get_shape()) != tuple(sharded.global_shape):
                raise ValueError(
                    f"{path}: {sharded.key} has shape {tuple(whole.get_shape())}, the model wants "
                    f"{tuple(sharded.global_shape)}"
                )
            piece = whole[sharded.global_slice()]
            with torch.no_grad():
                sharded.data.copy_(piece.reshape(sharded.data.shape))
            used.add(sharded.key)
            filled += 1
    if missing and not partial:
        raise ValueError(f"{path} lacks {len(missing)} tensor(s) the model has: {', '.join(sorted(set(missing))[:5])}")
    if not used:
        raise ValueError(f"{path}: none of its tensors belongs to this model")
    if dist.is_initialized():
        dist.barrier()
    return filled
