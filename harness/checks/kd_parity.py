"""Knowledge-distillation loss parity: the losses modelopt's Megatron plugin computes for one batch,
under the case's layout, against ``harness.evals.kd_reference`` computed from the same weights
gathered at TP1/PP1 in plain torch.

The case's model is the student; ``teacher`` names the teacher. Each loss component is reported as
modelopt's value, the reference value and their relative gap.
"""

from __future__ import annotations

from collections.abc import Callable
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
from harness.records import INFORMATIONAL, Budget, Layout, ModelSpec, Tolerance

COMPONENTS = ("kd_loss", "logits_loss", "intermediate_loss", "lm_loss")
PARITY_STREAM = 6  # corpus stream of the batch, disjoint from training and evaluation


def _reference(
    ctx: CheckContext, teacher_spec: ModelSpec, tokens: Any, labels: Any
) -> tuple[dict[str, float], dict[str, float]]:
    """Full-vocabulary logits and full hidden states at TP1/PP1 (every rank a replica), losses in
    float64; the student built here is the one saved for the case's layout. Also the same losses with
    the teacher's outputs and the labels one position later: the parity bound's negative control."""
    from harness.evals import kd_reference as ref
    from harness.evals.parity import rolled
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
                model.get_submodule(name).register_forward_hook(
                    lambda m, i, o, role=role, name=name: capture(role, name, m, i, o)
                )
        student_logits = forward_logits(student, tokens, ctx.model.vocab_size)
        teacher_logits = forward_logits(teacher, tokens, teacher_spec.vocab_size)

    def losses(shift: Callable[[Any], Any]) -> dict[str, float]:
        logits = float(ref.logits_kl(student_logits, shift(teacher_logits), kd.temperature, kd.top_k))
        pair_losses = [
            float(
                (ref.mse_loss if len(pair) == 3 and pair[2] == "mse" else ref.cosine_loss)(
                    captured[("student", pair[0])], shift(captured[("teacher", pair[1])])
                )
            )
            for pair in kd.intermediate
        ]
        lm = 0.0 if kd.skip_lm_loss else float(ref.lm_loss(student_logits, shift(labels)))
        balanced = ref.balance(logits, pair_losses, lm, skip_lm_loss=kd.skip_lm_loss, kd_loss_scale=kd.kd_loss_scale)
        return {name: getattr(balanced, name) for name in COMPONENTS}

    return losses(lambda x: x), losses(rolled)


def _modelopt(ctx: CheckContext, teacher_spec: ModelSpec, tokens: Any, labels: Any) -> dict[str, float]:
    from harness.runtime.distill import kd_step
    from harness.runtime.distributed import model_parallel

    with model_parallel(ctx.case.layout, ctx.case.seed):
        return kd_step(distillation_under_layout(ctx, teacher_spec), tokens, labels, backward=False)


def _gap(measured: float, reference: float) -> float:
    return abs(measured - reference) / max(abs(reference), 1e-12)


def run(ctx: CheckContext) -> dict[str, float]:
    from harness.evals.parity import bound

    teacher_spec = teacher_of(ctx)
    tokens, labels = token_batch(teacher_spec, ctx.params, (PARITY_STREAM, ctx.case.seed))
    reference, control = _reference(ctx, teacher_spec, tokens, labels)
    measured = _modelopt(ctx, teacher_spec, tokens, labels)
    # Rounding of the deeper of the two models in the case's dtype bounds every gap (harness.evals.parity).
    limit = bound(max(ctx.model.num_layers, teacher_spec.num_layers), ctx.model.dtype)
    metrics = {}
    for name in COMPONENTS:
        metrics[f"modelopt_{name}"] = measured[name]
        metrics[f"reference_{name}"] = reference[name]
        metrics[f"{name}_rel_gap"] = _gap(measured[name], reference[name])
        if reference[name]:  # a component the config computes
            metrics[f"{name}_gap_to_bound"] = metrics[f"{name}_rel_gap"] / limit
            metrics[f"{name}_control_to_bound"] = _gap(measured[name], control[name]) / limit
    return metrics


_EXACT = Tolerance()  # widened to the metric's measured noise (harness.noise)

CHECK = Check(
    name="kd_parity",
    description="modelopt Megatron KD losses (logits KL, top-k, intermediates, balancer) vs a plain-torch reference",
    params=KdParams,
    metrics={
        **{
            f"modelopt_{name}": MetricSpec(f"{name} as modelopt's Megatron plugin computes it", _EXACT)
            for name in COMPONENTS
        },
        **{f"reference_{name}": MetricSpec(f"{name} from harness.evals.kd_reference", _EXACT) for name in COMPONENTS},
        **{f"{name}_rel_gap": MetricSpec("relative gap, modelopt vs reference", _EXACT) for name in COMPONENTS},
        # modelopt under any layout differs from the float64 reference by rounding only: the gap stays within the
        # parity bound K sqrt(4L+1) eps(dtype), and the gap to the reference with the teacher one position off above it.
        **{
            f"{name}_gap_to_bound": MetricSpec(
                f"{name}_rel_gap / the parity bound (harness.evals.parity)", INFORMATIONAL, Budget(max=1.0)
            )
            for name in COMPONENTS
        },
        **{
            f"{name}_control_to_bound": MetricSpec(
                "gap to the reference with the teacher's outputs and labels one position off, "
                "/ the bound (negative control)",
                INFORMATIONAL,
                Budget(min=1.0),
            )
            for name in COMPONENTS
        },
    },
    run=run,
    headline=(
        "kd_loss_rel_gap",
        "logits_loss_rel_gap",
        "intermediate_loss_rel_gap",
        "lm_loss_rel_gap",
        "logits_loss_gap_to_bound",
    ),
    label=label,
    label_params=("kd",),
    case_problems=case_problems,
    subjects=subjects,
)
