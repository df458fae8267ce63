"""Speculative-decoding prompts: MT-Bench's ``question.jsonl`` (one object per line: ``question_id``,
``category``, ``turns``), scored the way Megatron's post-training validation and modelopt's
acceptance-rate validation score it: every question's first turn, through the tokenizer's chat
template where it has one; or, by default, prompts drawn from the harness corpus."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from harness.data.corpus import MarkovCorpus
from harness.data.files import expand_path
from harness.data.multiple_choice import Tokenizer
from harness.data.text import CORPUS, TextSourceError, jsonl_objects, token_rows

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
        if not (isinstance(turns, list) and turns and all(isinstance(t, str) for t in turns)) or not isinstance(
            record.get("category"), str
        ):
            raise TextSourceError(
                f'{path}:{line_no}: expected an object with a string "category" and a non-empty list of string "turns"'
            )
        questions.append(Question(int(record.get("question_id", line_no)), record["category"], turns))
    if not questions:
        raise TextSourceError(f"{path}: no questions")
    return questions


# A prompt whose tokens are mostly unknown to the tokenizer measures the draft heads on <unk> runs,
# not on the question: reported, never scored.
UNKNOWN_LIMIT = 0.5


def first_turn(question: Question, tokenizer: Tokenizer) -> list[int]:
    """The question's first turn as the model is asked it: a user message through the tokenizer's
    chat template (generation prompt added) when it has one, the plain text otherwise."""
    if getattr(tokenizer, "chat_template", None):
        messages = [{"role": "user", "content": question.turns[0]}]
        # rendered, then encoded without special tokens (the template writes its own BOS): what
        # tokenize=True returns differs across transformers releases (ids, or a BatchEncoding in 5.x)
        text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)  # type: ignore[attr-defined]
        return list(tokenizer.encode(text, add_special_tokens=False))  # type: ignore[call-arg]
    return list(tokenizer.encode(question.turns[0]))


def unknown_share(ids: list[int], tokenizer: Tokenizer) -> float:
    unknown = getattr(tokenizer, "unk_token_id", None)
    return 0.0 if unknown is None or not ids else sum(token == unknown for token in ids) / len(ids)


def first_of_each_category(questions: list[Question], per_category: int) -> list[Question]:
    """The first ``per_category`` questions of every category, in file order (0: all): a shorter pass over
    MT-Bench's 8 categories x 10 that still covers each."""
    if per_category == 0:
        return questions
    seen: dict[str, int] = {}
    kept = []
    for question in questions:
        seen[question.category] = seen.get(question.category, 0) + 1
        if seen[question.category] <= per_category:
            kept.append(question)
    return kept


def prompts(
    source: str, tokenizer: Tokenizer, corpus: MarkovCorpus, count: int, length: int, per_category: int = 0
) -> list[list[int]]:
    """Prompts of token ids: ``count`` corpus texts ``length`` words long, or the first turn of every
    question of a question.jsonl (of the first ``per_category`` of each category, where given)."""
    if source == CORPUS:
        return [row.tolist() for row in token_rows(CORPUS, tokenizer, corpus, count, length, PROMPT_STREAM)]
    path = Path(expand_path(source))
    questions = first_of_each_category(read_questions(path), per_category)
    encoded = [first_turn(question, tokenizer) for question in questions]
    problem = unknown_problem(path, questions, encoded, tokenizer)
    if problem is not None:
        raise TextSourceError(problem)
    return encoded


def unknown_problem(
    path: Path, questions: list[Question], encoded: list[list[int]], tokenizer: Tokenizer
) -> str | None:
    """Why these prompts would not measure the draft heads (most of their tokens unknown), if they would not:
    said before any worker starts (spec_decode's case problems), and again by ``prompts`` in the worker."""
    unknown = [(q, unknown_share(ids, tokenizer)) for q, ids in zip(questions, encoded, strict=True)]
    bad = [
        f"question {q.question_id} ({q.category}): {100 * share:.0f}% unknown tokens"
        for q, share in unknown
        if share > UNKNOWN_LIMIT
    ]
    if not bad:
        return None
    return (
        f"{path}: {len(bad)} of {len(questions)} prompts are mostly tokens the tokenizer does not know "
        f"(more than {100 * UNKNOWN_LIMIT:.0f}%), so they would not measure the draft heads: {'; '.join(bad[:5])}"
    )
