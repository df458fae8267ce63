"""Speculative decoding: draft heads added with modelopt's speculative API, trained briefly on the
base model's own greedy outputs; their acceptance length (AL) and per-position acceptance measured
the way Megatron's post-training evaluation does; losslessness (speculative greedy output equals
autoregressive greedy output, token for token); and the wall-clock speedup of draft-then-verify
decoding over autoregressive decoding, as a median with a bootstrap confidence interval.
"""

from __future__ import annotations

import functools
import gc
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from pydantic import NonNegativeInt, PositiveInt

from harness.checks.base import Check, CheckContext, MetricSpec, StrictModel
from harness.data.files import expand_path, stamp
from harness.data.text import CORPUS, TextSourceError, text_file_problem
from harness.data.tokenizer import tokenizer_for
from harness.evals.mtbench import first_turn, prompts, read_questions, unknown_problem
from harness.evals.timing import PairingPlan
from harness.models.subjects import HeadsName
from harness.models.zoo import ZOO
from harness.records import INFORMATIONAL, Budget, Case, Direction, Layout, ModelSpec, Tolerance
from harness.runtime.drafts import ALGORITHMS, HeadRecipe


class SpecParams(StrictModel):
    algorithm: Literal["medusa", "eagle3", "eagle_mtp"] = "medusa"
    draft_steps: PositiveInt = 3
    train_steps: NonNegativeInt = 150  # the shipped heads trained this long; 0: freshly initialised heads (the floor)
    # Train around the algorithm's known modelopt defect (drafts.DraftAlgorithm.workaround), as the shipped heads are;
    # false: train in the case as modelopt does, to show the defect (suites/spec_defects.yaml).
    workaround: bool = True
    # What the heads learn to continue: "corpus" (the harness's chain; what the shipped heads learned) or a text /
    # jsonl file of real text, for a real checkpoint whose continuations of the word chain mean nothing.
    train_text: str = CORPUS
    # Prompts: "corpus" (the harness's chain) or an MT-Bench question.jsonl (every question's first turn).
    prompts: str = CORPUS
    num_prompts: PositiveInt = 4  # corpus prompts (an MT-Bench file is scored on every question, or ...)
    questions_per_category: NonNegativeInt = 0  # ... on the first N of each of its categories (0: all)
    prompt_len: PositiveInt = 16  # corpus prompts only
    new_tokens: PositiveInt = 16
    # Speed: warm-up pairs, then autoregressive / speculative pairs (A B A B ...) until the speedup's 95% interval
    # is tight enough for the case's speedup tolerance (pairing_plan), or max pairs.
    timing_prompts: PositiveInt | None = None  # the first N prompts make one timed pass (None: all; MT-Bench has 80)
    timing_warmup: NonNegativeInt = 2
    timing_min_pairs: PositiveInt = 15
    timing_max_pairs: PositiveInt = 60


PARALLEL_DRAFT_STEP = 1  # modelopt's default: the base model's own next token


def heads_subject(base: str, params: SpecParams) -> str | None:
    """The shipped subject holding the trained heads a case asks for: heads ship for shipped bases
    (zoo models with a recipe). On any other base (a real checkpoint) the case trains them itself,
    under its own environment's numerics and baselines."""
    spec = ZOO.get(base)
    shipped_recipe = params.train_steps and params.workaround and params.train_text == CORPUS
    if not shipped_recipe or spec is None or spec.recipe is None:
        return None
    return HeadsName(
        base, params.algorithm, ALGORITHMS[params.algorithm].heads_steps(params.draft_steps), params.train_steps
    ).name


def _subjects(params: dict[str, Any], model: str) -> list[str]:
    name = heads_subject(model, SpecParams.model_validate(params))
    return [] if name is None else [name]


def _label(layout: Layout, params: SpecParams) -> str:
    return f"{layout.token}/{params.algorithm}-k{params.draft_steps}-t{params.train_steps}"


def _prompt_problem(source: str, model: ModelSpec) -> str | None:
    return None if source == CORPUS else _questions_problem(source, stamp(expand_path(source)), model)


@functools.cache
def _questions_problem(source: str, version: tuple[object, ...], model: ModelSpec) -> str | None:
    """What is wrong with an MT-Bench question file for this model's tokenizer, before any worker starts (cached
    per file ``version``): its format, or prompts made mostly of tokens the tokenizer does not know."""
    path = Path(expand_path(source))
    try:
        questions = read_questions(path)
    except TextSourceError as err:
        return str(err)
    if model.unavailable:
        return None  # its tokenizer is not on this machine: the case is skipped, saying why
    tokenizer = tokenizer_for(model)
    return unknown_problem(path, questions, [first_turn(q, tokenizer) for q in questions], tokenizer)


