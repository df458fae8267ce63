"""Knowledge-distillation loss parity: the losses modelopt's Megatron plugin computes for one batch,
under the case's layout, against ``harness.evals.kd_reference`` computed from the same weights
gathered at TP1/PP1 in plain torch.

The case's model is the student; ``teacher`` names the teacher. Each loss component is reported as
modelopt's value, the reference value and their relative gap.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import Field, PositiveFloat, PositiveInt

from harness.checks.base import Check, CheckContext, MetricSpec, StrictModel
from harness.models.zoo import ZOO, ModelSpec
from harness.records import Layout, Tolerance

COMPONENTS = ("kd_loss", "logits_loss", "intermediate_loss", "lm_loss")
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
        return [f"{name}: layer {index} of the {role} is on pipeline stage {index // per_stage} of {layout.pp}; "
                "KD intermediate layers must be on the last stage"]
    return []


def case_problems(layout: Layout, params: KdParams, student: ModelSpec) -> list[tuple[str, str]]:
    """Configurations modelopt would reject late or silently mis-handle, found before any worker starts."""
    teacher = ZOO.get(params.teacher)
    if teacher is None:
        return [("teacher", f"unknown teacher {params.teacher!r}; known: {', '.join(ZOO)}")]
    problems = []
    if teacher.vocab_size != student.vocab_size:
        problems.append(("teacher", f"teacher {teacher.name} has vocabulary {teacher.vocab_size}, student {student.name} "
                                    f"{student.vocab_size}: logits distillation needs one vocabulary"))
    if params.kd.top_k is not None and params.kd.top_k > student.vocab_size:
        problems.append(("kd", f"top_k {params.kd.top_k} exceeds the vocabulary ({student.vocab_size})"))
    for pair in params.kd.intermediate:
        for name, spec, role in ((pair[0], student, "student"), (pair[1], teacher, "teacher")):
            problems.extend(("kd", f"intermediate: {problem}") for problem in _layer_problems(name, spec, role, layout))
    return problems


def _require_module(model: Any, name: str, role: str) -> None:
    if name not in dict(model.named_modules()):
        raise ValueError(f"kd.intermediate: the {role} has no module {name!r} (e.g. decoder.final_layernorm, "
                         "decoder.layers.<i>.input_layernorm)")


def _reference(ctx: CheckContext, teacher_spec: ModelSpec, tokens: Any, labels: Any) -> dict[str, float]:
    """Full-vocabulary logits and full hidden states at TP1/PP1 (every rank a replica), losses in
    float64. The student's weights are saved here for the case's layout: a random init under PP draws
    each stage's layers from the seed in another order, so it would be another student."""
    from harness.evals import kd_reference as ref
    from harness.runtime.checkpoint import save_checkpoint
    from harness.runtime.distributed import model_parallel
    from harness.runtime.forward import forward_logits
    from harness.runtime.subject import build_model

    kd = ctx.params.kd
    names = [pair[:2] for pair in kd.intermediate]
    captured: dict[tuple[str, str], Any] = {}

    def capture(role: str, name: str, module: Any, inputs: Any, output: Any) -> None:
        captured[(role, name)] = (output[0] if isinstance(output, tuple) else output).detach().transpose(0, 1)

    with model_parallel(Layout(1, 1), ctx.case.seed):
        student = build_model(ctx.model, seed=ctx.case.seed)
        save_checkpoint(student, ctx.artifacts / STUDENT_CHECKPOINT)
        teacher = build_model(teacher_spec, seed=ctx.case.seed)
        for role, model in (("student", student), ("teacher", teacher)):
            for name in {pair[0 if role == "student" else 1] for pair in names}:
                _require_module(model, name, role)
                model.get_submodule(name).register_forward_hook(lambda m, i, o, role=role, name=name: capture(role, name, m, i, o))
        student_logits = forward_logits(student, tokens, ctx.model.vocab_size)
        teacher_logits = forward_logits(teacher, tokens, teacher_spec.vocab_size)
    logits = float(ref.logits_kl(student_logits, teacher_logits, kd.temperature, kd.top_k))
    pair_losses = [
        float((ref.mse_loss if len(pair) == 3 and pair[2] == "mse" else ref.cosine_loss)(captured[("student", pair[0])],
                                                                                         captured[("teacher", pair[1])]))
        for pair in kd.intermediate
    ]
    lm = 0.0 if kd.skip_lm_loss else float(ref.lm_loss(student_logits, labels))
    losses = ref.balance(logits, pair_losses, lm, skip_lm_loss=kd.skip_lm_loss, kd_loss_scale=kd.kd_loss_scale)
    return {name: getattr(losses, name) for name in COMPONENTS}


