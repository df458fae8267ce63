"""The internal check ``harness models build`` runs (harness.commands.models): train a subject once, under
the pinned numerics, in a real worker, and write its whole tensors; or write a shipped model as a megatron
torch_dist checkpoint. A case of it gets the same warm-worker launch, timeouts and logs as any case. Not a
suite check: it is named by import path."""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from harness.checks.base import Check, CheckContext, StrictModel
from harness.models.subjects import HeadsName, SubjectError
from harness.models.zoo import ZOO
from harness.records import Case, Layout, ModelSpec
from harness.runtime.drafts import ALGORITHMS, HeadRecipe

SUBJECT_FILE = "subject.safetensors"
BUILD_SEED = 1234  # the seed the suites' cases use: untrained heads are drawn from it at convert time
BUILD_TIMEOUT_S = 3600.0


class BuildParams(StrictModel):
    subject: str
    export_to: str | None = (
        None  # instead of training: write the shipped model as a megatron torch_dist checkpoint here
    )


def split_name(name: str) -> tuple[ModelSpec, HeadsName | None]:
    """The zoo model a subject name builds on, and its draft heads when it names some."""
    heads = HeadsName.parse(name)
    spec = ZOO.get(heads.base if heads else name)
    if spec is None or spec.recipe is None:
        trainable = ", ".join(sorted(n for n, s in ZOO.items() if s.recipe)) or "none"
        raise SubjectError(
            f"cannot build {name!r}: a subject is a zoo model with a training recipe ({trainable}) or draft heads "
            "on one, named BASE+ALGORITHM-kSTEPS-tTRAINSTEPS (e.g. tiny-gpt-trained+medusa-k2-t150)"
        )
    if heads is not None and (heads.algorithm not in ALGORITHMS or heads.train_steps == 0):
        raise SubjectError(
            f"cannot build {name!r}: algorithm must be one of {', '.join(ALGORITHMS)} and training steps > 0"
        )
    return spec, heads


def recipe_of(name: str) -> dict[str, Any]:
    spec, heads = split_name(name)
    return asdict(HeadRecipe(steps=heads.train_steps)) if heads else asdict(spec.recipe)


def _run(ctx: CheckContext) -> dict[str, float]:
    import torch.distributed as dist

    from harness.runtime.distributed import model_parallel
    from harness.runtime.weights import save_whole, whole_tensors

    name = ctx.params.subject
    spec, heads = split_name(name)
    start = time.perf_counter()
    with model_parallel(Layout(1, 1), BUILD_SEED):
        if ctx.params.export_to is not None:
            from harness.runtime.checkpoint import save_checkpoint
            from harness.runtime.subject import build_model

            save_checkpoint(build_model(spec, seed=BUILD_SEED), Path(ctx.params.export_to))
            return {"export_s": time.perf_counter() - start}
        if heads is None:
            from harness.runtime.train import train

            tensors = whole_tensors(train(spec))
        else:
            # the draft module's tensors only (a converted base can change its own checkpoint keys: EAGLE makes them per
            # layer)
            module = ALGORITHMS[heads.algorithm].heads_module + "."
            tensors = {
                key: t for key, t in whole_tensors(_trained_heads(spec, heads)).items() if key.startswith(module)
            }
    if dist.get_rank() == 0:
        save_whole(tensors, ctx.artifacts / SUBJECT_FILE, {"subject": name})
    dist.barrier()
    return {
        "tensors": float(len(tensors)),
        "parameters": float(sum(t.numel() for t in tensors.values())),
        "train_s": time.perf_counter() - start,
    }


def _trained_heads(spec: ModelSpec, heads: HeadsName) -> Any:

    from harness.data.tokenizer import tokenizer_for
    from harness.runtime.speculative import train_heads, with_drafts
    from harness.runtime.train import corpus_of

    algorithm, recipe = ALGORITHMS[heads.algorithm], HeadRecipe(steps=heads.train_steps)
    model = with_drafts(spec, algorithm, heads.draft_steps, BUILD_SEED)
    train_heads(model, recipe, tokenizer_for(spec), corpus_of(spec))
    return model


BUILD = Check(
    name="harness.checks.subject_build:BUILD",
    description="train a subject under the pinned numerics and write its whole tensors (safetensors)",
    params=BuildParams,
    metrics={},
    run=_run,
)


def build_case(name: str, export_to: Path | None = None) -> Case:
    spec, _ = split_name(name)
    params = {"subject": name} | ({"export_to": str(export_to.resolve())} if export_to else {})
    return Case(
        id=f"build/{name}",
        suite="build",
        check=BUILD.name,
        model=spec.name,
        model_spec=spec,
        layout=Layout(1, 1),
        optimization="none",
        params=params,
        platform="cpu",
        world_size=1,
        markers=("build",),
        tolerances={},
        budgets={},
        timeout_s=BUILD_TIMEOUT_S,
        seed=BUILD_SEED,
        source="harness models build",
    )
