"""What the two KD checks share: the distillation config a suite writes, the validation that rejects
bad configs before any worker starts, and the worker-side steps that put a student (saved once at
TP1, so every layout starts from the same weights) and its teacher into modelopt's distillation model.
"""

from __future__ import annotations

import re
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, PositiveFloat, PositiveInt

from harness.checks.base import CheckContext, StrictModel
from harness.models.zoo import ZOO
from harness.records import Layout, ModelSpec

if TYPE_CHECKING:
    import torch

STUDENT_CHECKPOINT = "student"  # in the case's artifacts
_LAYER = re.compile(r"^decoder\.layers\.(\d+)(\.|$)")


class KdConfigModel(StrictModel):
    """A ``DistillationConfig`` as a suite writes it; ``name`` goes into the case id."""

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_+-]*$")
    intermediate: list[tuple[str, str] | tuple[str, str, Literal["cosine", "mse"]]] = Field(default_factory=list)
    skip_lm_loss: bool = True
    kd_loss_scale: PositiveFloat = 1.0
    temperature: PositiveFloat = 1.0
    top_k: PositiveInt | None = None
    lm_loss_on_copy: bool = False  # the harness's workaround for the in-place LM-loss defect (runtime/distill.py)


class KdParams(StrictModel):
    teacher: str = "tiny-gpt-trained"
    kd: KdConfigModel = KdConfigModel(name="logits")
    batch_size: PositiveInt = 4
    seq_len: PositiveInt = 64


def _layer_problems(name: str, spec: ModelSpec, role: str, layout: Layout) -> list[str]:
    match = _LAYER.match(name)
    if match is None:
        return []
    index, layers = int(match.group(1)), spec.num_layers
    if index >= layers:
        return [f"{name}: the {role} {spec.name} has {layers} layers (0..{layers - 1})"]
    per_stage = layers // layout.pp
    if index < layers - per_stage:
        return [
            f"{name}: layer {index} of the {role} is on pipeline stage {index // per_stage} of {layout.pp}; "
            "KD intermediate layers must be on the last stage"
        ]
    return []


def case_problems(layout: Layout, params: KdParams, student: ModelSpec) -> list[tuple[str, str]]:
    """Configurations modelopt would reject late or silently mis-handle, found before any worker starts."""
    teacher = ZOO.get(params.teacher)
    if teacher is None:
        return [("teacher", f"unknown teacher {params.teacher!r}; known: {', '.join(ZOO)}")]
    problems = []
    if teacher.vocab_size != student.vocab_size:
        problems.append(
            (
                "teacher",
                f"teacher {teacher.name} has vocabulary {teacher.vocab_size}, student {student.name} "
                f"{student.vocab_size}: logits distillation needs one vocabulary",
            )
        )
    if params.kd.top_k is not None and params.kd.top_k > student.vocab_size:
        problems.append(("kd", f"top_k {params.kd.top_k} exceeds the vocabulary ({student.vocab_size})"))
    for pair in params.kd.intermediate:
        for name, spec, role in ((pair[0], student, "student"), (pair[1], teacher, "teacher")):
            problems.extend(("kd", f"intermediate: {problem}") for problem in _layer_problems(name, spec, role, layout))
    return problems


def require_module(model: Any, name: str, role: str) -> None:
    if name not in dict(model.named_modules()):
        raise ValueError(
            f"kd.intermediate: the {role} has no module {name!r} (e.g. decoder.final_layernorm, "
            "decoder.layers.<i>.input_layernorm)"
        )


def label(layout: Layout, params: KdParams) -> str:
    return f"{layout.token}/{params.kd.name}"


def teacher_of(ctx: CheckContext) -> ModelSpec:
    """The teacher in the student's dtype and layer spec, as Megatron distils (one precision per run)."""
    return replace(ZOO[ctx.params.teacher], dtype=ctx.model.dtype, layers=ctx.model.layers)


def subjects(params: dict[str, Any], model: str) -> list[str]:
    """The teacher, when it is a shipped subject (the student is the case's model)."""
    teacher = ZOO.get(params.get("teacher", ""))
    return [teacher.name] if teacher is not None and teacher.recipe is not None else []


def token_batch(teacher: ModelSpec, params: KdParams, stream: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """``tokens, labels`` of the teacher's corpus, identical on every rank."""
    import torch

    from harness.runtime.forward import device
    from harness.runtime.train import corpus_of

    rows = torch.from_numpy(corpus_of(teacher).sample(params.batch_size, params.seq_len + 1, stream_seed=stream)).to(
        device()
    )
    return rows[:, :-1].contiguous(), rows[:, 1:].contiguous()


def save_student(ctx: CheckContext, student: torch.nn.Module) -> None:
    """Under TP1/PP1: a random init under PP draws each stage's layers from the seed in another order,
    so building the student per layout would give each layout another student."""
    from harness.runtime.checkpoint import save_checkpoint

    save_checkpoint(student, ctx.artifacts / STUDENT_CHECKPOINT)


def distillation_under_layout(ctx: CheckContext, teacher: ModelSpec) -> torch.nn.Module:
    """Student (from the saved checkpoint) + teacher in modelopt's distillation model, in training
    mode, for the current parallel state."""
    from harness.runtime.checkpoint import load_checkpoint
    from harness.runtime.distill import KdSettings, distillation_model
    from harness.runtime.megatron import build_gpt
    from harness.runtime.subject import build_model

    kd: KdConfigModel = ctx.params.kd
    settings = KdSettings(
        tuple(tuple(pair) for pair in kd.intermediate),
        kd.skip_lm_loss,
        kd.kd_loss_scale,
        kd.temperature,
        kd.top_k,
        kd.lm_loss_on_copy,
    )
    student = load_checkpoint(
        build_gpt(ctx.model, seed=ctx.case.seed, parallel_output=True), ctx.artifacts / STUDENT_CHECKPOINT
    )
    model = distillation_model(student, build_model(teacher, seed=ctx.case.seed, parallel_output=True), settings)
    model.train()  # DistillationModel.train returns None, not the model; training mode applies skip_lm_loss
    return model
