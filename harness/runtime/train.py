"""Train zoo models on the synthetic corpus, once per recipe, cached as torch_dist checkpoints.

The checkpoint is written under TP1/PP1 and read under any layout (the ckpt suite guards that path).
Every rank trains the same replica from the same seed and data: no gradient exchange is needed, and
the result does not depend on the world size of the pool that happened to train it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import asdict
from pathlib import Path

import torch
import torch.distributed as dist

from harness.data.corpus import MarkovCorpus
from harness.models.zoo import ModelSpec, build_gpt
from harness.records import Layout
from harness.runtime.checkpoint import load_checkpoint, save_checkpoint
from harness.runtime.distributed import model_parallel
from harness.runtime.forward import device

TRAIN_STREAM = 0  # corpus stream ids: training data; evaluations and calibration use others


def cache_root() -> Path:
    return Path(os.environ.get("HARNESS_CACHE", Path.home() / ".cache" / "posttrain-harness"))


def recipe_key(spec: ModelSpec) -> str:
    """Architecture + recipe + the megatron-core that trained it: any change retrains."""
    from megatron.core.package_info import __version__ as mcore

    text = json.dumps({"spec": asdict(spec), "megatron-core": mcore, "torch": torch.__version__}, sort_keys=True)
    return f"{spec.name}-{hashlib.sha256(text.encode()).hexdigest()[:16]}"


def corpus_of(spec: ModelSpec) -> MarkovCorpus:
    assert spec.recipe is not None
    return MarkovCorpus(spec.vocab_size, spec.recipe.corpus_seed)


def _train(spec: ModelSpec) -> torch.nn.Module:
    recipe = spec.recipe
    assert recipe is not None
    model = build_gpt(spec, seed=recipe.seed, parallel_output=True).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / recipe.warmup_steps))
    corpus = corpus_of(spec)
    positions = torch.arange(recipe.seq_len, device=device()).unsqueeze(0).expand(recipe.batch_size, -1)
    for step in range(recipe.steps):
        batch = torch.from_numpy(corpus.sample(recipe.batch_size, recipe.seq_len + 1, stream_seed=(TRAIN_STREAM, step))).to(device())
        loss = model(batch[:, :-1], positions, None, labels=batch[:, 1:]).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        if step % 50 == 0 or step == recipe.steps - 1:
            print(f"[harness] train {spec.name} step {step} loss {loss.item():.4f}", flush=True)
    return model.eval()


def _cached(spec: ModelSpec) -> Path:
    return cache_root() / "models" / recipe_key(spec)


def ensure_trained(spec: ModelSpec) -> Path:
    """The checkpoint of ``spec``'s recipe, training it first if no cache holds it (collective)."""
    final = _cached(spec)
    if (final / "COMPLETE").exists():
        return final
    staging = final.with_name(f"{final.name}.partial")
    start = time.perf_counter()
    with model_parallel(Layout(1, 1), spec.recipe.seed):
        model = _train(spec)
        if dist.get_rank() == 0:
            shutil.rmtree(staging, ignore_errors=True)
        dist.barrier()
        save_checkpoint(model, staging)
    dist.barrier()
    if dist.get_rank() == 0:
        (staging / "COMPLETE").write_text(json.dumps({"seconds": round(time.perf_counter() - start, 1)}))
        shutil.rmtree(final, ignore_errors=True)
        staging.rename(final)  # a crash before this leaves only the .partial folder, never a half cache
    dist.barrier()
    return final


def build_model(spec: ModelSpec, *, seed: int) -> torch.nn.Module:
    """``spec`` under the current layout: random weights, or its trained checkpoint."""
    model = build_gpt(spec, seed=seed)
    if spec.recipe is None:
        return model
    path = _cached(spec)
    if not (path / "COMPLETE").exists():
        raise RuntimeError(f"{spec.name} is not trained yet; the worker trains it before the case starts")
    return load_checkpoint(model, path)
