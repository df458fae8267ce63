"""Named, deterministic model configurations built with megatron-core.

A zoo entry is plain data, importable without torch, so suites are validated (layouts against
heads, vocabulary and layers) before any worker starts. ``build_gpt`` runs inside a worker.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Literal

from harness.records import Dtype, Layout

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class TrainRecipe:
    """How the harness trains a zoo model on its synthetic corpus (harness.data.corpus)."""

    corpus_seed: int = 0
    seed: int = 1234
    steps: int = 800
    batch_size: int = 16
    seq_len: int = 64
    lr: float = 3e-3
    warmup_steps: int = 30
    mc_rows: int = 8  # rows of each batch that are answered multiple-choice prompts (harness.evals.mmlu)
    answer_weight: float = 8.0  # loss weight of a question's answer letter against 1 for a text token


@dataclass(frozen=True)
class ModelSpec:
    name: str
    description: str
    num_layers: int
    hidden_size: int
    num_attention_heads: int
    ffn_hidden_size: int
    vocab_size: int
    max_seq_len: int
    num_query_groups: int | None = None
    normalization: str = "RMSNorm"
    position_embedding_type: str = "rope"
    swiglu: bool = False  # gated SiLU MLP (Llama) instead of GeLU
    qk_layernorm: bool = False  # RMSNorm on queries and keys per head (Qwen3)
    add_bias_linear: bool = True
    norm_epsilon: float = 1e-5
    rotary_base: int = 10000
    rope_scaling_factor: float | None = None  # Llama 3.1 frequency scaling, when the checkpoint uses it
    kv_channels: int | None = None  # per-head width when it is not hidden_size / num_attention_heads
    tied_embeddings: bool = False
    recipe: TrainRecipe | None = None  # None: random weights; else trained once and cached
    hf_path: str | None = None  # weights (and tokenizer) imported from this Hugging Face directory
    checkpoint: str | None = None  # weights loaded from this megatron torch_dist checkpoint
    unavailable: str | None = None  # why this machine cannot build it (a checkpoint that is not here)
    # Set per case by the suite's dtype axis: parameters and activations (megatron's params_dtype, bf16).
    dtype: Dtype = "fp32"
    # Which megatron layer spec builds it (``layer_spec`` below); None: its platform's (LAYERS_BY_PLATFORM),
    # set per case at expansion. A model whose subject is one norm implementation pins it here.
    layers: Literal["local", "modelopt"] | None = None
    # Mixture of experts: None is a dense MLP; else experts per MoE layer, each token routed to ``moe_router_topk``.
    num_moe_experts: int | None = None
    moe_router_topk: int = 2
    moe_router_pre_softmax: bool = False  # softmax over every expert before the top k (no renormalisation)
    # Mamba-hybrid: megatron's hybrid_override_pattern, one character per layer (M Mamba, * attention, - MLP),
    # built as megatron's MambaModel; None is a GPT.
    hybrid_pattern: str | None = None
    mamba_head_dim: int = 64
    mamba_num_groups: int = 2
    # Why no CPU worker can build it: such cases skip on CPU with the reason (harness.schedule).
    gpu_only: str | None = None

    def layout_errors(self, layout: Layout) -> list[str]:
        """Why ``layout`` cannot shard this model (empty when it can)."""
        tp, pp = layout.tp, layout.pp
        if layout.ep > 1 and self.num_moe_experts is None:
            return [f"ep={layout.ep} (expert parallel) needs a mixture-of-experts model; {self.name} is dense"]
        if self.hybrid_pattern is not None and (layout.pp > 1 or layout.vpp > 1):
            return [f"{self.name} is Mamba-hybrid: the harness builds its hybrid stack without pipeline stages"]
        mamba = [("mamba_num_groups", self.mamba_num_groups, tp, "tp")] if self.hybrid_pattern else []
        checks = [
            *mamba,
            ("num_moe_experts", self.num_moe_experts or layout.ep, layout.ep, "ep"),
            ("num_attention_heads", self.num_attention_heads, tp, "tp"),
            ("num_query_groups", self.num_query_groups or self.num_attention_heads, tp, "tp"),
            ("vocab_size", self.vocab_size, tp, "tp"),
            ("ffn_hidden_size", self.ffn_hidden_size, tp, "tp"),
            ("num_layers", self.num_layers, pp * layout.vpp, "pp x vpp" if layout.vpp > 1 else "pp"),
        ]
        return [
            f"{what} {value} of model {self.name} is not divisible by {axis}={size}"
            for what, value, size, axis in checks
            if size < 1 or value % size
        ]


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
    ZOO["tiny-gpt"], name="tiny-gpt-student", description="2-layer student of tiny-gpt-trained", num_layers=2, ffn_hidden_size=512
)
# GPT-2-style LayerNorm instead of RMSNorm: megatron's local spec then builds torch.nn.LayerNorm,
# which modelopt quantizes (QuantLayerNorm input quantizers), the path of a checkpoint defect.
# Its torch.nn.LayerNorm is the subject, on GPUs too (the modelopt spec's TENorm takes another path).
ZOO["tiny-gpt-layernorm"] = replace(
    ZOO["tiny-gpt"], name="tiny-gpt-layernorm", description="tiny-gpt with LayerNorm (quantized by modelopt)", normalization="LayerNorm",
    layers="local",
)
# A mixture of experts: tiny-gpt's attention, 4 experts of half its FFN width per layer, top-2 routing (a
# token's active FFN width is tiny-gpt's, as fine-grained MoEs split theirs). No biases: megatron refuses
# bias in MoE with expert TP.
ZOO["tiny-moe"] = replace(ZOO["tiny-gpt"], name="tiny-moe", description="tiny-gpt with 4 experts (half its FFN width) per layer, top-2",
                         num_moe_experts=4, ffn_hidden_size=512, add_bias_linear=False)
# The same architecture trained on the synthetic corpus: accuracy deltas mean something on it.
ZOO["tiny-gpt-trained"] = replace(
    ZOO["tiny-gpt"], name="tiny-gpt-trained", description="tiny-gpt trained on the Markov corpus (cached)", recipe=TrainRecipe()
)
ZOO["tiny-moe-trained"] = replace(
    ZOO["tiny-moe"], name="tiny-moe-trained", description="tiny-moe trained on the Markov corpus (shipped)", recipe=TrainRecipe()
)
# Mamba-hybrid in the shape of NVIDIA's Nemotron-H (Mamba-2 layers, few attention layers, MLPs, no position
# embeddings), at tiny-gpt's widths. GPU only: measured on CPU, megatron-core 0.16.1 cannot import its Mamba
# layer spec ("No module named 'triton'") and 0.19.2 (with triton) refuses to build MambaMixer ("MambaSSM is
# not installed"); mamba_ssm's selective-scan and causal-conv1d kernels are CUDA / Triton-on-GPU code.
ZOO["tiny-mamba-hybrid"] = replace(
    ZOO["tiny-gpt"], name="tiny-mamba-hybrid", description="Mamba-hybrid (M*M-: Mamba-2, attention, Mamba-2, MLP), GPU only",
    hybrid_pattern="M*M-", position_embedding_type="none",
    gpu_only="Mamba layers need mamba_ssm's selective-scan and causal-conv1d kernels (CUDA / Triton on a GPU); on CPU "
             "megatron-core 0.16.1 cannot import its Mamba spec (No module named 'triton') and 0.19.2 refuses to build "
             "MambaMixer (MambaSSM is not installed)",
)


# CPU: megatron-core's own modules (Transformer Engine needs CUDA). GPU: as Megatron post-training builds.
LAYERS_BY_PLATFORM: dict[str, Literal["local", "modelopt"]] = {"cpu": "local", "gpu": "modelopt"}


def torch_dtype(spec: ModelSpec) -> torch.dtype:
    import torch

    return {"fp32": torch.float32, "bf16": torch.bfloat16}[spec.dtype]


def _hybrid(spec: ModelSpec, config: Any, parallel_output: bool) -> torch.nn.Module:
    """Megatron's MambaModel with the stack Megatron post-training builds (modelopt's: TE norms, layernorm keys
    remapped like the GPT spec's)."""
    from megatron.core import parallel_state as ps
    from megatron.core.models.mamba import MambaModel
    from megatron.core.post_training.modelopt.mamba.model_specs import get_mamba_stack_modelopt_spec

    from harness.runtime.forward import device

    model = MambaModel(
        config=config,
        mamba_stack_spec=get_mamba_stack_modelopt_spec(remap_te_layernorm=True),
        vocab_size=spec.vocab_size,
        max_sequence_length=spec.max_seq_len,
        hybrid_override_pattern=spec.hybrid_pattern,
        pre_process=ps.is_pipeline_first_stage(),
        post_process=ps.is_pipeline_last_stage(),
        parallel_output=parallel_output,
        share_embeddings_and_output_weights=spec.tied_embeddings,
        position_embedding_type=spec.position_embedding_type,
    )
    return model.to(device()).eval()


