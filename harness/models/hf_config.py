"""The Hugging Face ``config.json`` of a zoo architecture: what modelopt's exporter reads the target architecture
from (``pretrained_model_name_or_path``), and what an independent loader builds the exported model from. The
inverse of ``harness.models.sources.hf_spec`` for the Llama and Qwen3-MoE shapes; a model imported from a Hugging
Face checkpoint exports against its own config instead.
"""

from __future__ import annotations

from typing import Any

from harness.records import ModelSpec


class NotExportable(ValueError):
    """A zoo architecture no Hugging Face architecture describes."""


def _refuse(spec: ModelSpec, family: str, moe: bool) -> None:
    """What neither Hugging Face family here expresses (biases, GeLU, LayerNorm, Mamba), and the one axis that
    separates them: experts (Qwen3-MoE, with per-head q/k norms) or a dense MLP without them (Llama)."""
    problems = [
        why
        for broken, why in (
            (not spec.swiglu, f"a GeLU MLP ({family}'s is SwiGLU)"),
            (spec.add_bias_linear, "biased linear layers"),
            (spec.normalization != "RMSNorm", f"{spec.normalization} ({family}'s is RMSNorm)"),
            (spec.position_embedding_type != "rope", f"{spec.position_embedding_type} positions ({family}'s are RoPE)"),
            ((spec.num_moe_experts is not None) != moe, "experts" if not moe else "no experts"),
            (moe and not spec.qk_layernorm, "no query/key norms (Qwen3-MoE's has them)"),
            (not moe and spec.qk_layernorm, "query/key norms"),
            (spec.hybrid_pattern is not None, "Mamba layers"),
        )
        if broken
    ]
    if problems:
        raise NotExportable(f"{spec.name} has {', '.join(problems)}: no Hugging Face {family} describes it")


def _common(spec: ModelSpec) -> dict[str, Any]:
    heads = spec.num_attention_heads
    return {
        "vocab_size": spec.vocab_size,
        "hidden_size": spec.hidden_size,
        "num_hidden_layers": spec.num_layers,
        "num_attention_heads": heads,
        "num_key_value_heads": spec.num_query_groups or heads,
        "head_dim": spec.kv_channels or spec.hidden_size // heads,
        "max_position_embeddings": spec.max_seq_len,
        "rms_norm_eps": spec.norm_epsilon,
        "rope_theta": float(spec.rotary_base),
        "hidden_act": "silu",
        "attention_bias": False,
        "tie_word_embeddings": spec.tied_embeddings,
        "torch_dtype": "float32" if spec.dtype == "fp32" else "bfloat16",
    }


def llama_config(spec: ModelSpec) -> dict[str, Any]:
    """``LlamaForCausalLM``'s config for ``spec``; refuses what Llama cannot express (biases, GeLU, LayerNorm)."""
    _refuse(spec, "Llama", moe=False)
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        **_common(spec),
        "intermediate_size": spec.ffn_hidden_size,
        "mlp_bias": False,
    }


def qwen3_moe_config(spec: ModelSpec) -> dict[str, Any]:
    """``Qwen3MoeForCausalLM``'s config: every layer a mixture of ``spec``'s experts (megatron's
    ``ffn_hidden_size`` is each expert's width), top-k renormalised (megatron's softmax over the chosen logits,
    the default ``moe_router_pre_softmax: false``, is Qwen3-MoE's ``norm_topk_prob``)."""
    _refuse(spec, "Qwen3-MoE", moe=True)
    if spec.moe_router_pre_softmax:
        raise NotExportable(f"{spec.name} routes by a softmax over every expert, unrenormalised: Qwen3-MoE does not")
    return {
        "architectures": ["Qwen3MoeForCausalLM"],
        "model_type": "qwen3_moe",
        **_common(spec),
        "intermediate_size": spec.ffn_hidden_size,  # a dense MLP's width: unused, every layer is sparse
        "moe_intermediate_size": spec.ffn_hidden_size,
        "num_experts": spec.num_moe_experts,
        "num_experts_per_tok": spec.moe_router_topk,
        "norm_topk_prob": True,
        "decoder_sparse_step": 1,
        "mlp_only_layers": [],
        "output_router_logits": False,
    }


def hf_config(spec: ModelSpec) -> dict[str, Any]:
    """The Hugging Face family that describes ``spec``: Qwen3-MoE with experts, Llama without."""
    return qwen3_moe_config(spec) if spec.num_moe_experts is not None else llama_config(spec)
