"""Speculative-decoding prompts: MT-Bench's ``question.jsonl`` (one object per line: ``question_id``,
``category``, ``turns``), one prompt per category as Megatron's post-training evaluation takes
them; or, by default, prompts drawn from the harness corpus."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from harness.data.corpus import MarkovCorpus
from harness.data.text import CORPUS, TextSourceError, jsonl_objects, token_rows
from harness.evals.mmlu import Tokenizer
from harness.models.sources import expand_path

PROMPT_STREAM = 4242  # corpus stream of the speculative-decoding prompts (training uses stream 0)


@dataclass(frozen=True)
class Question:
    question_id: int
    category: str
    turns: list[str]


def read_questions(path: Path) -> list[Question]:
    questions = []
    for line_no, record in jsonl_objects(path):
        turns = record.get("turns")
        if not (isinstance(turns, list) and turns and all(isinstance(t, str) for t in turns)) or not isinstance(record.get("category"), str):
            raise TextSourceError(f"{path}:{line_no}: expected an object with a string \"category\" and a non-empty list of string \"turns\"")
        questions.append(Question(int(record.get("question_id", line_no)), record["category"], turns))
    if not questions:
        raise TextSourceError(f"{path}: no questions")
    return questions


def one_per_category(questions: list[Question]) -> list[Question]:
    """The first question of each category, in file order."""
    seen: dict[str, Question] = {}
    for question in questions:
        seen.setdefault(question.category, question)
    return list(seen.values())


def prompts(source: str, tokenizer: Tokenizer, corpus: MarkovCorpus, count: int, length: int) -> list[list[int]]:
    """``count`` prompts of token ids: corpus text ``length`` words long, or the first turn of one
    question per category of a question.jsonl (at most ``count``)."""
    if source == CORPUS:
        return [row.tolist() for row in token_rows(CORPUS, tokenizer, corpus, count, length, PROMPT_STREAM)]
    chosen = one_per_category(read_questions(Path(expand_path(source))))[:count]
    return [list(tokenizer.encode(question.turns[0])) for question in chosen]
