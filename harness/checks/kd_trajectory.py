"""A short deterministic distillation run through modelopt's Megatron plugin, judged by what training
promises: the losses fall (``kd_loss_decrease_pct``), and the last steps' mean of every loss component
(``*_last``) stays within its measured noise of the baseline on any machine.

The per-step losses are also recorded, in the spirit of Megatron's golden values (``kd_loss@001``,
...: one metric per step, so a drift names the step where it starts). Training amplifies every low bit
(bf16 most: another processor's kernels move step 30 by ~1%), so they are step-exact goldens, judged
only on the baseline's fingerprint (harness.environment) and shown elsewhere.

With ``parity_layout`` the same run is repeated under a second layout in the same case: TP2 and TP1
must train the same student. Their first step is one forward of the same weights, so its losses obey
the layout-parity bound of harness.evals.parity; later steps are judged against the baseline.
"""

from __future__ import annotations

from typing import Literal

from pydantic import PositiveFloat, PositiveInt

from harness.checks.base import Check, CheckContext, LayoutModel, MetricSpec, SecondLayout
from harness.checks.kd_common import (
    KdParams,
    case_problems,
    distillation_under_layout,
    save_student,
    subjects,
    teacher_of,
    token_batch,
)
from harness.records import INFORMATIONAL, Budget, Layout, ModelSpec, Tolerance

TRAIN_STREAM = 7  # corpus stream of the training batches
TAIL = 5  # steps averaged for the final loss


class TrajectoryParams(KdParams):
    steps: PositiveInt = 30
    lr: PositiveFloat = 1e-3
    parity_layout: Literal["none"] | LayoutModel = "none"


PARITY = SecondLayout("parity_layout", sentinel="none", separator="~")


def _trajectory(ctx: CheckContext, layout: Layout, teacher: ModelSpec) -> list[dict[str, float]]:
    """Per-step losses of ``steps`` AdamW steps of the student under ``layout``. Every replica sees
    the same batches, so no gradient exchange beyond megatron's own tensor/pipeline parallel one."""
    import torch

    from harness.runtime.distill import kd_step
    from harness.runtime.distributed import model_parallel

    params: TrajectoryParams = ctx.params
    with model_parallel(layout, ctx.case.seed):
        model = distillation_under_layout(ctx, teacher)
        trainable = [p for name, p in model.named_parameters() if p.requires_grad and "_teacher_model" not in name]
        optimizer = torch.optim.AdamW(trainable, lr=params.lr, weight_decay=0.0)
        losses = []
        for step in range(params.steps):
            tokens, labels = token_batch(teacher, params, (TRAIN_STREAM, ctx.case.seed, step))
            optimizer.zero_grad(set_to_none=True)
            losses.append(kd_step(model, tokens, labels, backward=True))
            optimizer.step()
    return losses


def run(ctx: CheckContext) -> dict[str, float]:
    from harness.runtime.distributed import model_parallel
    from harness.runtime.subject import build_model

    params: TrajectoryParams = ctx.params
    teacher = teacher_of(ctx)
    with model_parallel(Layout(1, 1), ctx.case.seed):
        save_student(ctx, build_model(ctx.model, seed=ctx.case.seed))
    losses = _trajectory(ctx, ctx.case.layout, teacher)
    components = ["kd_loss", "logits_loss"] + (["intermediate_loss"] if params.kd.intermediate else [])
    components += [] if params.kd.skip_lm_loss else ["lm_loss"]
    metrics = {f"{name}@{step:03d}": values[name] for step, values in enumerate(losses, start=1) for name in components}
    metrics |= {f"{name}_last": sum(v[name] for v in losses[-TAIL:]) / min(TAIL, len(losses)) for name in components}
    first = losses[0]["kd_loss"]
    metrics["kd_loss_first"] = first
    metrics["kd_loss_decrease_pct"] = 100 * (first - metrics["kd_loss_last"]) / first
    other = PARITY.other(ctx.case.layout, params)
    if other is not None:
        from harness.evals.parity import bound

        twin = _trajectory(ctx, other, teacher)

        def gap(mine: dict[str, float], theirs: dict[str, float]) -> float:
            return max(abs(mine[name] - theirs[name]) / max(abs(theirs[name]), 1e-12) for name in components)

        metrics["parity_max_rel_diff"] = max(gap(mine, theirs) for mine, theirs in zip(losses, twin, strict=True))
        metrics["parity_first_step_rel_diff"] = gap(losses[0], twin[0])
        limit = bound(max(ctx.model.num_layers, teacher.num_layers), ctx.model.dtype)
        metrics["parity_first_step_to_bound"] = metrics["parity_first_step_rel_diff"] / limit
    return metrics


_EXACT = Tolerance()  # widened to the metric's measured noise (harness.noise)

CHECK = Check(
    name="kd_trajectory",
    description=(
        "per-step losses of a short modelopt Megatron distillation run (golden values), and TP parity of the run"
    ),
    params=TrajectoryParams,
    metrics={
        "kd_loss@*": MetricSpec("total distillation loss at each optimizer step", _EXACT, fingerprint_bound=True),
        "logits_loss@*": MetricSpec("logits KL at each step", _EXACT, fingerprint_bound=True),
        "intermediate_loss@*": MetricSpec(
            "mean intermediate loss at each step (configs with intermediates)", _EXACT, fingerprint_bound=True
        ),
        "lm_loss@*": MetricSpec("student LM loss at each step (skip_lm_loss: false)", _EXACT, fingerprint_bound=True),
        "kd_loss_first": MetricSpec("kd_loss at step 1", _EXACT),
        **{
            f"{name}_last": MetricSpec(f"mean {name} of the last {TAIL} steps", _EXACT)
            for name in ("kd_loss", "logits_loss", "intermediate_loss", "lm_loss")
        },
        "kd_loss_decrease_pct": MetricSpec(
            "how much the student's kd_loss fell, first step to the last ones (%)", _EXACT
        ),
        "parity_max_rel_diff": MetricSpec(
            "max relative difference of any step's loss, here vs under parity_layout", _EXACT
        ),
        "parity_first_step_rel_diff": MetricSpec(
            "max relative difference of the first step's losses (one forward of the same weights)", _EXACT
        ),
        "parity_first_step_to_bound": MetricSpec(
            "parity_first_step_rel_diff / the layout-parity bound (harness.evals.parity)",
            INFORMATIONAL,
            Budget(max=1.0),
        ),
    },
    run=run,
    headline=(
        "kd_loss_first",
        "kd_loss_last",
        "kd_loss_decrease_pct",
        "parity_max_rel_diff",
        "parity_first_step_to_bound",
    ),
    case_problems=case_problems,
    subjects=subjects,
    **{
        **PARITY.hooks(),
        "label": lambda layout, params: f"{PARITY.label(layout, params)}/{params.kd.name}",
        "label_params": ("kd", "parity_layout"),
    },
)
