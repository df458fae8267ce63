"""The zoo: named, deterministic model configurations (``ModelSpec``, harness.records). Plain data,
importable without torch, so suites are validated (layouts against heads, vocabulary and layers) before any
worker starts; harness.runtime.megatron builds them inside a worker.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Literal

from harness.records import ModelSpec, TrainRecipe

# Widths are chosen so each tensor-parallel rank keeps >= 128 inputs at TP=2: INT4 AWQ quantizes in
# blocks of 128, and narrower shards cannot be resharded (measured: hidden 64 fails TP2 -> TP1).
ZOO: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec(
            name="tiny-gpt",
            description="dense GPT, RoPE, RMSNorm, SwiGLU-free MLP; the CPU default",
            num_layers=4,
            hidden_size=256,
            num_attention_heads=8,
            ffn_hidden_size=1024,
            vocab_size=1024,
            max_seq_len=128,
        ),
    )
}
# A distillation student for tiny-gpt-trained (the teacher): half the layers and FFN width, same
# hidden size and vocabulary, so intermediate losses compare hidden states without a projection.
ZOO["tiny-gpt-student"] = replace(
    ZOO["tiny-gpt"],
    name="tiny-gpt-student",
    description="2-layer student of tiny-gpt-trained",
    num_layers=2,
    ffn_hidden_size=512,
)
# GPT-2-style LayerNorm instead of RMSNorm: megatron's local spec then builds torch.nn.LayerNorm,
# which modelopt quantizes (QuantLayerNorm input quantizers), the path of a checkpoint defect.
# Its torch.nn.LayerNorm is the subject, on GPUs too (the modelopt spec's TENorm takes another path).
ZOO["tiny-gpt-layernorm"] = replace(
    ZOO["tiny-gpt"],
    name="tiny-gpt-layernorm",
    description="tiny-gpt with LayerNorm (quantized by modelopt)",
    normalization="LayerNorm",
    layers="local",
)
# A mixture of experts: tiny-gpt's attention, 4 experts of half its FFN width per layer, top-2 routing (a
# token's active FFN width is tiny-gpt's, as fine-grained MoEs split theirs). No biases: megatron refuses
# bias in MoE with expert TP.
ZOO["tiny-moe"] = replace(
    ZOO["tiny-gpt"],
    name="tiny-moe",
    description="tiny-gpt with 4 experts (half its FFN width) per layer, top-2",
    num_moe_experts=4,
    ffn_hidden_size=512,
    add_bias_linear=False,
)
# Llama's shape (SwiGLU, no biases, RMSNorm, RoPE, grouped-query attention) with an FFN that INT4 AWQ's
# 128-wide weight blocks do not tile per rank: 688 is 5 blocks and a 48-wide one at TP1, 344 (2 blocks and 88) per
# rank at TP2: the same global block count, partial blocks on both sides, as Llama-2-7B's FFN 11008 at TP4 (2752 per
# rank, 21.5 blocks) and Qwen2.5-7B's 18944 at TP8 (2368, 18.5). suites/ckpt_llama.yaml reshards it.
ZOO["tiny-llama-ffn688"] = replace(
    ZOO["tiny-gpt"],
    name="tiny-llama-ffn688",
    description="Llama-shaped (SwiGLU, no bias, GQA 8/4), FFN 688: INT4 AWQ blocks do not tile its TP2 shards",
    num_layers=2,
    num_query_groups=4,
    ffn_hidden_size=688,
    swiglu=True,
    add_bias_linear=False,
)
# Llama's shape with widths INT4 AWQ's 128-wide blocks tile at TP1 and TP2 (FFN 768: 6 blocks, 3 per rank): the
# subject of the Hugging Face export round trip (suites/export.yaml), whose exporter maps LlamaForCausalLM and packs
# no partial block.
ZOO["tiny-llama"] = replace(
    ZOO["tiny-llama-ffn688"],
    name="tiny-llama",
    description="Llama-shaped (SwiGLU, no bias, RMSNorm, RoPE, GQA 8/4), 2 layers, FFN 768",
    ffn_hidden_size=768,
)
# The same architecture trained on the synthetic corpus: accuracy deltas mean something on it.
# Qwen3-MoE's shape (tiny-llama's attention with per-head RMSNorm on queries and keys; every layer a mixture of 4
# SwiGLU experts of width 384, top-2, renormalised: megatron's softmax over the chosen logits is Qwen3-MoE's
# norm_topk_prob): the MoE subject of the export round trip, whose exporter maps Qwen3MoeForCausalLM.
ZOO["tiny-qwen3-moe"] = replace(
    ZOO["tiny-llama"],
    name="tiny-qwen3-moe",
    description="Qwen3-MoE-shaped (q/k RMSNorm, 4 SwiGLU experts of 384, top-2, GQA 8/4), 2 layers",
    qk_layernorm=True,
    num_moe_experts=4,
    ffn_hidden_size=384,
)
ZOO["tiny-gpt-trained"] = replace(
    ZOO["tiny-gpt"],
    name="tiny-gpt-trained",
    description="tiny-gpt trained on the Markov corpus (cached)",
    recipe=TrainRecipe(),
)
ZOO["tiny-llama-trained"] = replace(
    ZOO["tiny-llama"],
    name="tiny-llama-trained",
    description="tiny-llama trained on the Markov corpus (shipped): the export round trip's subject",
    recipe=TrainRecipe(),
)
ZOO["tiny-qwen3-moe-trained"] = replace(
    ZOO["tiny-qwen3-moe"],
    name="tiny-qwen3-moe-trained",
    description="tiny-qwen3-moe trained on the Markov corpus (shipped): the MoE export round trip's subject",
    recipe=TrainRecipe(),
)
ZOO["tiny-moe-trained"] = replace(
    ZOO["tiny-moe"],
    name="tiny-moe-trained",
    description="tiny-moe trained on the Markov corpus (shipped)",
    recipe=TrainRecipe(),
)
# Mamba-hybrid in the shape of NVIDIA's Nemotron-H (Mamba-2 layers, few attention layers, MLPs, no position
# embeddings), at tiny-gpt's widths. GPU only: measured on CPU, megatron-core 0.16.1 cannot import its Mamba
# layer spec ("No module named 'triton'") and 0.19.2 (with triton) refuses to build MambaMixer ("MambaSSM is
# not installed"); mamba_ssm's selective-scan and causal-conv1d kernels are CUDA / Triton-on-GPU code.
ZOO["tiny-mamba-hybrid"] = replace(
    ZOO["tiny-gpt"],
    name="tiny-mamba-hybrid",
    description="Mamba-hybrid (M*M-: Mamba-2, attention, Mamba-2, MLP), GPU only",
    hybrid_pattern="M*M-",
    position_embedding_type="none",
    gpu_only="Mamba layers need mamba_ssm's selective-scan and causal-conv1d kernels (CUDA / Triton on a GPU); on CPU "
    "megatron-core 0.16.1 cannot import its Mamba spec (No module named 'triton') and 0.19.2 refuses to build "
    "MambaMixer (MambaSSM is not installed)",
)


# CPU: megatron-core's own modules (Transformer Engine needs CUDA). GPU: as Megatron post-training builds.
LAYERS_BY_PLATFORM: dict[str, Literal["local", "modelopt"]] = {"cpu": "local", "gpu": "modelopt"}
