"""Multiple-choice accuracy in the MMLU layout, scored the way Megatron's ``megatron_mmlu`` and
lm-evaluation-harness's letter variant do: one prefill of the prompt, then the log-likelihoods of
the four answer letters at its last position; the most likely letter is the model's answer.

The data layout is the standard one users already have on disk: ``<root>/<split>/<subject>_<split>.csv``
with no header and the columns ``question, A, B, C, D, answer``. Few-shot examples come from the
``dev`` split when asked for.
"""

from __future__ import annotations

import csv
import io
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from harness.data.files import read_utf8
from harness.data.multiple_choice import LETTERS, McItem, Tokenizer, format_prompt

if TYPE_CHECKING:
    import torch


class MmluError(ValueError):
    """A data set that does not follow the MMLU layout; the message names the file and line."""


@dataclass(frozen=True)
class McScores:
    """Accuracy overall (micro: every question weighs the same) and per subject, as MMLU tools report it."""

    accuracy: float
    items: int
    by_subject: dict[str, tuple[int, int]]  # subject -> (correct, questions)
    hits: tuple[bool, ...] = ()  # per question, in order: paired comparisons of two models (McNemar)

    @property
    def stderr(self) -> float:
        return math.sqrt(self.accuracy * (1 - self.accuracy) / max(1, self.items - 1))

    @property
    def macro_accuracy(self) -> float:
        """The mean of the subjects' accuracies: every subject weighs the same."""
        return sum(c / n for c, n in self.by_subject.values()) / max(1, len(self.by_subject))

    def subject_accuracy(self, subject: str) -> float:
        correct, total = self.by_subject[subject]
        return correct / total

    def flips(self, after: McScores) -> tuple[int, int]:
        """Questions this model answered right and ``after`` wrong, and the reverse (same questions, same order)."""
        if len(self.hits) != len(after.hits):
            raise ValueError(f"paired scores need the same questions ({len(self.hits)} vs {len(after.hits)})")
        lost = sum(before and not now for before, now in zip(self.hits, after.hits, strict=True))
        gained = sum(now and not before for before, now in zip(self.hits, after.hits, strict=True))
        return lost, gained


def _subject_files(root: Path, split: str) -> list[Path]:
    folder = root / split
    if not folder.is_dir():
        raise MmluError(f"{folder}: no such directory (expected the MMLU layout <root>/{split}/<subject>_{split}.csv)")
    files = sorted(folder.glob(f"*_{split}.csv"))
    if not files:
        raise MmluError(f"{folder}: no *_{split}.csv files")
    return files


def load_mmlu(
    root: str | os.PathLike[str], split: str = "test", subjects: Sequence[str] = (), limit: int = 0
) -> list[McItem]:
    """Items of ``split``, subject by subject (sorted); ``limit`` > 0 keeps the first ``limit`` of each."""
    files = _subject_files(Path(root), split)
    by_subject = {path.name.removesuffix(f"_{split}.csv"): path for path in files}
    missing = sorted(set(subjects) - set(by_subject))
    if missing:
        raise MmluError(f"{Path(root) / split}: no file for subject(s) {', '.join(missing)}")
    items: list[McItem] = []
    for subject in subjects or sorted(by_subject):
        rows = _read_rows(by_subject[subject], subject)
        items.extend(rows[:limit] if limit > 0 else rows)
    return items


def _read_rows(path: Path, subject: str) -> list[McItem]:
    rows = []
    reader = csv.reader(io.StringIO(read_utf8(path, MmluError), newline=""))
    line = 1  # the file line a record starts on (a quoted field may hold newlines)
    for row in reader:
        if not row:  # a blank line
            line = reader.line_num + 1
            continue
        if len(row) != 6:
            raise MmluError(f"{path}:{line}: expected 6 columns (question, A, B, C, D, answer), found {len(row)}")
        answer = row[5].strip()
        if answer not in LETTERS:
            raise MmluError(f"{path}:{line}: answer {answer!r} is not one of {', '.join(LETTERS)}")
        rows.append(McItem(subject, row[0], (row[1], row[2], row[3], row[4]), answer))
        line = reader.line_num + 1
    if not rows:
        raise MmluError(f"{path}:1: no questions (an empty subject file would silently shrink the set)")
    return rows