def _case_problems(layout: Layout, params: SpecParams, model: Any) -> list[tuple[str, str]]:
    problems = []
    if layout.pp > 1:
        problems.append(
            (
                "layout",
                "speculative decoding runs without pipeline parallelism (modelopt's Medusa supports PP only for "
                "export)",
            )
        )
    if (prompt_problem := _prompt_problem(params.prompts, model)) is not None:
        problems.append(("prompts", prompt_problem))
    if (text_problem := text_file_problem(params.train_text)) is not None:
        problems.append(("train_text", text_problem))
    return problems


def _cpu_blocker(params: dict[str, Any]) -> str | None:
    blocker = ALGORITHMS[params["algorithm"]].cpu_blocker()
    return None if blocker is None else f"{params['algorithm']}: {blocker}"


SPEEDUP_BUDGET = 0.05  # the interval half-width every case must reach on CPU (GPU suites budget 0.02)
# Each pair is four draft calls and four base forwards; the overhead it gives is judged against its measured noise.
COST_PLAN = PairingPlan(warmup=1, min_pairs=10, max_pairs=20, half_width=0.03)
TIGHTNESS = 0.4  # the interval stops at this share of the speedup tolerance: noise alone then rarely crosses it


def pairing_plan(params: SpecParams, case: Case) -> PairingPlan:
    """Pairs go on until the speedup's interval is well inside what the case judges: a 5% tolerance
    needs +-2%, a 15% one +-5% (never looser than the half-width budget)."""
    budget = case.budgets.get("speedup_ci_half_width", Budget(max=SPEEDUP_BUDGET)).max or SPEEDUP_BUDGET
    rel = case.tolerances["speedup"].rel
    return PairingPlan(
        params.timing_warmup,
        params.timing_min_pairs,
        params.timing_max_pairs,
        min(budget, TIGHTNESS * rel) if rel else budget,
    )


def draft_agreement(tokens: list[list[int]], reference: list[list[int]] | None) -> dict[str, float]:
    """Per draft position, the share of the draft's tokens (from every ground-truth position, on the case's
    fixed prompts) equal to those kept when the baseline was recorded: every position is judged, including
    those acceptance never reaches. While recording, the run is its own reference (1.0)."""
    reference = tokens if reference is None else reference
    if [len(each) for each in reference] != [len(each) for each in tokens]:
        raise ValueError(
            f"the recorded draft tokens have {[len(each) for each in reference]} per position, this run "
            f"{[len(each) for each in tokens]}: the case's prompts or draft steps changed; re-record its baseline"
        )
    return {
        f"draft_agreement@{j + 1}": sum(a == b for a, b in zip(mine, theirs, strict=True)) / max(1, len(mine))
        for j, (mine, theirs) in enumerate(zip(tokens, reference, strict=True))
    }


def _timer(fn: Callable[[], None]) -> Callable[[], float]:
    """``fn``'s wall time across the case's ranks: all ranks start together, no garbage collection
    runs inside, the device queue is drained before each clock read (CUDA kernels run asynchronously),
    and every rank gets the slowest rank's seconds, so all ranks stop after the same pair."""
    import torch
    import torch.distributed as dist

    from harness.runtime.forward import device

    def sync() -> None:
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        dist.barrier()

    def timed() -> float:
        gc.collect()  # a collection falls between timings, never inside one (as pytest-benchmark's disable_gc)
        gc.disable()
        try:
            sync()
            start = time.perf_counter()
            fn()
            sync()
        finally:
            gc.enable()
        elapsed = torch.tensor([time.perf_counter() - start], dtype=torch.float64, device=device())
        dist.all_reduce(elapsed, op=dist.ReduceOp.MAX)
        return float(elapsed.item())

    return timed


