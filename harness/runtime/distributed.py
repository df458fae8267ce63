"""Per-case parallel state inside a warm worker.

The world process group lives as long as the worker; megatron's model-parallel groups are
created for each layout a case needs and destroyed afterwards, so one pool serves every case of
its world size.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.distributed as dist

from harness.records import Layout


def seed_everything(seed: int) -> None:
    from megatron.core import tensor_parallel

    random.seed(seed)
    torch.manual_seed(seed)
    # On CPU the inference tracker is a no-op tracker: the CUDA RNG states megatron forks for
    # tensor-parallel dropout do not exist there. The models here run without dropout.
    tensor_parallel.model_parallel_cuda_manual_seed(
        seed, inference_rng_tracker=not torch.cuda.is_available(), force_reset_rng=True
    )


_current: list[Layout] = []


def current_layout() -> Layout:
    """The layout ``model_parallel`` set up: what megatron's parallel state does not hold (sequence parallelism)."""
    if not _current:
        raise RuntimeError("no model_parallel layout is active")
    return _current[-1]


@contextmanager
def model_parallel(layout: Layout, seed: int) -> Iterator[None]:
    """Initialise megatron's parallel state for ``layout`` over the whole world; data parallel
    fills the remaining ranks (world 2 with tp1pp1 is two data-parallel replicas)."""
    from megatron.core import parallel_state

    world = dist.get_world_size()
    if world % layout.world_size:
        raise ValueError(f"layout {layout.token} does not divide the world size {world}")
    before = _live_groups()
    parallel_state.initialize_model_parallel(
        tensor_model_parallel_size=layout.tp,
        pipeline_model_parallel_size=layout.pp,
        expert_model_parallel_size=layout.ep,
        virtual_pipeline_model_parallel_size=layout.vpp if layout.vpp > 1 else None,
        context_parallel_size=layout.cp,
    )
    _current.append(layout)
    try:
        seed_everything(seed)
        yield
    finally:
        _current.pop()
        parallel_state.destroy_model_parallel()
        # destroy_model_parallel only forgets megatron's ~20 groups; each gloo group keeps its own
        # transport threads alive. A warm worker runs hundreds of layouts: measured 2000 threads and a
        # load average near 500 after ~20 cases without this.
        for group in _live_groups() - before:
            dist.destroy_process_group(group)


def _live_groups() -> set[dist.ProcessGroup]:
    # torch keeps no public list of a rank's groups; _world.pg_map is where new_group registers them.
    return set(dist.distributed_c10d._world.pg_map) - {dist.GroupMember.WORLD}


def is_reporting_rank() -> bool:
    """The rank that holds full outputs: last pipeline stage, first tensor and data rank."""
    from megatron.core import parallel_state as ps

    return ps.is_pipeline_last_stage() and ps.get_tensor_model_parallel_rank() == 0 and ps.get_data_parallel_rank() == 0
