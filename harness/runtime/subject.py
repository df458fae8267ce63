"""The model a case runs on, under the current layout, and the tokenizer that turns its evaluation
text into ids: a zoo model (random or harness-trained), a megatron torch_dist checkpoint, or a
Hugging Face checkpoint imported with modelopt's megatron importer.
"""

from __future__ import annotations

from pathlib import Path

import torch

from harness.data.tokenizer import WordTokenizer
from harness.evals.mmlu import Tokenizer
from harness.models.zoo import ModelSpec, build_gpt
from harness.runtime.checkpoint import load_checkpoint
from harness.runtime.train import checkpoint_path


def build_model(spec: ModelSpec, *, seed: int, parallel_output: bool = False) -> torch.nn.Module:
    """``spec`` with its weights, sharded for the current megatron parallel state (collective).
    ``parallel_output``: vocabulary-parallel logits, as training and distillation losses take them."""
    model = build_gpt(spec, seed=seed, parallel_output=parallel_output)
    if spec.hf_path is not None:
        from modelopt.torch.export import import_mcore_gpt_from_hf

        # float32: the harness compares against float32 baselines; GPU users' bf16 weights upcast exactly.
        import_mcore_gpt_from_hf(model, spec.hf_path, dtype=torch.float32)
        return model.eval()
    if spec.checkpoint is not None:
        return load_checkpoint(model, Path(spec.checkpoint))
    if spec.recipe is None:
        return model
    path = checkpoint_path(spec)
    if not (path / "COMPLETE").exists():
        raise RuntimeError(f"{spec.name} is not trained yet; the worker trains it before the case starts")
    return load_checkpoint(model, path)


def tokenizer_for(spec: ModelSpec) -> Tokenizer:
    """The checkpoint's own tokenizer for Hugging Face models; the harness word tokenizer otherwise."""
    if spec.hf_path is None:
        return WordTokenizer(spec.vocab_size)
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(spec.hf_path)