def run(ctx: CheckContext) -> dict[str, float]:
    import torch

    from harness.evals.parity import bound, first_divergences
    from harness.evals.timing import interleaved
    from harness.runtime.distributed import model_parallel
    from harness.runtime.forward import device
    from harness.runtime.speculative import (
        base_logits,
        greedy,
        load_heads,
        measure_acceptance,
        speculative,
        train_heads,
        with_drafts,
    )
    from harness.runtime.subject import build_model
    from harness.runtime.train import corpus_of

    params: SpecParams = ctx.params
    algorithm, steps = ALGORITHMS[params.algorithm], params.draft_steps
    corpus, tokenizer = corpus_of(ctx.model), tokenizer_for(ctx.model)
    recipe = HeadRecipe(steps=params.train_steps)
    with model_parallel(ctx.case.layout, ctx.case.seed):
        model = with_drafts(ctx.model, algorithm, steps, ctx.case.seed, params.workaround)
        shipped = heads_subject(ctx.model.name, params)
        if shipped is not None:
            load_heads(model, shipped, recipe)
        elif params.train_steps:  # else the freshly initialised heads: the floor a trained head must beat
            train_heads(model, recipe, tokenizer, corpus, params.train_text)
        model.eval()
        batch = [
            torch.tensor([ids], device=device())
            for ids in prompts(
                params.prompts, tokenizer, corpus, params.num_prompts, params.prompt_len, params.questions_per_category
            )
        ]
        truths = [greedy(model, prompt, params.new_tokens) for prompt in batch]
        accepted = measure_acceptance(model, algorithm, truths, [p.shape[1] for p in batch], steps)
        outputs = [speculative(model, algorithm, prompt, params.new_tokens, steps) for prompt in batch]
        # the autoregressive logits that chose each new token, teacher-forced on its own output: only where the
        # speculative output differs (one more forward of the base per diverging prompt, none otherwise)
        chose = [
            None if torch.equal(output, truth) else base_logits(model, truth[:, :-1])[:, prompt.shape[1] - 1 :]
            for prompt, truth, output in zip(batch, truths, outputs, strict=True)
        ]
        starts = [prompt.shape[1] for prompt in batch]
        lossless = first_divergences(outputs, truths, chose, starts, bound(ctx.model.num_layers, ctx.model.dtype))

        timed = batch[: params.timing_prompts]

        def autoregressive() -> None:
            for prompt in timed:
                greedy(model, prompt, params.new_tokens)

        def drafted() -> None:
            for prompt in timed:
                speculative(model, algorithm, prompt, params.new_tokens, steps)

        paired = interleaved(_timer(autoregressive), _timer(drafted), pairing_plan(params, ctx.case), ctx.case.seed)

        # The draft's own cost: one draft call against one forward of the plain base (no draft module) on the
        # same prompt. The speedup cannot see a slower draft module where the decoding loop runs it either way.
        plain = build_model(ctx.model, seed=ctx.case.seed).eval()

        def base_forwards() -> None:
            for prompt in timed:
                base_logits(plain, prompt)

        def draft_calls() -> None:
            for prompt in timed:
                algorithm.draft(model, prompt, steps)

        cost = interleaved(_timer(draft_calls), _timer(base_forwards), COST_PLAN, ctx.case.seed)
    ctx.timings.update(autoregressive=list(paired.a_s), speculative=list(paired.b_s))
    ctx.kept["draft_tokens"] = accepted.draft_tokens
    tokens = params.new_tokens * len(timed)
    return {
        "acceptance_length": accepted.length,
        "acceptance_rate": accepted.length / (steps + PARALLEL_DRAFT_STEP),
        **lossless,
        "base_token_mismatches": float(accepted.base_mismatches),
        "speedup": paired.ratio,
        "speedup_ci_low": paired.low,
        "speedup_ci_high": paired.high,
        "speedup_ci_half_width": paired.half_width,
        "timing_pairs": float(len(paired.a_s)),
        "ar_tokens_per_s": tokens / statistics.median(paired.a_s),
        "spec_tokens_per_s": tokens / statistics.median(paired.b_s),
        **{f"position_acceptance@{j + 1}": accepted.rate(j) for j in range(steps)},
        **{f"position_joint_acceptance@{j + 1}": accepted.joint_rate(j) for j in range(steps)},
        **{f"draft_accuracy@{j + 1}": accepted.draft_accuracy(j) for j in range(steps)},
        **draft_agreement(accepted.draft_tokens, ctx.case.reference.get("draft_tokens")),
        "draft_cost_ratio": cost.ratio,
        "draft_overhead": cost.ratio - 1,
        "draft_cost_ci_half_width": cost.half_width,
    }


_EXACT = Tolerance()  # widened to the metric's measured noise (harness.noise)
_ONE_SIDED = Tolerance(direction=Direction.HIGHER_IS_BETTER)  # a drop fails (by more than its measured noise)
# What the harness promises to catch: a draft call 10% dearer against a base forward fails; one 20% cheaper asks
# for its baseline to be re-recorded. Never tighter than the ratio's measured noise nor its interval's.
_DRAFT_COST = Tolerance(rel=0.1, direction=Direction.LOWER_IS_BETTER, refresh_rel=0.2)
# One-sided: a drop of more than 5% fails. The interval budget keeps the median's own noise well inside
# that, so a 10% slower speculative path fails (tests/e2e/test_spec_speed.py) and a healthy one passes.
_TIME = Tolerance(rel=0.05, direction=Direction.HIGHER_IS_BETTER, refresh_rel=0.2)

