"""Speculative decoding: draft heads added with modelopt's speculative API, trained briefly on the
base model's own greedy outputs; their acceptance length (AL) and per-position acceptance measured
the way Megatron's post-training evaluation does; losslessness (speculative greedy output equals
autoregressive greedy output, token for token); and the wall-clock speedup of draft-then-verify
decoding over autoregressive decoding, as a median with a bootstrap confidence interval.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from pydantic import NonNegativeInt, PositiveInt

from harness.checks.base import Check, CheckContext, MetricSpec, StrictModel
from harness.data.files import stamp
from harness.data.text import CORPUS, TextSourceError
from harness.evals.mtbench import prompts, read_questions
from harness.models.sources import expand_path
from harness.models.subjects import HeadsName
from harness.models.zoo import ZOO
from harness.records import INFORMATIONAL, Budget, Direction, Layout, Tolerance
from harness.runtime.drafts import ALGORITHMS, HeadRecipe


class SpecParams(StrictModel):
    algorithm: Literal["medusa", "eagle3", "eagle_mtp"] = "medusa"
    draft_steps: PositiveInt = 3
    train_steps: NonNegativeInt = 150  # the shipped heads trained this long; 0: freshly initialised heads (the floor)
    # Prompts: "corpus" (the harness's chain) or an MT-Bench question.jsonl (every question's first turn).
    prompts: str = CORPUS
    num_prompts: PositiveInt = 4  # corpus prompts (an MT-Bench file is scored on every question)
    prompt_len: PositiveInt = 16  # corpus prompts only
    new_tokens: PositiveInt = 16
    timing_repeats: PositiveInt = 5  # interleaved autoregressive / speculative timings, after the correctness passes warmed both up


PARALLEL_DRAFT_STEP = 1  # modelopt's default: the base model's own next token


def heads_subject(base: str, params: SpecParams) -> str | None:
    """The shipped subject holding the trained heads a case asks for: heads ship for shipped bases
    (zoo models with a recipe). On any other base (a real checkpoint) the case trains them itself,
    under its own environment's numerics and baselines."""
    spec = ZOO.get(base)
    if params.train_steps == 0 or spec is None or spec.recipe is None:
        return None
    return HeadsName(base, params.algorithm, params.draft_steps, params.train_steps).name


def _subjects(params: dict[str, Any], model: str) -> list[str]:
    name = heads_subject(model, SpecParams.model_validate(params))
    return [] if name is None else [name]


def _label(layout: Layout, params: SpecParams) -> str:
    return f"{layout.token}/{params.algorithm}-k{params.draft_steps}-t{params.train_steps}"


def _prompt_problem(source: str) -> str | None:
    return None if source == CORPUS else _questions_problem(source, stamp(expand_path(source)))


@functools.cache
def _questions_problem(source: str, version: tuple[object, ...]) -> str | None:
    """What is wrong with an MT-Bench question file, before any worker starts (cached per ``version``)."""
    try:
        read_questions(Path(expand_path(source)))
    except TextSourceError as err:
        return str(err)
    return None


def _case_problems(layout: Layout, params: SpecParams, model: Any) -> list[tuple[str, str]]:
    problems = []
    if layout.pp > 1:
        problems.append(("layout", "speculative decoding runs without pipeline parallelism (modelopt's Medusa supports PP only for export)"))
    if (prompt_problem := _prompt_problem(params.prompts)) is not None:
        problems.append(("prompts", prompt_problem))
    return problems


def _cpu_blocker(params: dict[str, Any]) -> str | None:
    blocker = ALGORITHMS[params["algorithm"]].cpu_blocker
    return None if blocker is None else f"{params['algorithm']}: {blocker}"


def _timed(fn: Callable[[], None]) -> float:
    import torch.distributed as dist

    dist.barrier()
    start = time.perf_counter()
    fn()
    dist.barrier()
    return time.perf_counter() - start