class SequenceParallelTorchNorm:
    """A torch norm for sequence-parallel layouts of the local spec: megatron's WrappedTorchNorm refuses
    ``sequence_parallel`` (only apex's and TE's norms take it). A norm is per token, so it runs unchanged
    on a sequence shard; its parameters are marked ``sequence_parallel`` as megatron marks TE's, so a
    training step all-reduces their gradients over the tensor-parallel ranks."""

    def __new__(cls, config: Any, hidden_size: int, eps: float = 1e-5, **unused: Any) -> Any:
        import torch

        kind = {"LayerNorm": torch.nn.LayerNorm, "RMSNorm": torch.nn.RMSNorm}[config.normalization]
        norm = kind(hidden_size, eps=eps, dtype=config.params_dtype)
        for param in norm.parameters():
            param.sequence_parallel = True
        return norm


def _torch_norm(config: Any) -> Any:
    from megatron.core.transformer.torch_norm import WrappedTorchNorm

    return SequenceParallelTorchNorm if config.sequence_parallel else WrappedTorchNorm


def _with_torch_norms(layer: Any, qk_layernorm: bool, norm: Any) -> Any:
    """The local layer spec with every norm ``norm`` (megatron's WrappedTorchNorm, or its sequence-parallel
    twin). megatron picks the local spec's LayerNorm class through a module global (apex's FusedLayerNorm
    when apex imports, but WrappedTorchNorm for good once any RMSNorm spec was built in the process), so
    without this the class, and whether modelopt quantizes it, would depend on which case ran first."""
    subs = layer.submodules
    attention = subs.self_attention
    if qk_layernorm:
        attention = replace(attention, submodules=replace(attention.submodules, q_layernorm=norm, k_layernorm=norm))
    return replace(layer, submodules=replace(subs, input_layernorm=norm, pre_mlp_layernorm=norm, self_attention=attention))