def _modelopt(ctx: CheckContext, teacher_spec: ModelSpec, tokens: Any, labels: Any) -> dict[str, float]:
    from harness.models.zoo import build_gpt
    from harness.runtime.checkpoint import load_checkpoint
    from harness.runtime.distill import KdSettings, distillation_model, kd_step
    from harness.runtime.distributed import model_parallel
    from harness.runtime.subject import build_model

    kd = ctx.params.kd
    settings = KdSettings(tuple(tuple(pair) for pair in kd.intermediate), kd.skip_lm_loss, kd.kd_loss_scale, kd.temperature, kd.top_k,
                          kd.lm_loss_on_copy)
    with model_parallel(ctx.case.layout, ctx.case.seed):
        student = load_checkpoint(build_gpt(ctx.model, seed=ctx.case.seed, parallel_output=True), ctx.artifacts / STUDENT_CHECKPOINT)
        teacher = build_model(teacher_spec, seed=ctx.case.seed, parallel_output=True)
        model = distillation_model(student, teacher, settings)
        model.train()  # DistillationModel.train returns None, not the model; training mode applies skip_lm_loss
        return kd_step(model, tokens, labels, backward=False)


def run(ctx: CheckContext) -> dict[str, float]:
    import torch

    from harness.runtime.forward import device
    from harness.runtime.train import corpus_of, ensure_trained

    params: KdParams = ctx.params
    teacher_spec = ZOO[params.teacher]
    if teacher_spec.recipe is not None:
        ensure_trained(teacher_spec)  # collective; no layout is active yet
    rows = corpus_of(teacher_spec).sample(params.batch_size, params.seq_len + 1, stream_seed=(6, ctx.case.seed))
    batch = torch.from_numpy(rows).to(device())
    tokens, labels = batch[:, :-1].contiguous(), batch[:, 1:].contiguous()
    reference = _reference(ctx, teacher_spec, tokens, labels)
    measured = _modelopt(ctx, teacher_spec, tokens, labels)
    metrics = {}
    for name in COMPONENTS:
        metrics[f"modelopt_{name}"] = measured[name]
        metrics[f"reference_{name}"] = reference[name]
        metrics[f"{name}_rel_gap"] = abs(measured[name] - reference[name]) / max(abs(reference[name]), 1e-12)
    return metrics


def _label(layout: Layout, params: KdParams) -> str:
    return f"{layout.token}/{params.kd.name}"


_VALUE = Tolerance(rel=1e-5)  # deterministic on CPU; allows reduction-order noise across layouts
_GAP = MetricSpec("relative gap, modelopt vs reference", Tolerance(abs=1e-6))

CHECK = Check(
    name="kd_parity",
    description="modelopt Megatron KD losses (logits KL, top-k, intermediates, balancer) vs a plain-torch reference",
    params=KdParams,
    metrics={
        **{f"modelopt_{name}": MetricSpec(f"{name} as modelopt's Megatron plugin computes it", _VALUE) for name in COMPONENTS},
        **{f"reference_{name}": MetricSpec(f"{name} from harness.evals.kd_reference", _VALUE) for name in COMPONENTS},
        **{f"{name}_rel_gap": _GAP for name in COMPONENTS},
    },
    run=run,
    label=_label,
    label_params=("kd",),
    case_problems=case_problems,
)