def run(ctx: CheckContext) -> dict[str, float]:
    import torch

    from harness.evals.timing import median_ci
    from harness.runtime.distributed import model_parallel
    from harness.runtime.forward import device
    from harness.runtime.speculative import greedy, load_heads, measure_acceptance, speculative, train_heads, with_drafts
    from harness.runtime.subject import tokenizer_for
    from harness.runtime.train import corpus_of

    params: SpecParams = ctx.params
    algorithm, steps = ALGORITHMS[params.algorithm], params.draft_steps
    corpus, tokenizer = corpus_of(ctx.model), tokenizer_for(ctx.model)
    recipe = HeadRecipe(steps=params.train_steps)
    with model_parallel(ctx.case.layout, ctx.case.seed):
        model = with_drafts(ctx.model, algorithm, steps, ctx.case.seed)
        shipped = heads_subject(ctx.model.name, params)
        if shipped is not None:
            load_heads(model, shipped, recipe)
        elif params.train_steps:  # else the freshly initialised heads: the floor a trained head must beat
            train_heads(model, recipe, tokenizer, corpus)
        model.eval()
        batch = [torch.tensor([ids], device=device()) for ids in prompts(params.prompts, tokenizer, corpus, params.num_prompts, params.prompt_len)]
        truths = [greedy(model, prompt, params.new_tokens) for prompt in batch]
        accepted = measure_acceptance(model, algorithm, truths, [p.shape[1] for p in batch], steps)
        outputs = [speculative(model, algorithm, prompt, params.new_tokens, steps) for prompt in batch]
        mismatches = sum(int((out != truth).sum()) for out, truth in zip(outputs, truths, strict=True))

        def autoregressive() -> None:
            for prompt in batch:
                greedy(model, prompt, params.new_tokens)

        def drafted() -> None:
            for prompt in batch:
                speculative(model, algorithm, prompt, params.new_tokens, steps)

        ar_s, spec_s = [], []  # the ground-truth and lossless passes above were both paths' warm-up
        for _ in range(params.timing_repeats):
            ar_s.append(_timed(autoregressive))
            spec_s.append(_timed(drafted))
    speedup, low, high = median_ci([a / s for a, s in zip(ar_s, spec_s, strict=True)], seed=ctx.case.seed)
    tokens = params.new_tokens * len(batch)
    return {
        "acceptance_length": accepted.length,
        "acceptance_rate": accepted.length / (steps + PARALLEL_DRAFT_STEP),
        "lossless_mismatches": float(mismatches),
        "base_token_mismatches": float(accepted.base_mismatches),
        "speedup": speedup,
        "speedup_ci_low": low,
        "speedup_ci_high": high,
        "ar_tokens_per_s": tokens / sorted(ar_s)[len(ar_s) // 2],
        "spec_tokens_per_s": tokens / sorted(spec_s)[len(spec_s) // 2],
        **{f"position_acceptance@{j + 1}": accepted.rate(j) for j in range(steps)},
    }


_AL = Tolerance(abs=0.02)  # deterministic on one CPU; allows another machine's reduction order
_TIME = Tolerance(rel=0.5, direction=Direction.HIGHER_IS_BETTER)  # a 2-core shared machine: fails only on a halving

CHECK = Check(
    name="spec_decode",
    description="draft heads (modelopt speculative): acceptance length, losslessness and speedup over autoregressive decoding",
    params=SpecParams,
    metrics={
        "acceptance_length": MetricSpec("tokens per draft-and-verify step against greedy ground truth (Megatron's AL)", _AL),
        "acceptance_rate": MetricSpec("acceptance length / (draft steps + parallel draft step) (Megatron's AR)", _AL),
        "position_acceptance@*": MetricSpec("share of draft steps reaching draft position N whose token N is accepted", _AL),
        # Greedy speculative decoding is lossless by construction, on every machine: any difference is a bug.
        "lossless_mismatches": MetricSpec("tokens where speculative greedy output differs from autoregressive greedy", Tolerance(),
                                          Budget(max=0.0)),
        "base_token_mismatches": MetricSpec("draft steps whose base token differs from greedy decoding", Tolerance(), Budget(max=0.0)),
        "speedup": MetricSpec("median autoregressive time / speculative time (no KV cache either way)", _TIME),
        "speedup_ci_low": MetricSpec("95% bootstrap interval of the speedup median, low end", INFORMATIONAL),
        "speedup_ci_high": MetricSpec("95% bootstrap interval of the speedup median, high end", INFORMATIONAL),
        "ar_tokens_per_s": MetricSpec("autoregressive decoding throughput (median)", INFORMATIONAL),
        "spec_tokens_per_s": MetricSpec("speculative decoding throughput (median)", INFORMATIONAL),
    },
    run=run,
    label=_label,
    label_params=("algorithm", "draft_steps", "train_steps"),
    case_problems=_case_problems,
    cpu_blocker=_cpu_blocker,
    subjects=_subjects,
)
