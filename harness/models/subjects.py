"""Shipped subjects: the trained weights cases run on, as versioned files beside the code.

Training is chaotic across CPU kernel paths (three machines, three different models from one
recipe), so nothing a case judges may depend on training where it runs. The harness trains a
subject once (``harness models build NAME``), ships the weights with the repository, and every
machine loads the same bytes. ``subjects/manifest.json`` names each file with its sha256; a file
whose hash differs is refused, never retrained behind the user's back, and baselines record the
hashes they were measured on.

A subject is a zoo model with a training recipe (``tiny-gpt-trained``) or draft heads trained on
one (``tiny-gpt-trained+medusa-k2-t150``: algorithm, draft steps, training steps).
Importable without torch.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.atomic import write_json_atomic

FORMAT = 1
HEADS = re.compile(r"^(?P<base>[\w.-]+)\+(?P<algorithm>[a-z0-9_]+)-k(?P<steps>\d+)-t(?P<train>\d+)$")


class SubjectError(RuntimeError):
    """A subject is missing, unknown, or not the bytes its manifest names."""


def subjects_root() -> Path:
    """``$HARNESS_SUBJECTS``, else the package's own ``harness/subjects/`` (installed copies carry it too)."""
    default = Path(__file__).resolve().parents[1] / "subjects"
    return Path(os.environ.get("HARNESS_SUBJECTS", default))


@dataclass(frozen=True)
class HeadsName:
    base: str
    algorithm: str
    draft_steps: int
    train_steps: int

    @property
    def name(self) -> str:
        return f"{self.base}+{self.algorithm}-k{self.draft_steps}-t{self.train_steps}"

    @classmethod
    def parse(cls, name: str) -> HeadsName | None:
        found = HEADS.match(name)
        if found is None:
            return None
        return cls(found["base"], found["algorithm"], int(found["steps"]), int(found["train"]))


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class Manifest:
    root: Path

    @property
    def path(self) -> Path:
        return self.root / "manifest.json"

    def entries(self) -> dict[str, dict[str, Any]]:
        if not self.path.exists():
            return {}
        try:
            data = json.loads(self.path.read_text())
        except json.JSONDecodeError as err:
            raise SubjectError(f"{self.path}:{err.lineno}: not valid JSON ({err.msg})") from None
        if data.get("format") != FORMAT:
            raise SubjectError(f"{self.path}: manifest format {data.get('format')!r}, this harness reads {FORMAT}")
        return data["subjects"]

    def entry(self, name: str) -> dict[str, Any]:
        entries = self.entries()
        if name not in entries:
            known = ", ".join(sorted(entries)) or "none"
            raise SubjectError(
                f"no shipped subject {name!r} in {self.path} (shipped: {known}); build it with `harness models build "
                f"{name}`"
            )
        return entries[name]

    def file(self, name: str) -> Path:
        return self.root / self.entry(name)["file"]

    def expected_hash(self, name: str) -> str:
        return str(self.entry(name)["sha256"])

    def verified_file(self, name: str) -> Path:
        """The subject's file, after checking its bytes against the manifest (never a retrain)."""
        path, expected = self.file(name), self.expected_hash(name)
        if not path.exists():
            raise SubjectError(
                f"subject {name}: {path} is missing (git lfs or a partial checkout?); `harness models verify` lists all"
            )
        actual = sha256_of(path)
        if actual != expected:
            raise SubjectError(
                f"subject {name}: {path} has sha256 {actual[:16]}..., the manifest says {expected[:16]}...; "
                f"restore the shipped file, or rebuild it with `harness models build {name}` and re-record baselines"
            )
        return path

    def problems(self) -> dict[str, str | None]:
        """Every subject's state: None when its file matches the manifest, else what is wrong."""
        out: dict[str, str | None] = {}
        for name in sorted(self.entries()):
            try:
                self.verified_file(name)
                out[name] = None
            except SubjectError as err:
                out[name] = str(err)
        return out

    def record(self, name: str, file: Path, info: dict[str, Any]) -> str:
        """Put ``file`` in place as subject ``name`` and name its hash in the manifest (both atomic)."""
        target = self.root / f"{name}.safetensors"
        digest = sha256_of(file)
        self.root.mkdir(parents=True, exist_ok=True)
        _copy_atomic(file, target)
        entries = self.entries()
        entries[name] = {**info, "file": target.name, "sha256": digest, "bytes": target.stat().st_size}
        write_json_atomic(self.path, {"format": FORMAT, "subjects": entries})
        return digest


def _copy_atomic(source: Path, target: Path) -> None:
    tmp = target.with_name(f".{target.name}.tmp{os.getpid()}")
    tmp.write_bytes(source.read_bytes())
    os.replace(tmp, target)


def manifest() -> Manifest:
    return Manifest(subjects_root())
