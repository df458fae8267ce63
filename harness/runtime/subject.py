"""The model a case runs on, under the current layout, and the tokenizer that turns its evaluation
text into ids: a zoo model (random, or a shipped subject: trained once, loaded everywhere), a
megatron torch_dist checkpoint, or a Hugging Face checkpoint imported with modelopt's megatron importer.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import torch

from harness.models.subjects import SubjectError, manifest
from harness.records import ModelSpec
from harness.runtime.checkpoint import load_checkpoint
from harness.runtime.megatron import build_gpt, torch_dtype
from harness.runtime.weights import load_whole


def build_model(spec: ModelSpec, *, seed: int, parallel_output: bool = False) -> torch.nn.Module:
    """``spec`` with its weights, sharded for the current megatron parallel state (collective).
    ``parallel_output``: vocabulary-parallel logits, as training and distillation losses take them."""
    model = build_gpt(spec, seed=seed, parallel_output=parallel_output)
    if spec.hf_path is not None:
        from modelopt.torch.export import import_mcore_gpt_from_hf

        # in the case's dtype (a bf16 checkpoint upcasts to fp32 exactly)
        import_mcore_gpt_from_hf(model, spec.hf_path, dtype=torch_dtype(spec))
        return model.eval()
    if spec.checkpoint is not None:
        return load_checkpoint(model, Path(spec.checkpoint))
    if spec.recipe is None:
        return model
    load_whole(model, shipped_file(spec.name, asdict(spec.recipe)))
    return model


def shipped_file(name: str, recipe: dict) -> Path:
    """The verified file of subject ``name``, which must have been built by ``recipe``: a zoo recipe
    changed without a rebuild is refused, like a file whose hash differs."""
    shipped = manifest()
    entry = shipped.entry(name)
    if entry.get("recipe") != recipe:
        raise SubjectError(
            f"subject {name} was built by recipe {entry.get('recipe')}, the harness now asks for {recipe}; "
            f"rebuild it with `harness models build {name}` (and re-record the baselines that use it)"
        )
    for base, digest in entry.get("requires", {}).items():  # heads belong to the base they were trained on
        if shipped.expected_hash(base) != digest:
            raise SubjectError(
                f"subject {name} was trained on {base} sha256 {digest[:16]}..., the shipped {base} is "
                f"{shipped.expected_hash(base)[:16]}...; rebuild it with `harness models build {name}`"
            )
    return shipped.verified_file(name)
