"""A multiple-choice question, how it is written as an MMLU prompt, and what reads one: plain data the corpus writes
and the MMLU scorer reads
(harness.evals.mmlu), so neither floor imports the other."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

LETTERS = ("A", "B", "C", "D")


class Tokenizer(Protocol):
    def encode(self, text: str) -> list[int]: ...


@dataclass(frozen=True)
class McItem:
    subject: str
    question: str
    choices: tuple[str, str, str, str]
    answer: str  # one of LETTERS


def _render(item: McItem, with_answer: bool) -> str:
    lines = [item.question, *(f"{letter}. {choice}" for letter, choice in zip(LETTERS, item.choices, strict=True))]
    return "\n".join([*lines, f"Answer: {item.answer}" if with_answer else "Answer:"])


def format_prompt(item: McItem, shots: Sequence[McItem] = ()) -> str:
    """The MMLU prompt: header, ``shots`` answered examples, then the question ending in ``Answer:``."""
    header = f"The following are multiple choice questions (with answers) about {item.subject.replace('_', ' ')}."
    return "\n\n".join([header, *(_render(shot, True) for shot in shots), _render(item, False)])