CHECK = Check(
    name="spec_decode",
    description=(
        "draft heads (modelopt speculative): acceptance length, losslessness and speedup over autoregressive decoding"
    ),
    params=SpecParams,
    metrics={
        "acceptance_length": MetricSpec(
            "tokens per draft-and-verify step against greedy ground truth (Megatron's AL)", _EXACT
        ),
        "acceptance_rate": MetricSpec(
            "acceptance length / (draft steps + parallel draft step) (Megatron's AR)", _EXACT
        ),
        "position_acceptance@*": MetricSpec(
            "share of draft steps reaching draft position N whose token N is accepted (conditional)", _ONE_SIDED
        ),
        "position_joint_acceptance@*": MetricSpec(
            "share of draft steps accepting positions 1..N (product of the conditional rates)", _ONE_SIDED
        ),
        "draft_accuracy@*": MetricSpec(
            "draft token N equals greedy decoding's, from every ground-truth position (teacher-forced: "
            "also the positions acceptance never reaches)",
            _EXACT,
        ),
        "draft_agreement@*": MetricSpec(
            "draft token N equals the one recorded with the baseline, from every ground-truth position "
            "(a defect that changes only drafts acceptance never reaches still shows)",
            _ONE_SIDED,
        ),
        "draft_cost_ratio": MetricSpec(
            "median over interleaved pairs of one draft call's time / one plain base forward's",
            _DRAFT_COST,
            interval="draft_cost_ci_half_width",
        ),
        "draft_overhead": MetricSpec(
            "draft_cost_ratio - 1: the draft module's own cost, in base forwards", INFORMATIONAL
        ),
        "draft_cost_ci_half_width": MetricSpec("half the draft cost ratio's 95% interval / the ratio", INFORMATIONAL),
        # Greedy speculative decoding is lossless by construction, on every machine: a decided divergence is a bug.
        # A near tie may flip where the verify forward (a longer sequence) rounds otherwise (bf16; GPU kernels tiled
        # by sequence length): harness.evals.parity.first_divergences.
        "lossless_mismatches": MetricSpec(
            "prompts whose speculative greedy output first leaves autoregressive greedy at a decided choice (top-1 "
            "margin above sqrt(2) x parity bound x ||logits||)",
            _EXACT,
            Budget(max=0.0),
        ),
        "lossless_divergences": MetricSpec(
            "prompts whose speculative output leaves autoregressive greedy at all (near ties included)", INFORMATIONAL
        ),
        "lossless_divergence_margin_to_threshold": MetricSpec(
            "the largest margin / threshold at a first divergence (0: none; > 1: a decided one)", INFORMATIONAL
        ),
        "base_token_mismatches": MetricSpec(
            "draft steps whose base token differs from greedy decoding", _EXACT, Budget(max=0.0)
        ),
        "speedup": MetricSpec(
            "median over interleaved pairs of autoregressive time / speculative time (no KV cache either way)",
            _TIME,
            interval="speedup_ci_half_width",
        ),
        "speedup_ci_low": MetricSpec("95% bootstrap interval of the speedup median, low end", INFORMATIONAL),
        "speedup_ci_high": MetricSpec("95% bootstrap interval of the speedup median, high end", INFORMATIONAL),
        "speedup_ci_half_width": MetricSpec(
            "half the speedup interval's width / the speedup (the pairs stop once within budget)",
            INFORMATIONAL,
            Budget(max=SPEEDUP_BUDGET),
        ),
        "timing_pairs": MetricSpec(
            "interleaved pairs it took to reach the interval budget (or timing_max_pairs)", INFORMATIONAL
        ),
        "ar_tokens_per_s": MetricSpec("autoregressive decoding throughput (median)", INFORMATIONAL),
        "spec_tokens_per_s": MetricSpec("speculative decoding throughput (median)", INFORMATIONAL),
    },
    run=run,
    headline=(
        "acceptance_length",
        "position_acceptance@1",
        "position_acceptance@2",
        "draft_accuracy@1",
        "draft_accuracy@2",
        "lossless_mismatches",
        "speedup",
        "draft_overhead",
    ),
    label=_label,
    label_params=("algorithm", "draft_steps", "train_steps"),
    case_problems=_case_problems,
    cpu_blocker=_cpu_blocker,
    subjects=_subjects,
)
