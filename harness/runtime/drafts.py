"""Draft algorithms: how each is converted with modelopt (``mtsp.convert``'s mode list) and how it
proposes tokens. Importable without torch (the driver reads names and CPU blockers to schedule
cases); the functions import what they need when a worker calls them. A new algorithm is one entry.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import version
from typing import TYPE_CHECKING

from packaging.version import Version

if TYPE_CHECKING:
    import torch

    from harness.records import ModelSpec


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


# nvidia-modelopt releases on which the CPU stand-ins for EAGLE's Transformer Engine layers (the eagle-*
# adaptations of harness/runtime/cpu_compat.py) were verified.
VERIFIED_MODELOPT = (Version("0.47.0"), Version("0.48.0"))


def eagle_blocker() -> str | None:
    """Why modelopt's Megatron EAGLE cannot run on a CPU here (None: the eagle-* adaptations apply)."""
    low, high = VERIFIED_MODELOPT
    installed = version("nvidia-modelopt")
    if low <= Version(installed) < high:
        return None
    return (
        f"modelopt's Megatron EAGLE module is built from Transformer Engine layers (CUDA only); their CPU stand-ins "
        f"(harness/runtime/cpu_compat.py, eagle-*) are verified on nvidia-modelopt [{low}, {high}), not {installed}"
    )


@dataclass(frozen=True)
class DraftAlgorithm:
    name: str
    heads_module: str  # the submodule mtsp.convert adds: what shipped heads hold
    modes: Callable[[int, ModelSpec], list[tuple[str, dict]]]  # (draft steps, the base) -> mtsp.convert's mode list
    # (model, prefix [1, L], steps) -> (base token [1, 1], draft tokens [1, steps])
    draft: Callable[[torch.nn.Module, torch.Tensor, int], tuple[torch.Tensor, torch.Tensor]]
    cpu_blocker: Callable[[], str | None] = lambda: None  # why it cannot run on a CPU here, if it cannot
    prepare: Callable[[torch.nn.Module], None] = lambda model: None  # after mtsp.convert
    # The base before mtsp.convert, with the mode's config: where a modelopt defect needs the base adjusted.
    before_convert: Callable[[torch.nn.Module, dict], None] = lambda model, config: None
    # Around a known modelopt defect in training (``SpecParams.workaround``); the suites run one variant without.
    workaround: Callable[[torch.nn.Module], None] = lambda model: None
    # The draft steps its trained heads are built for: Medusa has one head per step; EAGLE one draft module,
    # chained for any number of steps, so its heads ship once (as k1) and serve every step count.
    heads_steps: Callable[[int], int] = lambda steps: steps


def _quiet_medusa(model: torch.nn.Module) -> None:
    model.medusa_report_acc = False  # else every training step gathers the head logits and prints accuracies


def _medusa_draft(model: torch.nn.Module, prefix: torch.Tensor, steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    from harness.runtime.forward import positions

    base, drafts = model.pseudo_speculative_generate(prefix, positions(prefix), None)  # one token per head
    return base, drafts[:, :steps]


def _eagle_draft(model: torch.nn.Module, prefix: torch.Tensor, steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    return model.pseudo_speculative_generate(prefix, steps=steps)


def _eagle_modes(config_name: str) -> Callable[[int, ModelSpec], list[tuple[str, dict]]]:
    def modes(steps: int, base: ModelSpec) -> list[tuple[str, dict]]:
        import modelopt.torch.speculative as mtsp
        import torch

        from harness.runtime.megatron import torch_dtype

        config = copy.deepcopy(getattr(mtsp, config_name)["config"])
        heads = base.num_attention_heads
        config["eagle_architecture_config"].update(
            # modelopt's default draft layer has Llama-3.1-8B's shape and dtype (bfloat16) whatever the base; the
            # draft layer takes its base's (Transformer Engine refuses mixed parameter dtypes in one model).
            torch_dtype=str(torch_dtype(base)).removeprefix("torch."),
            intermediate_size=base.ffn_hidden_size,
            num_attention_heads=heads,
            num_key_value_heads=base.num_query_groups or heads,
            head_dim=base.kv_channels or base.hidden_size // heads,
            rope_theta=base.rotary_base,
        )
        config["eagle_report_acc"] = (
            False  # else every evaluation forward gathers the draft logits and prints accuracies
        )
        if not torch.cuda.is_available():
            # One train-time-test step on CPU: later steps attend through megatron's static inference context,
            # whose mask logic asks Transformer Engine's version (absent there). The heads still draft any number
            # of steps, each from its own previous output.
            config["eagle_ttt_steps"] = 1
        return [("eagle", config)]

    return modes


def _lm_loss_on_a_copy(model: torch.nn.Module) -> None:
    """Known defect (modelopt 0.47.0, fp32 bases): EAGLE's training forward computes the base's LM loss on
    the output logits with megatron's vocab_parallel_cross_entropy, which rewrites fp32 logits in place
    (``.float()`` does not copy them; exp(logits - max) overwrites them), then distils the draft from the
    same tensor: the target is a softmax of probabilities, nearly uniform, and the draft learns nothing
    (trained acceptance length stays at 1.0). bf16 bases are not hit (``.float()`` copies). The same
    megatron behaviour breaks modelopt's logits KD in fp32 (suites/kd.yaml, kd-inplace-lm-loss)."""
    compute = model.compute_language_model_loss
    model.compute_language_model_loss = lambda labels, logits: compute(labels, logits.clone())


def _reuse_base_config(model: torch.nn.Module, config: dict) -> None:
    """Known defect (modelopt 0.47.0): with ``eagle_reuse_base_decoder`` (EAGLE_MTP_DEFAULT_CFG) the draft
    module is built from a copy of the base's TransformerConfig, which lacks fields EagleModule reads:
    ``AttributeError: 'TransformerConfig' object has no attribute 'use_aux_hidden_state'`` at mtsp.convert
    (then ``vocab_size``, ``parallel_draft_step``). The base config gets them from the draft's own config."""
    architecture = config["eagle_architecture_config"]
    for name in ("use_aux_hidden_state", "parallel_draft_step", "parallel_draft_heads_num_layers"):
        if not hasattr(model.config, name):
            setattr(model.config, name, architecture[name])
    if not hasattr(model.config, "vocab_size"):
        model.config.vocab_size = model.vocab_size


ALGORITHMS: dict[str, DraftAlgorithm] = {
    "medusa": DraftAlgorithm(
        "medusa",
        "medusa_heads",
        lambda steps, base: [("medusa", {"medusa_num_heads": steps, "medusa_num_layers": 1})],
        _medusa_draft,
        prepare=_quiet_medusa,
    ),
    "eagle3": DraftAlgorithm(
        "eagle3",
        "eagle_module",
        _eagle_modes("EAGLE3_DEFAULT_CFG"),
        _eagle_draft,
        eagle_blocker,
        workaround=_lm_loss_on_a_copy,
        heads_steps=lambda steps: 1,
    ),
    "eagle_mtp": DraftAlgorithm(
        "eagle_mtp",
        "eagle_module",
        _eagle_modes("EAGLE_MTP_DEFAULT_CFG"),
        _eagle_draft,
        eagle_blocker,
        before_convert=_reuse_base_config,
        workaround=_lm_loss_on_a_copy,
        heads_steps=lambda steps: 1,
    ),
}
