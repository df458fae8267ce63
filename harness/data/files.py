"""Reading users' data files as text: UTF-8 with or without a byte-order mark (spreadsheet and
Windows tools write one), and anything else named with its file line instead of a bare
``UnicodeDecodeError``."""

from __future__ import annotations

import os
from pathlib import Path


def read_utf8(path: Path, error: type[ValueError]) -> str:
    """The file's text; ``error("<path>:<line>: ...")`` when it is not UTF-8 or cannot be read."""
    try:
        data = path.read_bytes()
    except OSError as err:
        raise error(f"{path}:1: cannot read: {err.strerror}") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise error(f"{path}:{line}: not UTF-8 (byte 0x{data[err.start]:02x}); re-save the file as UTF-8") from None


def stamp(source: str) -> tuple[tuple[str, int, int], ...]:
    """(path, mtime, size) of a data file or of every file under a data folder: a cache key that
    changes when the data does (validation results are cached per process, the cases of a suite
    share their files)."""
    root = Path(source)
    files = sorted(p for p in root.rglob("*") if p.is_file()) if root.is_dir() else [root] if root.is_file() else []
    return tuple((str(p), (st := p.stat()).st_mtime_ns, st.st_size) for p in files)


def expand_path(path: str) -> str:
    """``$VARS`` and ``~`` expanded, so suites name checkpoints relative to a machine's model store."""
    return os.path.expanduser(os.path.expandvars(path))
