"""Evaluation and calibration token batches from the synthetic corpus or from a user's text file.

Text files are UTF-8 ``.txt`` (the whole file is one document) or ``.jsonl`` (one document per line,
in its ``"text"`` field), tokenized with the model's own tokenizer, concatenated and cut into rows.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from harness.data.corpus import MarkovCorpus
from harness.data.files import expand_path, read_utf8, stamp
from harness.data.multiple_choice import Tokenizer
from harness.data.tokenizer import corpus_word

CORPUS = "corpus"


class TextSourceError(ValueError):
    """A text file that is missing, malformed or too short; the message names it."""


def jsonl_objects(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) for each non-blank line of a JSON-lines file; a line that is not a JSON
    object is reported as ``file:line``."""
    if not path.is_file():
        raise TextSourceError(f"{path}: no such file")
    for line_no, line in enumerate(read_utf8(path, TextSourceError).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise TextSourceError(f"{path}:{line_no}: not JSON ({err.msg})") from None
        if not isinstance(record, dict):
            raise TextSourceError(f"{path}:{line_no}: expected a JSON object")
        yield line_no, record


def read_documents(path: Path) -> list[str]:
    if not path.is_file():
        raise TextSourceError(f"{path}: no such file")
    if path.suffix != ".jsonl":
        return [read_utf8(path, TextSourceError)]
    documents = []
    for line_no, record in jsonl_objects(path):
        if not isinstance(record.get("text"), str):
            raise TextSourceError(f'{path}:{line_no}: expected an object with a string "text" field')
        documents.append(record["text"])
    return documents


def token_rows(
    source: str, tokenizer: Tokenizer, corpus: MarkovCorpus, rows: int, width: int, stream: int
) -> np.ndarray:
    """``[rows, width]`` token ids: corpus samples of ``stream`` (rendered as words, so any
    tokenizer reads them), or consecutive slices of the file ``source``."""
    if source == CORPUS:
        sampled = corpus.sample(rows, width, stream_seed=stream)
        return np.stack([tokenizer.encode(" ".join(map(corpus_word, row)))[:width] for row in sampled])
    path = Path(expand_path(source))
    ids = [token for document in read_documents(path) for token in tokenizer.encode(document)]
    if len(ids) < rows * width:
        raise TextSourceError(f"{path}: {len(ids)} tokens, the case needs {rows} rows x {width} = {rows * width}")
    return np.asarray(ids[: rows * width], dtype=np.int64).reshape(rows, width)


def text_file_problem(source: str) -> str | None:
    """What is wrong with a text source a case reads, said before any worker starts (None: the corpus, or a
    readable file; cached per version of the file)."""
    return None if source == CORPUS else _file_problem(source, stamp(expand_path(source)))


@functools.cache
def _file_problem(source: str, version: tuple[object, ...]) -> str | None:
    try:
        read_documents(Path(expand_path(source)))
    except TextSourceError as err:
        return str(err)
    return None
