"""Draft algorithms: how each is converted with modelopt (``mtsp.convert``'s mode list) and how it
proposes tokens. Importable without torch (the driver reads names and CPU blockers to schedule
cases); the functions import what they need when a worker calls them. A new algorithm is one entry.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class HeadRecipe:
    """How the harness trains draft heads: on the base model's own greedy continuations of corpus
    prefixes (self-distillation), the base frozen."""

    steps: int = 150
    batch_size: int = 8
    prefix_len: int = 8
    seq_len: int = 40
    lr: float = 3e-3
    seed: int = 4321


@dataclass(frozen=True)
class DraftAlgorithm:
    name: str
    modes: Callable[[int, torch.dtype], list[tuple[str, dict]]]  # (draft steps, the base's dtype) -> mtsp.convert's mode list
    # (model, prefix [1, L], steps) -> (base token [1, 1], draft tokens [1, steps])
    draft: Callable[[torch.nn.Module, torch.Tensor, int], tuple[torch.Tensor, torch.Tensor]]
    cpu_blocker: str | None = None  # why it cannot run on CPU, if it cannot
    prepare: Callable[[torch.nn.Module], None] = lambda model: None  # after mtsp.convert


def _quiet_medusa(model: torch.nn.Module) -> None:
    model.medusa_report_acc = False  # else every training step gathers the head logits and prints accuracies


def _medusa_draft(model: torch.nn.Module, prefix: torch.Tensor, steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    from harness.runtime.forward import positions

    base, drafts = model.pseudo_speculative_generate(prefix, positions(prefix), None)  # one token per head
    return base, drafts[:, :steps]


def _eagle_draft(model: torch.nn.Module, prefix: torch.Tensor, steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    return model.pseudo_speculative_generate(prefix, steps=steps)


def _eagle_modes(config_name: str) -> Callable[[int, torch.dtype], list[tuple[str, dict]]]:
    def modes(steps: int, dtype: torch.dtype) -> list[tuple[str, dict]]:
        import modelopt.torch.speculative as mtsp

        config = copy.deepcopy(getattr(mtsp, config_name)["config"])
        # modelopt's default draft is bfloat16 whatever the base; Transformer Engine refuses mixed
        # parameter dtypes in one model, so the draft takes the base's.
        config["eagle_architecture_config"]["torch_dtype"] = str(dtype).removeprefix("torch.")
        return [("eagle", config)]

    return modes


_NEEDS_TE = ("modelopt's Megatron EAGLE module is built from Transformer Engine layers (TENorm, TELinear, and "
             "TEDotProductAttention through get_gpt_modelopt_spec), and Transformer Engine needs CUDA; without it the "
             "spec holds megatron's MagicMock placeholder, whose deepcopy raises \"cannot pickle 'cell' object\"")

ALGORITHMS: dict[str, DraftAlgorithm] = {
    "medusa": DraftAlgorithm("medusa", lambda steps, dtype: [("medusa", {"medusa_num_heads": steps, "medusa_num_layers": 1})], _medusa_draft,
                             prepare=_quiet_medusa),
    "eagle3": DraftAlgorithm("eagle3", _eagle_modes("EAGLE3_DEFAULT_CFG"), _eagle_draft, _NEEDS_TE),
    "eagle_mtp": DraftAlgorithm("eagle_mtp", _eagle_modes("EAGLE_MTP_DEFAULT_CFG"), _eagle_draft, _NEEDS_TE),
}


