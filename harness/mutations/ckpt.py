"""Defects of distributed checkpointing: what a reload restores, and where each shard goes."""

from __future__ import annotations

from typing import Any

from harness.mutations.base import Mutation, patch


def _not_restored(fragment: str) -> None:
    """Quantized parallel linears ignore the checkpoint's ``fragment`` buffers on load: they keep the values
    modelopt's restore gave them."""
    from modelopt.torch.quantization.plugins.megatron import _MegatronParallelLinear

    def make(load: Any) -> Any:
        def defective(self: Any, state_dict: dict, prefix: str, *args: Any, **kwargs: Any) -> Any:
            own = self.state_dict()
            for key in [k for k in state_dict if k.startswith(prefix) and fragment in k]:
                state_dict[key] = own[key[len(prefix):]].clone()
            return load(self, state_dict, prefix, *args, **kwargs)

        return defective

    patch(_MegatronParallelLinear, "_load_from_state_dict", make)


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


SAME_INT8 = "ckpt/tiny-gpt/tp1pp1/int8_sq[cpu]"
MUTATIONS = (
    Mutation("ckpt-amax-not-restored", "state restore",
             "a quantized parallel linear's _load_from_state_dict drops its quantizers' _amax from the checkpoint",
             (SAME_INT8, "ckpt/tiny-gpt/tp2pp1->tp1pp1/int8_sq[cpu]"), lambda: _not_restored("_quantizer._amax"), fast=True),
    Mutation("ckpt-pre-quant-scale-not-restored", "state restore",
             "a quantized parallel linear's _load_from_state_dict drops SmoothQuant's _pre_quant_scale from the checkpoint",
             (SAME_INT8,), lambda: _not_restored("_pre_quant_scale")),
    Mutation("ckpt-tp-offsets-swapped", "where a shard goes",
             "make_tp_sharded_tensor_for_checkpoint writes rank r's shard at offset tp - 1 - r",
             ("ckpt/tiny-gpt/tp2pp1/none[cpu]", "ckpt/tiny-gpt/tp2pp1->tp1pp1/none[cpu]", "ckpt/tiny-gpt/tp1pp1->tp2pp1/none[cpu]"),
             _offsets_swapped),
)