def layer_spec(spec: ModelSpec, config: Any, vp_stage: int | None = None) -> Any:
    """The decoder block for ``spec.layers``, norms named explicitly (never a process-global default).

    ``local``: megatron-core's own modules and torch norms (CPU: Transformer Engine needs CUDA).
    ``modelopt``: ``get_gpt_modelopt_spec``, as Megatron post-training builds its models: Transformer
    Engine norms and ``TEDotProductAttention`` (where modelopt attaches KV-cache quantizers), TE
    layernorm keys remapped to the local spec's so the same checkpoints and shipped weights load."""
    from megatron.core.transformer.transformer_block import TransformerBlockSubmodules, get_num_layers_to_build

    if spec.layers == "modelopt":
        from megatron.core.post_training.modelopt.gpt.model_specs import get_gpt_modelopt_spec

        return get_gpt_modelopt_spec(config, remap_te_layernorm=True)
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec

    norm = _torch_norm(config)
    local = get_gpt_layer_local_spec(num_experts=spec.num_moe_experts, moe_grouped_gemm=False, normalization=spec.normalization,
                                     qk_layernorm=spec.qk_layernorm)
    layers = get_num_layers_to_build(config, vp_stage=vp_stage)
    return TransformerBlockSubmodules(layer_specs=[_with_torch_norms(local, spec.qk_layernorm, norm)] * layers, layer_norm=norm)


