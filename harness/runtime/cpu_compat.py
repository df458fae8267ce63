"""Adaptations that let megatron-core run on a CPU-only worker.

megatron-core assumes CUDA in a handful of places (it allocates on ``torch.cuda.current_device()``,
synchronises streams between pipeline sends, and builds counters with ``device="cuda"``). On a GPU
worker none of this module is applied. On a CPU worker each adaptation below is applied once, is
named, and refuses to run against a megatron-core version it was not verified with: a new release
must be checked by a person (extend ``VERIFIED_MCORE``), never silently trusted.

modelopt's Megatron EAGLE module names Transformer Engine layers directly (TE needs CUDA; without it
megatron binds them to a MagicMock). The ``eagle-*`` adaptations give it torch stand-ins, guarded by
``drafts.VERIFIED_MODELOPT``: on another modelopt they are not applied and EAGLE cases skip on CPU with the
reason (``eagle_blocker``). They stand in for TE kernels, which the CPU base model does not run either.

One adaptation is about versions, not CUDA: ``hybrid-model-name`` gives modelopt's exporter the megatron-core
0.18 module name it imports, on the 0.16 this CPU runs (GPU images ship a newer megatron-core).

The model-parallel RNG tracker needs no patch: ``runtime.distributed.seed_everything`` asks
megatron for its inference RNG tracker on CPU, which does not touch CUDA RNG states.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any

import torch
from packaging.version import Version
from torch.overrides import TorchFunctionMode

from harness.runtime.drafts import eagle_blocker

# megatron-core releases on which every adaptation below was verified (inclusive lower, exclusive upper).
VERIFIED_MCORE = (Version("0.16.0"), Version("0.20.0"))


class UnverifiedVersionError(RuntimeError):
    """megatron-core is outside the range the CPU adaptations were verified on."""


@dataclass(frozen=True)
class Adaptation:
    name: str
    why: str
    apply: Callable[[], None]
    # Undoes it for a while, so a case can show the defect it hides (None: it cannot be withdrawn).
    withdraw: Callable[[], AbstractContextManager[None]] | None = None


def _cpu_current_device() -> None:
    # ~40 call sites in models/, transformer/, tensor_parallel/ allocate on torch.cuda.current_device()
    # (GlobalMemoryBuffer.get_tensor, RoPE inv_freq, TP all-gather buffers).
    torch.cuda.current_device = lambda: torch.device("cpu")  # type: ignore[assignment]


def _no_cuda_synchronize() -> None:
    # p2p_communication and dist_checkpointing call torch.cuda.synchronize() after gloo sends and
    # before writing; gloo operations are synchronous on CPU, so there is nothing to wait for.
    torch.cuda.synchronize = lambda device=None: None  # type: ignore[assignment]


class _CudaToCpu(TorchFunctionMode):
    """Rewrites ``device="cuda"`` (and cuda:N) arguments of tensor factories to the CPU."""

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        device = kwargs.get("device")
        if device is not None and torch.device(device).type == "cuda":
            kwargs = {**kwargs, "device": torch.device("cpu")}
        return func(*args, **kwargs)


def _cuda_factories_to_cpu() -> None:
    # pipeline_parallel/schedules.py builds its token counters with torch.zeros(..., device="cuda").
    _CudaToCpu().__enter__()


def _hybrid_model_name() -> None:
    # modelopt 0.47's Megatron exporter (modelopt.torch.export.unified_export_megatron) imports HybridModel from
    # megatron.core.models.hybrid, the name megatron-core 0.18 gave MambaModel. The import sits in a plugin guard
    # that swallows the ImportError, so on 0.16 / 0.17 every name after it stays unbound and export_mcore_gpt_to_hf
    # raises "NameError: name 'HybridModel' is not defined" (measured). The module under its new name, holding
    # 0.16's class, before modelopt is imported; from 0.18 on there is nothing to do.
    import sys
    import types

    from megatron.core.package_info import __version__ as mcore_version

    if Version(mcore_version) >= Version("0.18") or "megatron.core.models.hybrid" in sys.modules:
        return
    from megatron.core.models.mamba.mamba_model import MambaModel

    hybrid_model = types.ModuleType("megatron.core.models.hybrid.hybrid_model")
    hybrid_model.HybridModel = MambaModel  # type: ignore[attr-defined]
    package = types.ModuleType("megatron.core.models.hybrid")
    package.__path__ = []  # a package with no other submodules: the rest of 0.18's package still fails to import
    package.hybrid_model = hybrid_model  # type: ignore[attr-defined]
    sys.modules |= {package.__name__: package, hybrid_model.__name__: hybrid_model}


def _moe_router_without_te() -> None:
    # megatron-core 0.16's moe_utils binds te_general_gemm only inside its Transformer Engine import's try, yet
    # the router's gating GEMM reads it whenever router_dtype is not float64: NameError without TE. 0.19 binds
    # it to None when TE is missing; the same here, where it is unbound (then the router takes torch.mm).
    # suites/moe_router.yaml runs the router without it (``withdrawn``): the known defect, or FIXED?.
    from megatron.core.transformer.moe import moe_utils

    if not hasattr(moe_utils, "te_general_gemm"):
        moe_utils.te_general_gemm = None
        _bound_router_gemm.append(True)


_bound_router_gemm: list[bool] = []


@contextmanager
def _router_gemm_unbound() -> Iterator[None]:
    from megatron.core.transformer.moe import moe_utils

    if not _bound_router_gemm:  # megatron-core binds the name itself (or TE is there): nothing to withdraw
        yield
        return
    del moe_utils.te_general_gemm
    try:
        yield
    finally:
        moe_utils.te_general_gemm = None


def _eagle_local_core_attention() -> None:
    # EagleModule builds its draft layer from get_gpt_modelopt_spec, whose core attention defaults to
    # TEDotProductAttention and whose norms are TE's (``Norm``): megatron's own DotProductAttention (it
    # takes the arbitrary mask EAGLE trains with) and torch norms instead.
    import modelopt.torch.speculative.plugins.megatron_eagle as eagle
    from megatron.core.post_training.modelopt.gpt import model_specs
    from megatron.core.transformer.torch_norm import WrappedTorchNorm

    model_specs.Norm = WrappedTorchNorm
    eagle.get_gpt_modelopt_spec = functools.partial(model_specs.get_gpt_modelopt_spec, local_core_attention=True)


def _eagle_torch_norm() -> None:
    # EAGLE's enorm / hnorm are TENorm; megatron's torch norm takes the same (config, hidden_size, eps).
    import modelopt.torch.speculative.plugins.megatron_eagle as eagle
    from megatron.core.transformer.torch_norm import WrappedTorchNorm

    eagle.TENorm = WrappedTorchNorm


def _eagle_duplicated_linear() -> None:
    # EAGLE-3's fc (the aux hidden states, 3h -> h) is a TELinear(parallel_mode="duplicated"): the same full
    # weight on every tensor-parallel rank, returning (output, bias). Megatron's local Linear is exactly that;
    # the subclass takes TELinear's signature and keeps its state-dict keys (heads trained here load on a GPU).
    import modelopt.torch.speculative.plugins.megatron_eagle as eagle
    from megatron.core.post_training.modelopt.layers import Linear

    class DuplicatedLinear(Linear):
        def __init__(
            self,
            input_size: int,
            output_size: int,
            *,
            parallel_mode: str | None,
            config: Any,
            init_method: Any,
            bias: bool,
            skip_bias_add: bool,
            skip_weight_param_allocation: bool,
            **unused: Any,
        ) -> None:
            if parallel_mode != "duplicated":
                raise ValueError(
                    f"the CPU stand-in for TELinear covers parallel_mode='duplicated' only, not {parallel_mode!r}"
                )
            super().__init__(
                input_size,
                output_size,
                config=config,
                init_method=init_method,
                bias=bias,
                skip_bias_add=skip_bias_add,
                skip_weight_param_allocation=skip_weight_param_allocation,
            )

    eagle.TELinear = DuplicatedLinear


def _eagle_no_cp_attention_context() -> None:
    # te_dot_product_attention_with_cp imports TEDotProductAttention to patch it under context parallelism;
    # the CPU runs without context parallelism, where the context changes nothing.
    import modelopt.torch.speculative.plugins.megatron_eagle as eagle

    eagle.te_dot_product_attention_with_cp = lambda attention_mask, num_attention_heads: nullcontext()


ADAPTATIONS: tuple[Adaptation, ...] = (
    Adaptation(
        "hybrid-model-name",
        "megatron.core.models.hybrid.HybridModel names 0.16's MambaModel (modelopt's exporter imports it)",
        _hybrid_model_name,
    ),
    Adaptation("cpu-current-device", "torch.cuda.current_device() answers the CPU", _cpu_current_device),
    Adaptation("no-cuda-synchronize", "torch.cuda.synchronize() is a no-op", _no_cuda_synchronize),
    Adaptation("cuda-factories-to-cpu", 'device="cuda" tensor factories allocate on the CPU', _cuda_factories_to_cpu),
    Adaptation(
        "moe-router-without-te",
        "the MoE router's te_general_gemm is None where megatron-core leaves it unbound",
        _moe_router_without_te,
        _router_gemm_unbound,
    ),
)
EAGLE_ADAPTATIONS: tuple[Adaptation, ...] = (
    Adaptation(
        "hybrid-model-name",
        "megatron.core.models.hybrid.HybridModel names 0.16's MambaModel (modelopt's exporter imports it)",
        _hybrid_model_name,
    ),
    Adaptation(
        "eagle-local-core-attention",
        "EAGLE's draft layer: megatron's DotProductAttention and torch norms, not TE's",
        _eagle_local_core_attention,
    ),
    Adaptation("eagle-torch-norm", "EAGLE's TENorm (enorm, hnorm) is megatron's torch norm", _eagle_torch_norm),
    Adaptation(
        "eagle-duplicated-linear",
        "EAGLE-3's TELinear fc is megatron's local Linear, duplicated on every TP rank",
        _eagle_duplicated_linear,
    ),
    Adaptation(
        "eagle-no-cp-attention-context",
        "te_dot_product_attention_with_cp is a null context (no context parallelism)",
        _eagle_no_cp_attention_context,
    ),
)

_applied: list[str] = []


@contextmanager
def withdrawn(name: str) -> Iterator[None]:
    """Run without the applied adaptation ``name`` (nothing to undo where it was not applied: a GPU worker,
    or a megatron-core that needs no adaptation there)."""
    adaptation = next((a for a in ADAPTATIONS + EAGLE_ADAPTATIONS if a.name == name), None)
    if adaptation is None or adaptation.withdraw is None:
        raise ValueError(f"no CPU adaptation {name!r} can be withdrawn")
    if name not in _applied:
        yield
        return
    with adaptation.withdraw():
        yield


def check_mcore_version(version: str) -> None:
    low, high = VERIFIED_MCORE
    if not low <= Version(version) < high:
        raise UnverifiedVersionError(
            f"megatron-core {version} is outside the range the CPU adaptations were verified on "
            f"[{low}, {high}); verify harness/runtime/cpu_compat.py against it and extend VERIFIED_MCORE"
        )


def apply_cpu_adaptations() -> list[str]:
    """Apply every adaptation once (idempotent); returns their names. Never call on a GPU worker."""
    if _applied:
        return list(_applied)
    if torch.cuda.is_available():
        raise RuntimeError("CPU adaptations must not be applied on a machine with CUDA")
    from megatron.core.package_info import __version__ as mcore_version

    check_mcore_version(mcore_version)
    for adaptation in ADAPTATIONS + (EAGLE_ADAPTATIONS if eagle_blocker() is None else ()):
        adaptation.apply()
        _applied.append(adaptation.name)
    return list(_applied)
