"""Megatron distributed checkpoints (torch_dist) with modelopt state, as Megatron post-training
saves and resumes them: modelopt's mode state under ``<dir>/modelopt_state``, per-module quantizer
state in each module's ``_extra_state`` inside the main checkpoint."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.distributed as dist


def save_checkpoint(model: torch.nn.Module, directory: Path) -> None:
    from megatron.core import dist_checkpointing
    from modelopt.torch.opt.plugins.mcore_dist_checkpointing import save_sharded_modelopt_state

    if dist.get_rank() == 0:
        directory.mkdir(parents=True, exist_ok=True)
    dist.barrier()
    save_sharded_modelopt_state([model], str(directory))
    dist_checkpointing.save(model.sharded_state_dict(), str(directory))


def load_checkpoint(model: torch.nn.Module, directory: Path) -> torch.nn.Module:
    """Restore modelopt modes first (so quantizers exist), then every tensor, strictly."""
    from megatron.core import dist_checkpointing
    from modelopt.torch.opt.plugins.mcore_dist_checkpointing import restore_sharded_modelopt_state

    models = [model]
    restore_sharded_modelopt_state(models, str(directory))
    state = dist_checkpointing.load(models[0].sharded_state_dict(), str(directory))
    models[0].load_state_dict(state, strict=True)
    return models[0]