def build_gpt(spec: ModelSpec, *, seed: int, parallel_output: bool = False) -> torch.nn.Module:
    """Build ``spec`` (a GPT, or a Mamba-hybrid MambaModel) for the current megatron parallel state (this rank's stage and shard); under
    virtual pipeline stages, a ``ModuleList`` of this rank's model chunks (``runtime.forward.chunks_of``).

    ``parallel_output=False`` gathers full-vocabulary logits (for comparisons); training needs True:
    megatron's gathered output is a view its cross-entropy modifies in place, which autograd refuses.
    """
    import torch
    from megatron.core import parallel_state as ps
    from megatron.core.models.gpt import GPTModel
    from megatron.core.transformer import TransformerConfig

    from harness.runtime.distributed import current_layout

    vpp = current_layout().vpp
    torch.manual_seed(seed)  # use_cpu_initialization draws full weights from this generator
    config = TransformerConfig(
        num_layers=spec.num_layers,
        hidden_size=spec.hidden_size,
        num_attention_heads=spec.num_attention_heads,
        num_query_groups=spec.num_query_groups,
        ffn_hidden_size=spec.ffn_hidden_size,
        normalization=spec.normalization,
        layernorm_epsilon=spec.norm_epsilon,
        gated_linear_unit=spec.swiglu,
        qk_layernorm=spec.qk_layernorm,
        activation_func=torch.nn.functional.silu if spec.swiglu else torch.nn.functional.gelu,
        add_bias_linear=spec.add_bias_linear,
        kv_channels=spec.kv_channels,
        hidden_dropout=0.0,
        attention_dropout=0.0,
        use_cpu_initialization=True,
        params_dtype=torch_dtype(spec),
        pipeline_dtype=torch_dtype(spec),
        bf16=spec.dtype == "bf16",
        tensor_model_parallel_size=ps.get_tensor_model_parallel_world_size(),
        pipeline_model_parallel_size=ps.get_pipeline_model_parallel_world_size(),
        virtual_pipeline_model_parallel_size=vpp if vpp > 1 else None,
        context_parallel_size=ps.get_context_parallel_world_size(),
        # a dense model (a KD teacher of an MoE student) keeps its MLPs whole: the expert ranks are data parallel to it
        expert_model_parallel_size=ps.get_expert_model_parallel_world_size() if spec.num_moe_experts else 1,
        sequence_parallel=current_layout().sp,
        num_moe_experts=spec.num_moe_experts,
        moe_router_topk=spec.moe_router_topk,
        moe_router_pre_softmax=spec.moe_router_pre_softmax,
        # every rank sees every token and keeps its own experts' (alltoall builds a CUDA stream in its constructor)
        moe_token_dispatcher_type="allgather",
        mamba_head_dim=spec.mamba_head_dim,
        mamba_num_groups=spec.mamba_num_groups,
    )
    if spec.hybrid_pattern is not None:
        return _hybrid(spec, config, parallel_output)
    stages = [None] if vpp == 1 else list(range(vpp))
    chunks = [
        GPTModel(
            config=config,
            transformer_layer_spec=layer_spec(spec, config, stage),
            vocab_size=spec.vocab_size,
            max_sequence_length=spec.max_seq_len,
            pre_process=ps.is_pipeline_first_stage(ignore_virtual=stage is None, vp_stage=stage),
            post_process=ps.is_pipeline_last_stage(ignore_virtual=stage is None, vp_stage=stage),
            parallel_output=parallel_output,
            share_embeddings_and_output_weights=spec.tied_embeddings,
            position_embedding_type=spec.position_embedding_type,
            rotary_base=spec.rotary_base,
            rope_scaling=spec.rope_scaling_factor is not None,
            rope_scaling_factor=spec.rope_scaling_factor or 8.0,
            vp_stage=stage,
        )
        for stage in stages
    ]
    from harness.runtime.forward import device

    model = chunks[0] if vpp == 1 else torch.nn.ModuleList(chunks)
    return model.to(device()).eval()
