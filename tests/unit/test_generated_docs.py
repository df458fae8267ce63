"""The measured figures in docs/measured/ are generated from what is recorded, never typed: a page that
differs from what its generator writes now is stale (`nox -s docs` regenerates it)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import ROOT


@pytest.mark.parametrize(
    ("page", "command"),
    [("baselines.md", ["baselines", "--markdown"]), ("subjects.md", ["models", "list", "--markdown"])],
)
def test_a_generated_page_is_current(
    page: str, command: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from harness.cli import main

    monkeypatch.chdir(ROOT)
    assert main([*command, str(tmp_path / page)]) == 0
    committed = ROOT / "docs" / "measured" / page
    assert committed.read_text() == (tmp_path / page).read_text(), f"docs/measured/{page} is stale: run `nox -s docs`"
