"""Defects of megatron-core's mixture-of-experts routing."""

from __future__ import annotations

from typing import Any

from harness.mutations.base import Mutation


def _pre_softmax_flipped() -> None:
    import megatron.core.transformer.moe.router as router

    route = router.topk_routing_with_score_function

    def defective(logits: Any, topk: int, use_pre_softmax: bool = False, *args: Any, **kwargs: Any) -> Any:
        # use_pre_softmax inverted: the chosen experts' weights renormalised where they should not be (or not where they
        # should)
        return route(logits, topk, not use_pre_softmax, *args, **kwargs)

    router.topk_routing_with_score_function = defective


MUTATIONS = (
    Mutation(
        "moe-router-pre-softmax-flipped",
        "a router choice",
        "TopKRouter passes use_pre_softmax inverted to topk_routing_with_score_function (expert weights renormalised "
        "the other way)",
        ("quant-moe/tiny-moe-trained/tp1pp1/fp8[cpu]", "kd-moe/tiny-moe/tp1pp1/logits/none[cpu]"),
        _pre_softmax_flipped,
    ),
)
