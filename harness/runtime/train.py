"""Train zoo models on the synthetic corpus: what ``harness models build`` runs to make a shipped
subject (harness.models.subjects). Cases never train: they load the shipped weights.

Every rank trains the same replica from the same seed and data under TP1/PP1: no gradient exchange
is needed, and the result does not depend on the world size of the pool that trains it.
"""

from __future__ import annotations

import numpy as np
import torch

from harness.data.corpus import MarkovCorpus
from harness.data.multiple_choice import format_prompt
from harness.data.tokenizer import WordTokenizer
from harness.records import ModelSpec, TrainRecipe
from harness.runtime.forward import device
from harness.runtime.megatron import build_gpt

CORPUS_VOCAB = 1024  # the word vocabulary of the corpus when the model brings its own tokenizer
RARE_WORDS = 128  # corpus words that never occur in text (multiple-choice distractors)
TRAIN_STREAM = 0  # corpus stream ids: training data; evaluations and calibration use others


def corpus_of(spec: ModelSpec) -> MarkovCorpus:
    """The chain over the word tokenizer's corpus words (the top ids are the prompt template's).
    Checkpoints with their own tokenizer read the corpus as text, so their vocabulary does not size
    it (a 128k-word chain would take minutes to draw)."""
    words = WordTokenizer(spec.vocab_size if spec.hf_path is None else CORPUS_VOCAB).n_words
    return MarkovCorpus(words, spec.recipe.corpus_seed if spec.recipe else 0, rare_words=RARE_WORDS)


def _mc_rows(corpus: MarkovCorpus, tokenizer: WordTokenizer, rows: int, width: int, step: int) -> np.ndarray:
    """Answered multiple-choice prompts back to back, cut to ``width``: the model learns the format
    (and that the answer is the letter of the likeliest next word) from these."""
    out = np.empty((rows, width), dtype=np.int64)
    for row in range(rows):
        ids: list[int] = []
        items = iter(corpus.multiple_choice(width // 16 + 1, stream_seed=(TRAIN_STREAM * 1_000_003 + step) * 64 + row))
        while len(ids) < width:
            item = next(items)
            ids += tokenizer.encode(f"{format_prompt(item)} {item.answer}")
        out[row] = ids[:width]
    return out


def training_batch(recipe: TrainRecipe, corpus: MarkovCorpus, tokenizer: WordTokenizer, step: int) -> np.ndarray:
    """``[batch, seq + 1]`` tokens of step ``step``: corpus text, then ``recipe.mc_rows`` rows of
    multiple-choice prompts. The corpus is built once per training run: drawing its chain costs more
    than a batch."""
    width = recipe.seq_len + 1
    text = corpus.sample(recipe.batch_size - recipe.mc_rows, width, stream_seed=(TRAIN_STREAM, step))
    return np.concatenate([text, _mc_rows(corpus, tokenizer, recipe.mc_rows, width, step)])


def _loss_weights(inputs: torch.Tensor, tokenizer: WordTokenizer, answer_weight: float) -> torch.Tensor:
    """Per-target weights: the random option words of a question carry nothing to learn (0), the
    answer letter carries the whole question (``answer_weight``), every other token 1."""
    weights = torch.ones(inputs.shape, dtype=torch.float32, device=inputs.device)
    options = torch.tensor(tokenizer.encode("A. B. C. D."), device=inputs.device)
    weights[torch.isin(inputs, options)] = 0.0
    weights[inputs == tokenizer.encode("Answer:")[0]] = answer_weight
    return weights


def train(spec: ModelSpec) -> torch.nn.Module:
    """``spec`` trained by its recipe under the current (TP1/PP1) parallel state."""
    recipe = spec.recipe
    assert recipe is not None
    model = build_gpt(spec, seed=recipe.seed, parallel_output=True).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / recipe.warmup_steps))
    tokenizer, corpus = WordTokenizer(spec.vocab_size), corpus_of(spec)
    positions = torch.arange(recipe.seq_len, device=device()).unsqueeze(0).expand(recipe.batch_size, -1)
    for step in range(recipe.steps):
        batch = torch.from_numpy(training_batch(recipe, corpus, tokenizer, step)).to(device())
        weights = _loss_weights(batch[:, :-1], tokenizer, recipe.answer_weight)
        loss = (model(batch[:, :-1], positions, None, labels=batch[:, 1:]) * weights).sum() / weights.sum()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        if step % 50 == 0 or step == recipe.steps - 1:
            print(f"[harness] train {spec.name} step {step} loss {loss.item():.4f}", flush=True)
    return model.eval()
