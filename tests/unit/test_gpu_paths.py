"""GPU readiness checked without a GPU: the smoke selection names real cases, GPU cases build with
the modelopt spec (TE norms, TEDotProductAttention) and CPU cases with explicit torch norms, the TF32
policy reaches GPU ranks, image constraints are checked, and stale extension locks are found."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness.constraints import conflicts, constraint_conflicts
from harness.launchers.common import rank_environment
from harness.pipeline import collect
from harness.runtime.cuda_extensions import stale_locks
from harness.smoke import GPU_SMOKE, smoke_expression
from harness.suites.expand import Resources
from tests.conftest import ROOT

TWO_GPUS = Resources(cpu_ranks=2, gpus=2, gpu_name="NVIDIA H100 80GB HBM3")
SUITES = sorted(str(p) for p in (ROOT / "suites").glob("*.yaml"))


def test_every_smoke_id_is_a_gpu_case_and_the_expression_selects_exactly_them() -> None:
    chosen = collect(SUITES, TWO_GPUS, keyword=smoke_expression())
    assert sorted(case.key for case in chosen) == sorted(GPU_SMOKE)
    assert {case.check for case in chosen} == {
        "ckpt_roundtrip",
        "export_roundtrip",
        "quant_accuracy",
        "kd_parity",
        "kd_trajectory",
        "spec_decode",
    }


def test_gpu_cases_build_the_modelopt_spec_and_cpu_cases_the_local_one() -> None:
    cases = collect(SUITES, TWO_GPUS)
    layers = {(case.platform, case.model_spec.layers) for case in cases if case.model != "tiny-gpt-layernorm"}
    assert layers == {("cpu", "local"), ("gpu", "modelopt")}
    # the LayerNorm model's subject is torch's LayerNorm, on every platform
    assert {case.model_spec.layers for case in cases if case.model == "tiny-gpt-layernorm"} == {"local"}
    assert {case.model_spec.dtype for case in cases} == {"fp32", "bf16"}


def test_the_gpu_layer_spec_is_transformer_engines(monkeypatch: pytest.MonkeyPatch) -> None:
    """Built as a spec only (no module is instantiated, so no CUDA is needed; no parallel state either:
    every layer is this stage's)."""
    from dataclasses import replace

    from megatron.core.extensions.transformer_engine import TEDotProductAttention
    from megatron.core.post_training.modelopt.layers import Norm
    from megatron.core.transformer import TransformerConfig

    from harness.models.zoo import ZOO
    from harness.runtime.megatron import layer_spec

    for module in (
        "megatron.core.transformer.transformer_block",
        "megatron.core.post_training.modelopt.gpt.model_specs",
    ):
        monkeypatch.setattr(f"{module}.get_num_layers_to_build", lambda config, *args, **kwargs: config.num_layers)

    config = TransformerConfig(num_layers=4, hidden_size=256, num_attention_heads=8, normalization="RMSNorm")
    spec = layer_spec(replace(ZOO["tiny-gpt"], layers="modelopt"), config)
    layer = spec.layer_specs[0].submodules
    # (without Transformer Engine, megatron binds these names to placeholders: compared by identity)
    assert layer.self_attention.submodules.core_attention is TEDotProductAttention
    assert layer.input_layernorm is spec.layer_norm is Norm  # modelopt's TENorm chooser
    local = layer_spec(replace(ZOO["tiny-gpt-layernorm"]), config)
    assert {local.layer_norm.__name__, local.layer_specs[0].submodules.input_layernorm.__name__} == {"WrappedTorchNorm"}


def test_gpu_ranks_run_without_tf32_with_deterministic_attention_and_their_own_arch() -> None:
    from harness.environment import cuda_arch_list

    env = rank_environment("gpu", 1)
    assert env["TORCH_ALLOW_TF32_CUBLAS_OVERRIDE"] == "0" and env["NVIDIA_TF32_OVERRIDE"] == "0"
    assert env["NVTE_ALLOW_NONDETERMINISTIC_ALGO"] == "0"  # TE's bf16 attention backward repeats
    assert "TORCH_ALLOW_TF32_CUBLAS_OVERRIDE" not in rank_environment("cpu", 1)
    # modelopt's extensions compile for the GPUs present, not for every arch an NGC image lists
    assert cuda_arch_list(["9.0", "9.0", "8.0"]) == "8.0;9.0" and cuda_arch_list([]) is None
    assert "TORCH_CUDA_ARCH_LIST" not in env  # no GPU seen here: the image's list would stay
    assert env["TORCH_EXTENSIONS_DIR"] == str(Path.cwd() / ".cache" / "torch_extensions")  # outlives the container


def test_an_image_constraint_outside_the_harness_range_is_named(tmp_path: Path) -> None:
    assert conflicts(
        ["nvidia-modelopt>=0.47,<0.48", "pyyaml>=6"],
        "nvidia-modelopt==0.33.0\nPyYAML==6.0.2\n# comment\n-c other.txt\n",
    ) == [
        "nvidia-modelopt: the constraint file pins nvidia-modelopt==0.33.0, the harness needs "
        "nvidia-modelopt<0.48,>=0.47"
    ]
    constraints = tmp_path / "constraint.txt"
    constraints.write_text("transformers==4.40.0\ntorch==2.6.0a0+ecf3bae40a.nv25.1\n")
    found = constraint_conflicts(ROOT / "pyproject.toml", {"PIP_CONSTRAINT": str(constraints)})
    assert len(found) == 1 and "transformers" in found[0] and str(constraints) in found[0]
    constraints.write_text("transformers==4.57.1\nnumpy==1.26.4\n")
    assert constraint_conflicts(ROOT / "pyproject.toml", {"PIP_CONSTRAINT": str(constraints)}) == []


def test_a_build_lock_left_by_a_killed_compile_is_stale(tmp_path: Path) -> None:
    old, fresh = tmp_path / "py311_cu128" / "cuda_ext" / "lock", tmp_path / "py311_cu128" / "cuda_ext_fp8" / "lock"
    for lock in (old, fresh):
        lock.parent.mkdir(parents=True)
        lock.touch()
    os.utime(old, (time.time() - 3600, time.time() - 3600))
    assert stale_locks(tmp_path) == [old]


def test_peak_memory_is_per_case_on_a_warm_worker() -> None:
    """A warm worker's peak resident set would keep its largest case forever; reset, it reports the
    next case's own peak (Linux)."""
    code = (
        "from harness.launchers.worker import memory_metrics, reset_peak_memory\n"
        "big = bytearray(400 * 1024 * 1024); big[::4096] = b'x' * len(big[::4096]); del big\n"
        "before = memory_metrics('cpu')['peak_memory_mib']\n"
        "reset_peak_memory('cpu')\n"
        "after = memory_metrics('cpu')['peak_memory_mib']\n"
        "print(before, after)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT).stdout
    before, after = map(float, out.split())
    assert before > 400 and after < before - 300, (before, after)


def test_a_reload_tolerates_only_te_extra_state_being_absent() -> None:
    """TE is phasing out ``core_attention._extra_state``: its absence on either side must not fail a reload, while a
    quantized module's extra state (modelopt's quantizer state) and every tensor must still match."""
    import torch

    from harness.runtime.checkpoint import _load_state

    class WithExtra(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.weight = torch.nn.Parameter(torch.zeros(2))

        def get_extra_state(self) -> dict:
            return {"fp8_meta": None}

        def set_extra_state(self, state: object) -> None:
            pass

    class Quantized(WithExtra):
        weight_quantizer = None  # what marks a module modelopt quantized

    model = torch.nn.ModuleDict({"core_attention": WithExtra(), "linear_qkv": Quantized()})
    state = model.state_dict()
    _load_state(model, state)
    _load_state(model, {k: v for k, v in state.items() if k != "core_attention._extra_state"})
    _load_state(model, {**state, "gone_module._extra_state": {"fp8_meta": None}})
    with pytest.raises(RuntimeError, match=r"disagree on 1 key\(s\) \(missing from one side\): linear_qkv\._extra"):
        _load_state(model, {k: v for k, v in state.items() if k != "linear_qkv._extra_state"})
    with pytest.raises(RuntimeError, match=r"core_attention\.weight"):
        _load_state(model, {k: v for k, v in state.items() if k != "core_attention.weight"})


def test_every_zoo_model_has_the_same_checkpoint_keys_under_the_cpu_and_gpu_layer_specs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Shipped subjects and dist checkpoints are written under the local spec: the GPU (TE) spec must map every
    layer's norms to the same keys. modelopt's spec remapped the pre-MLP norm of dense layers only, so the MoE
    subjects lacked decoder.layers.pre_mlp_layernorm.weight on a GPU (measured on the spec objects)."""
    from dataclasses import replace

    from megatron.core.transformer import TransformerConfig

    from harness.models.zoo import ZOO
    from harness.runtime.megatron import layer_spec

    for module in (
        "megatron.core.transformer.transformer_block",
        "megatron.core.post_training.modelopt.gpt.model_specs",
    ):
        monkeypatch.setattr(f"{module}.get_num_layers_to_build", lambda config, *args, **kwargs: config.num_layers)
    monkeypatch.setattr(
        "megatron.core.post_training.modelopt.gpt.model_specs.get_transformer_layer_offset", lambda *a, **k: 0
    )
    checked = []
    for model in ZOO.values():
        if model.hybrid_pattern is not None or model.layers == "local":
            continue  # Mamba has its own stack spec; a model pinned to the local spec is local on GPUs too
        config = TransformerConfig(
            num_layers=model.num_layers,
            hidden_size=model.hidden_size,
            num_attention_heads=model.num_attention_heads,
            normalization=model.normalization,
            num_moe_experts=model.num_moe_experts,
            add_bias_linear=model.add_bias_linear,
        )
        maps = {
            layers: [
                each.submodules.sharded_state_dict_keys_map
                for each in layer_spec(replace(model, layers=layers), config).layer_specs
            ]
            for layers in ("local", "modelopt")
        }
        assert maps["local"] == maps["modelopt"], model.name
        checked.append(model.name)
    assert {"tiny-gpt", "tiny-moe", "tiny-moe-trained", "tiny-llama-ffn688"} <= set(checked)
