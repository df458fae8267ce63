"""Megatron-core models built from a zoo entry (harness.records.ModelSpec) inside a worker: the layer spec of
the case's platform, the config, GPT or Mamba-hybrid, model chunks per virtual pipeline stage."""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Any

from harness.records import ModelSpec

if TYPE_CHECKING:
    import torch


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
    return replace(
        layer, submodules=replace(subs, input_layernorm=norm, pre_mlp_layernorm=norm, self_attention=attention)
    )


# megatron's local spec stores every layer's pre-MLP norm under the TE-fused key (``mlp.linear_fc1.layer_norm_``),
# MoE layers included; get_gpt_modelopt_spec(remap_te_layernorm=True) remaps it for dense layers only (0.16.1:
# its MoE layer spec maps input_layernorm alone), so a MoE checkpoint or shipped subject written under the local
# spec lacked decoder.layers.pre_mlp_layernorm.weight on a GPU. The GPU spec takes the local spec's keys.
_PRE_MLP_NORM_KEY = {"pre_mlp_layernorm.": "mlp.linear_fc1.layer_norm_"}


def _local_keys(layer: Any) -> Any:
    subs = layer.submodules
    keys = subs.sharded_state_dict_keys_map
    if "pre_mlp_layernorm." in keys:
        return layer
    return replace(layer, submodules=replace(subs, sharded_state_dict_keys_map={**keys, **_PRE_MLP_NORM_KEY}))


def layer_spec(spec: ModelSpec, config: Any, vp_stage: int | None = None) -> Any:
    """The decoder block for ``spec.layers``, norms named explicitly (never a process-global default).

    ``local``: megatron-core's own modules and torch norms (CPU: Transformer Engine needs CUDA).
    ``modelopt``: ``get_gpt_modelopt_spec``, as Megatron post-training builds its models: Transformer
    Engine norms and ``TEDotProductAttention`` (where modelopt attaches KV-cache quantizers), TE
    layernorm keys remapped to the local spec's so the same checkpoints and shipped weights load."""
    from megatron.core.transformer.transformer_block import TransformerBlockSubmodules, get_num_layers_to_build

    if spec.layers == "modelopt":
        from megatron.core.post_training.modelopt.gpt.model_specs import get_gpt_modelopt_spec

        block = get_gpt_modelopt_spec(config, remap_te_layernorm=True)
        return replace(block, layer_specs=[_local_keys(layer) for layer in block.layer_specs])
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec

    norm = _torch_norm(config)
    local = get_gpt_layer_local_spec(
        num_experts=spec.num_moe_experts,
        moe_grouped_gemm=False,
        normalization=spec.normalization,
        qk_layernorm=spec.qk_layernorm,
    )
    layers = get_num_layers_to_build(config, vp_stage=vp_stage)
    return TransformerBlockSubmodules(
        layer_specs=[_with_torch_norms(local, spec.qk_layernorm, norm)] * layers, layer_norm=norm
    )


def build_gpt(spec: ModelSpec, *, seed: int, parallel_output: bool = False) -> torch.nn.Module:
    """Build ``spec`` (a GPT, or a Mamba-hybrid MambaModel) for the current megatron parallel state (this rank's stage
    and shard); under
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
        # weights that a checkpoint fills are not drawn first: a 30B model drawn at random on every rank before its
        # import would cost minutes and a full master copy per tensor (the import must then fill every tensor: the
        # HF cases compare their logits with transformers' own)
        perform_initialization=spec.hf_path is None and spec.checkpoint is None,
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
