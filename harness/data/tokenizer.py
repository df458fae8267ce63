"""A word-level tokenizer for the harness's own models, so the same text-in evaluations (the
multiple-choice scorer) run on them and on real checkpoints with their Hugging Face tokenizers.

Words are split on whitespace. Ids ``[0, n_words)`` are the corpus words ``w0 .. w{n-1}``; the top of
the vocabulary holds the words of the multiple-choice prompt template and ``<unk>``.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from harness.data.multiple_choice import Tokenizer
    from harness.records import ModelSpec

# The prompt template's words (harness.evals.mmlu) and the answer letters, in id order after the corpus words.
SPECIAL_WORDS = (
    "<unk>", "The", "following", "are", "multiple", "choice", "questions", "(with", "answers)", "about",
    "markov.", "A.", "B.", "C.", "D.", "Answer:", "A", "B", "C", "D",
)  # fmt: skip
RESERVED = 32  # ids kept for SPECIAL_WORDS (and later additions without moving the corpus words)


def corpus_word(token: int) -> str:
    """How corpus token ``token`` is written as text."""
    return f"w{token}"


@dataclass(frozen=True)
class WordTokenizer:
    vocab_size: int

    @property
    def n_words(self) -> int:
        return self.vocab_size - RESERVED

    @cached_property
    def vocab(self) -> dict[str, int]:
        words = {corpus_word(i): i for i in range(self.n_words)}
        return words | {word: self.n_words + i for i, word in enumerate(SPECIAL_WORDS)}

    @property
    def unk_token_id(self) -> int:
        return self.vocab["<unk>"]

    def encode(self, text: str) -> list[int]:
        return [self.vocab.get(word, self.unk_token_id) for word in text.split()]


def tokenizer_for(spec: ModelSpec) -> Tokenizer:
    """The checkpoint's own tokenizer for Hugging Face models; the harness word tokenizer otherwise."""
    if spec.hf_path is None:
        return WordTokenizer(spec.vocab_size)
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(spec.hf_path)