def load_with_shots(
    root: str | os.PathLike[str], split: str, shots: int, limit: int = 0
) -> tuple[list[McItem], dict[str, list[McItem]]]:
    """Questions of ``split`` and, with ``shots`` > 0, that many answered examples per subject from the
    ``dev`` split. A subject whose dev split holds fewer is an error: silently using fewer shots
    would score another setup than the case id names."""
    items = load_mmlu(root, split, limit=limit)
    if not shots:
        return items, {}
    subjects = sorted({item.subject for item in items})
    dev = _subject_files(Path(root), "dev")
    by_subject = {path.name.removesuffix("_dev.csv"): path for path in dev}
    examples: dict[str, list[McItem]] = {}
    problems = []
    for subject in subjects:
        if subject not in by_subject:
            problems.append(f"{Path(root) / 'dev'}: no {subject}_dev.csv for the {shots}-shot prompts of {subject}")
            continue
        examples[subject] = _read_rows(by_subject[subject], subject)[:shots]
        if len(examples[subject]) < shots:
            problems.append(
                f"{by_subject[subject]}:1: {len(examples[subject])} dev question(s), mmlu_shots asks {shots}"
            )
    if problems:
        raise MmluError("\n".join(problems))
    return items, examples


def write_mmlu(root: str | os.PathLike[str], split: str, items: Sequence[McItem]) -> None:
    """Write ``items`` in the MMLU layout (one file per subject)."""
    folder = Path(root) / split
    folder.mkdir(parents=True, exist_ok=True)
    for subject in sorted({item.subject for item in items}):
        with (folder / f"{subject}_{split}.csv").open("w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            for item in items:
                if item.subject == subject:
                    writer.writerow([item.question, *item.choices, item.answer])


def letter_ids(tokenizer: Tokenizer) -> list[int]:
    """The token id of each answer letter as it follows ``Answer:`` (" A" in BPE vocabularies)."""
    return [tokenizer.encode(f"Answer: {letter}")[-1] for letter in LETTERS]


def score_mc(
    model: torch.nn.Module,
    tokenizer: Tokenizer,
    items: Sequence[McItem],
    vocab_size: int,
    *,
    shots: dict[str, list[McItem]] | None = None,
    batch_size: int = 16,
    max_len: int = 4096,
) -> McScores:
    """Letter accuracy over ``items``; prompts longer than ``max_len`` tokens keep their end.

    Prompts are right-padded into batches: under causal attention the padding after a prompt cannot
    change the logits at its last token, so batching does not change any answer.
    """
    import torch

    from harness.runtime.forward import device, forward_logits

    letters = torch.tensor(letter_ids(tokenizer), device=device())
    answers = torch.tensor([LETTERS.index(item.answer) for item in items], device=device())
    prompts = [tokenizer.encode(format_prompt(item, (shots or {}).get(item.subject, ())))[-max_len:] for item in items]
    picked: list[torch.Tensor] = []
    with torch.no_grad():
        for start in range(0, len(prompts), batch_size):
            chunk = prompts[start : start + batch_size]
            width = max(map(len, chunk))
            tokens = torch.zeros(len(chunk), width, dtype=torch.long, device=device())
            for row, ids in enumerate(chunk):
                tokens[row, : len(ids)] = torch.tensor(ids, device=device())
            logits = forward_logits(model, tokens, vocab_size)
            last = torch.tensor([len(ids) - 1 for ids in chunk], device=device())
            at_answer = logits[torch.arange(len(chunk), device=device()), last]
            picked.append(at_answer[:, letters].argmax(dim=-1))
    hits = (torch.cat(picked) == answers).tolist() if items else []
    by_subject: dict[str, tuple[int, int]] = {}
    for item, hit in zip(items, hits, strict=True):
        correct, total = by_subject.get(item.subject, (0, 0))
        by_subject[item.subject] = (correct + int(hit), total + 1)
    return McScores(
        accuracy=sum(hits) / max(1, len(items)), items=len(items), by_subject=by_subject, hits=tuple(map(bool, hits))
    )
