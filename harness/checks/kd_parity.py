"""Knowledge-distillation loss parity: the losses modelopt's Megatron plugin computes for one batch,
under the case's layout, against ``harness.evals.kd_reference`` computed from the same weights
gathered at TP1/PP1 in plain torch.

The case's model is the student; ``teacher`` names the teacher. Each loss component is reported as
modelopt's value, the reference value and their relative gap.
"""

from __future__ import annotations

from typing import Any

from harness.checks.base import Check, CheckContext, MetricSpec
from harness.checks.kd_common import (
    KdParams,
    case_problems,
    distillation_under_layout,
    label,
    require_module,
    save_student,
    subjects,
    teacher_of,
    token_batch,
)
from harness.models.zoo import ModelSpec
from harness.records import Budget, Layout, Tolerance

COMPONENTS = ("kd_loss", "logits_loss", "intermediate_loss", "lm_loss")
PARITY_STREAM = 6  # corpus stream of the batch, disjoint from training and evaluation

def _reference(ctx: CheckContext, teacher_spec: ModelSpec, tokens: Any, labels: Any) -> dict[str, float]:
    """Full-vocabulary logits and full hidden states at TP1/PP1 (every rank a replica), losses in
    float64; the student built here is the one saved for the case's layout."""
    from harness.evals import kd_reference as ref
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
        save_student(ctx, student)
        teacher = build_model(teacher_spec, seed=ctx.case.seed)
        for role, model in (("student", student), ("teacher", teacher)):
            for name in {pair[0 if role == "student" else 1] for pair in names}:
                require_module(model, name, role)
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
    from harness.runtime.distill import kd_step
    from harness.runtime.distributed import model_parallel

    with model_parallel(ctx.case.layout, ctx.case.seed):
        return kd_step(distillation_under_layout(ctx, teacher_spec), tokens, labels, backward=False)


def run(ctx: CheckContext) -> dict[str, float]:
    teacher_spec = teacher_of(ctx)
    tokens, labels = token_batch(teacher_spec, ctx.params, (PARITY_STREAM, ctx.case.seed))
    reference = _reference(ctx, teacher_spec, tokens, labels)
    measured = _modelopt(ctx, teacher_spec, tokens, labels)
    metrics = {}
    for name in COMPONENTS:
        metrics[f"modelopt_{name}"] = measured[name]
        metrics[f"reference_{name}"] = reference[name]
        metrics[f"{name}_rel_gap"] = abs(measured[name] - reference[name]) / max(abs(reference[name]), 1e-12)
    return metrics


_VALUE = Tolerance(rel=1e-5)  # deterministic on CPU; allows reduction-order noise across layouts
# modelopt (fp32) must agree with the float64 reference on every machine: measured gaps 1e-9..8e-8.
_GAP = MetricSpec("relative gap, modelopt vs reference", Tolerance(abs=1e-6), Budget(max=1e-5))

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
    label=label,
    label_params=("kd",),
    case_problems=case_problems,
    subjects=subjects,
)
