"""Models a suite declares by where their weights are, not by zoo name: a Hugging Face checkpoint
directory (imported with modelopt's megatron importer) or a megatron ``torch_dist`` checkpoint of a
zoo architecture. Read without torch: the architecture comes from ``config.json``, so layouts are
judged before any worker starts. A path that is not on this machine makes the model unavailable
(its cases skip with that reason) rather than the suite invalid: one suite serves every machine.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

from harness.data.files import expand_path
from harness.models.zoo import ZOO
from harness.records import ModelSpec

# Hugging Face config keys that change the network but that the importer cannot express here.
_UNSUPPORTED_HF = ("attention_bias", "mlp_bias")
# Architectures modelopt's importer maps and the harness describes; value: QK layernorm.
_ARCHITECTURES = {"LlamaForCausalLM": False, "Qwen3ForCausalLM": True, "Qwen3MoeForCausalLM": True}


# Files transformers' AutoTokenizer builds a tokenizer from (fast, sentencepiece, BPE, WordPiece).
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "vocab.txt")


class ModelSourceError(ValueError):
    """A declared model whose checkpoint exists but cannot be described as a megatron GPT."""


def hf_spec(name: str, path: str) -> ModelSpec:
    """The megatron architecture of a Llama-style Hugging Face checkpoint."""
    root = Path(expand_path(path))
    config_file = root / "config.json"
    if not config_file.is_file():
        return _unavailable(name, f"no Hugging Face checkpoint at {root} (config.json not found)")
    config: dict[str, Any] = json.loads(config_file.read_text())
    arch = (config.get("architectures") or ["<none>"])[0]
    if arch not in _ARCHITECTURES:
        raise ModelSourceError(f"{config_file}: architecture {arch}: the harness imports {', '.join(_ARCHITECTURES)}")
    if config.get("hidden_act", "silu") != "silu":
        raise ModelSourceError(
            f"{config_file}: hidden_act {config['hidden_act']!r}: only SiLU-gated (Llama-style) MLPs are supported"
        )
    biased = [key for key in _UNSUPPORTED_HF if config.get(key)]
    if biased:
        raise ModelSourceError(f"{config_file}: {', '.join(biased)} set: biased projections are not supported")
    if not any((root / name).is_file() for name in _TOKENIZER_FILES):
        raise ModelSourceError(
            f"{root}: no tokenizer (none of {', '.join(_TOKENIZER_FILES)}): the cases score text through the "
            "checkpoint's own tokenizer; copy its tokenizer files next to config.json"
        )
    heads = config["num_attention_heads"]
    head_dim = config.get("head_dim") or config["hidden_size"] // heads
    rope = config.get("rope_scaling") or config.get("rope_parameters") or {}
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type not in ("default", "llama3"):
        raise ModelSourceError(f"{config_file}: rope_scaling type {rope_type!r} is not supported (default or llama3)")
    return replace(
        ModelSpec(
            name=name,
            description=f"Hugging Face {arch} from {root}",
            num_layers=config["num_hidden_layers"],
            hidden_size=config["hidden_size"],
            num_attention_heads=heads,
            num_query_groups=config.get("num_key_value_heads", heads),
            ffn_hidden_size=config["intermediate_size"],
            vocab_size=config["vocab_size"],
            max_seq_len=config.get("max_position_embeddings", 4096),
            swiglu=True,
            qk_layernorm=_ARCHITECTURES[arch],
            add_bias_linear=False,
            norm_epsilon=config.get("rms_norm_eps", 1e-5),
            rotary_base=int(config.get("rope_theta", rope.get("rope_theta", 10000))),
            rope_scaling_factor=rope.get("factor") if rope_type == "llama3" else None,
            kv_channels=head_dim if head_dim * heads != config["hidden_size"] else None,
            tied_embeddings=bool(config.get("tie_word_embeddings", False)),
            hf_path=str(root),
        ),
        **_experts(config, config_file),
    )


def _experts(config: dict[str, Any], config_file: Path) -> dict[str, Any]:
    """Qwen3-MoE's experts as megatron's: every layer a mixture (no dense layers in between), each expert
    ``moe_intermediate_size`` wide. Its router softmaxes over all experts, then takes the top k, renormalised
    only with ``norm_topk_prob`` (= megatron's softmax over the top-k logits); without it megatron's pre-softmax."""
    experts = config.get("num_experts") or config.get("num_local_experts")
    if not experts:
        return {}
    if config.get("decoder_sparse_step", 1) != 1 or config.get("mlp_only_layers"):
        raise ModelSourceError(
            f"{config_file}: dense layers between the MoE layers (decoder_sparse_step / mlp_only_layers) "
            "are not supported"
        )
    return {
        "num_moe_experts": int(experts),
        "moe_router_topk": int(config["num_experts_per_tok"]),
        "ffn_hidden_size": int(config["moe_intermediate_size"]),
        "moe_router_pre_softmax": not config.get("norm_topk_prob", False),
    }


def torch_dist_spec(name: str, path: str, like: str) -> ModelSpec:
    """Zoo architecture ``like`` with the weights of a megatron torch_dist checkpoint (a harness
    checkpoint, or a Megatron-LM save folder with ``latest_checkpointed_iteration.txt``)."""
    root = Path(expand_path(path))
    base = replace(ZOO[like], name=name, description=f"{like} from torch_dist checkpoint {root}", recipe=None)
    tracker = root / "latest_checkpointed_iteration.txt"
    if tracker.is_file():
        root = root / f"iter_{int(tracker.read_text().strip()):07d}"
    if not (root / "metadata.json").is_file():
        return replace(
            base, checkpoint=str(root), unavailable=f"no torch_dist checkpoint at {root} (metadata.json not found)"
        )
    return replace(base, checkpoint=str(root))


def _unavailable(name: str, reason: str) -> ModelSpec:
    # A placeholder architecture: nothing is built from it, the case only carries the reason.
    return ModelSpec(
        name=name,
        description=reason,
        num_layers=1,
        hidden_size=1,
        num_attention_heads=1,
        ffn_hidden_size=1,
        vocab_size=1,
        max_seq_len=1,
        unavailable=reason,
    )
