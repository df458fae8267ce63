"""The MoE router without Transformer Engine, unadapted. megatron-core 0.16 reads ``te_general_gemm`` in
the router's gating GEMM but binds the name only when TE imports: every MoE forward on a machine without TE
raises NameError. The harness's ``moe-router-without-te`` CPU adaptation binds it to None for every other
case; this check withdraws it for one forward, so the defect is measured (a known defect on 0.16) and its
fix noticed (FIXED? on a megatron-core that binds the name itself, 0.19).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import PositiveInt

from harness.checks.base import Check, CheckContext, MetricSpec, StrictModel
from harness.records import Budget, Layout, Tolerance

if TYPE_CHECKING:
    from harness.records import ModelSpec

ADAPTATION = "moe-router-without-te"


class RouterParams(StrictModel):
    batch_size: PositiveInt = 2
    seq_len: PositiveInt = 16


def run(ctx: CheckContext) -> dict[str, float]:
    from harness.runtime.cpu_compat import withdrawn
    from harness.runtime.distributed import model_parallel
    from harness.runtime.forward import fixed_tokens, forward_logits
    from harness.runtime.subject import build_model

    params: RouterParams = ctx.params
    spec, seed = ctx.model, ctx.case.seed
    tokens = fixed_tokens(params.batch_size, params.seq_len, spec.vocab_size, seed)
    with model_parallel(ctx.case.layout, seed):
        model = build_model(spec, seed=seed)
        adapted = forward_logits(model, tokens, spec.vocab_size)
        with withdrawn(ADAPTATION):
            try:
                unadapted = forward_logits(model, tokens, spec.vocab_size)
            except NameError as err:  # every rank routes its own tokens, so every rank raises alike
                if "te_general_gemm" not in str(err):
                    raise
                print(f"[moe_router] the forward without {ADAPTATION} raised: NameError: {err}", flush=True)
                return {"unadapted_forward_failed": 1.0}
    diff = float((unadapted - adapted).abs().max())
    print(f"[moe_router] the forward without {ADAPTATION} ran; max |logits - adapted logits| = {diff:g}", flush=True)
    return {"unadapted_forward_failed": 0.0, "unadapted_max_abs_logit_diff": diff}


def _problems(layout: Layout, params: RouterParams, model: ModelSpec) -> list[tuple[str, str]]:
    if model.num_moe_experts is None:
        return [("model", f"{model.name} is dense: the router check needs a mixture-of-experts model")]
    if layout.pp > 1:
        return [
            (
                "layout",
                "the router check runs without pipeline stages: a stage that raises would leave the next one waiting",
            )
        ]
    return []


CHECK = Check(
    name="moe_router",
    description="megatron-core's MoE router forward with the moe-router-without-te CPU adaptation withdrawn",
    params=RouterParams,
    metrics={
        "unadapted_forward_failed": MetricSpec(
            "1 when the router's forward raises NameError on te_general_gemm without the adaptation, else 0",
            Tolerance(abs=0.0),
            Budget(max=0.0),
        ),
        "unadapted_max_abs_logit_diff": MetricSpec(
            "max |logits without the adaptation - logits with it| (only when the forward runs: both take torch.mm)",
            Tolerance(abs=0.0),
            Budget(max=0.0),
        ),
    },
    run=run,
    case_problems=_problems,
    headline=("unadapted_forward_failed", "unadapted_max_abs_logit_diff"),
)
