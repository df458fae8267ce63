"""Defects of distributed checkpointing: what a reload restores, and where each shard goes."""

from __future__ import annotations

from typing import Any

from harness.mutations.base import Mutation, patch


def _not_loaded(fragment: str) -> None:
    """dist_checkpointing.load skips the sharded tensors whose key holds ``fragment`` (as it skips factories
    it cannot merge) and hands back the module's own tensor: whatever modelopt's restore allocated."""
    from megatron.core import dist_checkpointing

    def split(tree: dict) -> tuple[dict, dict]:
        kept, skipped = {}, {}
        for key, value in tree.items():
            if isinstance(value, dict):
                kept[key], skipped[key] = split(value)
            elif fragment in key:
                skipped[key] = value.data
            else:
                kept[key] = value
        return kept, skipped

    def merge(loaded: dict, skipped: dict) -> dict:
        return {**loaded, **{k: merge(loaded.get(k, {}), v) if isinstance(v, dict) else v for k, v in skipped.items()}}

    def make(load: Any) -> Any:
        def defective(sharded_state_dict: dict, *args: Any, **kwargs: Any) -> Any:
            kept, skipped = split(sharded_state_dict)
            return merge(load(kept, *args, **kwargs), skipped)

        return defective

    patch(dist_checkpointing, "load", make)


def _offsets_swapped() -> None:
    import megatron.core.transformer.utils as transformer_utils
    import megatron.core.utils as core_utils
    from megatron.core import parallel_state

    def make(shard: Any) -> Any:
        def defective(*args: Any, **kwargs: Any) -> Any:
            # new_offsets.append((tp_axis + prepend_axis_num, tp_size - 1 - tp_rank, tp_size)): shards saved (and
            # loaded) in reverse rank order. Alike on every rank, so a reload under the same layout cannot see it.
            group = kwargs.get("tp_group") or parallel_state.get_tensor_model_parallel_group()
            rank_of = core_utils.get_pg_rank

            def swapped(pg: Any) -> int:
                rank = rank_of(pg)
                return core_utils.get_pg_size(pg) - 1 - rank if pg is group else rank

            core_utils.get_pg_rank = swapped
            try:
                return shard(*args, **kwargs)
            finally:
                core_utils.get_pg_rank = rank_of

        return defective

    patch(transformer_utils, "make_tp_sharded_tensor_for_checkpoint", make)


class _ReversedRanks:
    """A process group's rank and size, the rank counted from the other end."""

    def __init__(self, group: Any) -> None:
        self.group = group

    def rank(self) -> int:
        return self.group.size() - 1 - self.group.rank()

    def size(self) -> int:
        return self.group.size()


def _expert_offsets_reversed() -> None:
    from megatron.core.transformer.moe.experts import SequentialMLP

    def make(sharded: Any) -> Any:
        def defective(self: Any, *args: Any, **kwargs: Any) -> Any:
            # local_expert_indices_offset = (ep_size - 1 - ep_rank) * num_local_experts: each rank's experts saved
            # (and loaded) under another rank's global indices; a reload under the same layout cannot see it
            group = self.ep_group
            self.ep_group = _ReversedRanks(group)
            try:
                return sharded(self, *args, **kwargs)
            finally:
                self.ep_group = group

        return defective

    patch(SequentialMLP, "sharded_state_dict", make)


SAME_INT8 = "ckpt/tiny-gpt/tp1pp1/int8_sq[cpu]"
MUTATIONS = (
    Mutation(
        "ckpt-amax-not-restored",
        "state restore",
        "dist_checkpointing.load skips the quantizers' _amax tensors of the checkpoint",
        (SAME_INT8, "ckpt/tiny-gpt/tp2pp1->tp1pp1/int8_sq[cpu]", "export/tiny-llama-trained/tp2pp1/fp8[cpu]"),
        lambda: _not_loaded("_quantizer._amax"),
        fast=True,
    ),
    Mutation(
        "ckpt-pre-quant-scale-not-restored",
        "state restore",
        "dist_checkpointing.load skips SmoothQuant's _pre_quant_scale tensors of the checkpoint",
        (SAME_INT8,),
        lambda: _not_loaded("_pre_quant_scale"),
    ),
    Mutation(
        "ckpt-tp-offsets-swapped",
        "where a shard goes",
        "make_tp_sharded_tensor_for_checkpoint writes rank r's shard at offset tp - 1 - r",
        (
            "ckpt/tiny-gpt/tp2pp1/none[cpu]",
            "ckpt/tiny-gpt/tp2pp1->tp1pp1/none[cpu]",
            "ckpt/tiny-gpt/tp1pp1->tp2pp1/none[cpu]",
        ),
        _offsets_swapped,
    ),
    Mutation(
        "ckpt-expert-offsets-reversed",
        "where a shard goes",
        "SequentialMLP.sharded_state_dict places expert-parallel rank r's experts at rank ep - 1 - r's global indices",
        (
            "ckpt-moe/tiny-moe-trained/tp1pp1ep2->tp1pp1/none[cpu]",
            "export-moe/tiny-qwen3-moe-trained/tp1pp1ep2/none[cpu]",
        ),
        _expert_offsets_reversed,
    ),
)
