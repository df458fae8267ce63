"""Whether a pip constraint file leaves the harness installable. NGC PyTorch images set
``PIP_CONSTRAINT`` to a file pinning what the image ships (torch, numpy, transformers, ...); a pin
outside the harness's range makes ``pip install -e .`` fail deep in the resolver, minutes into a
borrowed GPU session. The GPU sessions check it first and name the package. Importable with only
``packaging`` (the noxfile runs it before any session environment exists)."""

from __future__ import annotations

import os
import tomllib
from pathlib import Path

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name


def _pins(text: str) -> dict[str, Requirement]:
    pins: dict[str, Requirement] = {}
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line or line.startswith("-"):
            continue
        try:
            requirement = Requirement(line)
        except InvalidRequirement:
            continue
        pins[canonicalize_name(requirement.name)] = requirement
    return pins


def conflicts(requirements: list[str], constraints: str) -> list[str]:
    """Requirements whose range excludes the exact version the constraints pin, one line each."""
    pins, found = _pins(constraints), []
    for text in requirements:
        wanted = Requirement(text)
        pin = pins.get(canonicalize_name(wanted.name))
        exact = [spec.version for spec in pin.specifier if spec.operator in ("==", "===")] if pin else []
        if exact and not wanted.specifier.contains(exact[0], prereleases=True):
            found.append(f"{wanted.name}: the constraint file pins {pin}, the harness needs {wanted}")
    return found


def project_requirements(pyproject: Path) -> list[str]:
    return list(tomllib.loads(pyproject.read_text())["project"]["dependencies"])


def constraint_conflicts(pyproject: Path, environ: dict[str, str] | None = None) -> list[str]:
    """Conflicts between the project's requirements and every file in ``PIP_CONSTRAINT``."""
    environ = dict(os.environ) if environ is None else environ
    requirements = project_requirements(pyproject)
    found = []
    for name in environ.get("PIP_CONSTRAINT", "").split():
        path = Path(name.removeprefix("file://"))
        if path.is_file():
            found.extend(f"{path}: {line}" for line in conflicts(requirements, path.read_text()))
    return found
