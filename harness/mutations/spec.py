"""Defects of modelopt's Megatron draft modules: which head drafts which position, what the draft
sees, and what drafting costs."""

from __future__ import annotations

import time
from typing import Any

from harness.mutations.base import Mutation, patch


def _heads_reversed() -> None:
    from modelopt.torch.speculative.plugins.megatron_medusa import _DynamicMedusaGPTModel

    # draft_logits.insert(0, new_logits) for draft_logits.append(new_logits): head k drafts position steps + 1 - k
    patch(_DynamicMedusaGPTModel, "_medusa_forward", lambda forward: lambda self, hidden: forward(self, hidden)[::-1])


def _stale_hidden() -> None:
    from modelopt.torch.speculative.plugins.megatron_eagle import _DynamicEagleGPTModel

    def make(forward: Any) -> Any:
        def defective(self: Any, eagle_inputs: dict, *args: Any, **kwargs: Any) -> Any:
            hidden, logits, _ = forward(self, eagle_inputs, *args, **kwargs)
            # the next draft step is fed the hidden states it was given, not the ones it produced: the first
            # draft is right, every later one drafts from a stale state
            return hidden, logits, eagle_inputs["hidden_states"]

        return defective

    patch(_DynamicEagleGPTModel, "_eagle_forward", make)


def _thrice(forward: Any) -> Any:
    def defective(self: Any, *args: Any, **kwargs: Any) -> Any:
        for _ in range(2):
            forward(self, *args, **kwargs)  # work done and thrown away: the draft module costs three times as much
        return forward(self, *args, **kwargs)

    return defective


def _draft_module_slower() -> None:
    from modelopt.torch.speculative.plugins.megatron_eagle import _DynamicEagleGPTModel
    from modelopt.torch.speculative.plugins.megatron_medusa import _DynamicMedusaGPTModel

    patch(_DynamicMedusaGPTModel, "_medusa_forward", _thrice)
    patch(_DynamicEagleGPTModel, "_eagle_forward", _thrice)


def _loop_slower() -> None:
    from modelopt.torch.speculative.plugins.megatron_eagle import _DynamicEagleGPTModel
    from modelopt.torch.speculative.plugins.megatron_medusa import _DynamicMedusaGPTModel

    def make(generate: Any) -> Any:
        def defective(self: Any, *args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            result = generate(self, *args, **kwargs)
            time.sleep(0.1 * (time.perf_counter() - start))  # the drafting loop 10% slower
            return result

        return defective

    patch(_DynamicMedusaGPTModel, "pseudo_speculative_generate", make)
    patch(_DynamicEagleGPTModel, "pseudo_speculative_generate", make)


MEDUSA = "spec/tiny-gpt-trained/tp1pp1/medusa-k2-t150/none[cpu]"
EAGLE3 = "spec/tiny-gpt-trained/tp1pp1/eagle3-k2-t150/none[cpu]"
MUTATIONS = (
    Mutation(
        "spec-medusa-heads-reversed",
        "a draft position",
        "Medusa's heads draft the positions in reverse order (head k's logits at position steps + 1 - k)",
        (MEDUSA,),
        _heads_reversed,
    ),
    Mutation(
        "spec-eagle-stale-hidden",
        "what the draft sees",
        "EAGLE's later draft steps are fed the hidden states the step was given, not the ones it produced",
        (EAGLE3,),
        _stale_hidden,
    ),
    Mutation(
        "spec-draft-module-3x",
        "a slowed code path",
        "the draft module's forward runs three times (its result once)",
        (MEDUSA, EAGLE3),
        _draft_module_slower,
    ),
    Mutation(
        "spec-draft-loop-10pct",
        "a slowed code path",
        "pseudo_speculative_generate 10% slower (a drafting step's overhead)",
        (MEDUSA, EAGLE3),
        _loop_slower,
    ),
)
