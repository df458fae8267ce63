from __future__ import annotations

from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def write_suite(tmp_path: Path):  # noqa: ANN201 - a factory fixture
    """Write a suite file (in a folder named like the real one) and return its path."""

    def write(text: str, name: str = "suite.yaml") -> Path:
        folder = tmp_path / "suites"
        folder.mkdir(exist_ok=True)
        path = folder / name
        path.write_text(text)
        return path

    return write
