"""A deterministic synthetic language whose best achievable accuracy is known.

Each token has a fixed set of successors with fixed probabilities (a sparse first-order Markov
chain drawn from a seed). No download, identical on every machine, and the ceiling is exact: the
best next-token accuracy any model can reach is the largest successor probability, and the best
cross-entropy is the chain's entropy rate. A tiny GPT learns most of it in a minute on 2 CPU cores,
so quantization damage shows as a measurable loss of accuracy rather than noise around chance.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from harness.data.multiple_choice import LETTERS, McItem
from harness.data.tokenizer import corpus_word

SUCCESSOR_PROBS = (0.6, 0.25, 0.1, 0.05)
_MC_TAG = 7  # separates multiple-choice draws from plain samples of the same stream


@dataclass(frozen=True)
class MarkovCorpus:
    vocab_size: int
    seed: int = 0
    probs: tuple[float, ...] = SUCCESSOR_PROBS
    rare_words: int = 0  # the top ids never occur in text; questions use them as obvious distractors

    @property
    def text_words(self) -> int:
        return self.vocab_size - self.rare_words

    @cached_property
    def successors(self) -> np.ndarray:
        """``[vocab, len(probs)]``: the successors of each token, most likely first."""
        rng = np.random.default_rng(self.seed)
        return np.stack(
            [rng.choice(self.text_words, size=len(self.probs), replace=False) for _ in range(self.vocab_size)]
        )

    @property
    def best_accuracy(self) -> float:
        return max(self.probs)

    @property
    def entropy_nats(self) -> float:
        return -sum(p * math.log(p) for p in self.probs)

    def sample(self, batch: int, seq: int, stream_seed: int | tuple[int, ...]) -> np.ndarray:
        """``[batch, seq]`` token ids; ``stream_seed`` separates train, held-out and calibration data."""
        rng = np.random.default_rng((self.seed, stream_seed))
        out = np.empty((batch, seq), dtype=np.int64)
        out[:, 0] = rng.integers(0, self.text_words, size=batch)
        choices = rng.choice(len(self.probs), size=(batch, seq), p=np.asarray(self.probs))
        for t in range(1, seq):
            out[:, t] = self.successors[out[:, t - 1], choices[:, t]]
        return out

    def multiple_choice(
        self, count: int, stream_seed: int, context_len: int = 6, rare_distractors: int = 2
    ) -> list[McItem]:
        """Questions in the MMLU layout whose answer the chain decides: after a sampled context, which
        of four words comes next? The right one is the last word's most likely successor. Of the three
        distractors, ``rare_distractors`` are words that never occur in text (a model that learned the
        language's words rules them out: 50% with two), the rest text words that never follow the last
        word (only a model that learned the transitions rules them out)."""
        rare = min(rare_distractors, self.rare_words)
        rng = np.random.default_rng((self.seed, stream_seed, _MC_TAG))
        contexts = self.sample(count, context_len, stream_seed=(stream_seed, _MC_TAG))
        items = []
        for context in contexts:
            last = int(context[-1])
            never = np.setdiff1d(np.arange(self.text_words), self.successors[last])
            distractors = [
                *rng.choice(np.arange(self.text_words, self.vocab_size), size=rare, replace=False),
                *rng.choice(never, size=3 - rare, replace=False),
            ]
            options = [int(self.successors[last, 0]), *(int(t) for t in distractors)]
            order = rng.permutation(4)
            choices = tuple(corpus_word(options[i]) for i in order)
            items.append(McItem("markov", " ".join(map(corpus_word, context)), choices, LETTERS[int(np.argmin(order))]))  # type: ignore[arg-type]
        return items
