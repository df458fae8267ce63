"""The Hugging Face ``config.json`` of a zoo architecture: what modelopt's exporter reads the target architecture
from (``pretrained_model_name_or_path``), and what an independent loader builds the exported model from. The
inverse of ``harness.models.sources.hf_spec`` for the Llama shape; a model imported from a Hugging Face checkpoint
exports against its own config instead.
"""

from __future__ import annotations

from typing import Any

from harness.records import ModelSpec


class NotExportable(ValueError):
    """A zoo architecture no Hugging Face architecture describes."""


def llama_config(spec: ModelSpec) -> dict[str, Any]:
    """``LlamaForCausalLM``'s config for ``spec``; refuses what Llama cannot express (biases, GeLU, LayerNorm)."""
    problems = [
        why
        for broken, why in (
            (not spec.swiglu, "a GeLU MLP (Llama's is SwiGLU)"),
            (spec.add_bias_linear, "biased linear layers"),
            (spec.normalization != "RMSNorm", f"{spec.normalization} (Llama's is RMSNorm)"),
            (spec.position_embedding_type != "rope", f"{spec.position_embedding_type} positions (Llama's are RoPE)"),
            (spec.num_moe_experts is not None, "experts"),
            (spec.hybrid_pattern is not None, "Mamba layers"),
        )
        if broken
    ]
    if problems:
        raise NotExportable(f"{spec.name} has {', '.join(problems)}: no Hugging Face Llama describes it")
    heads = spec.num_attention_heads
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": spec.vocab_size,
        "hidden_size": spec.hidden_size,
        "intermediate_size": spec.ffn_hidden_size,
        "num_hidden_layers": spec.num_layers,
        "num_attention_heads": heads,
        "num_key_value_heads": spec.num_query_groups or heads,
        "head_dim": spec.kv_channels or spec.hidden_size // heads,
        "max_position_embeddings": spec.max_seq_len,
        "rms_norm_eps": spec.norm_epsilon,
        "rope_theta": float(spec.rotary_base),
        "hidden_act": "silu",
        "attention_bias": False,
        "mlp_bias": False,
        "tie_word_embeddings": spec.tied_embeddings,
        "torch_dtype": "float32" if spec.dtype == "fp32" else "bfloat16",
    }
