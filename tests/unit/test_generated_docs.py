"""The measured figures in docs/measured/ are generated from what is recorded, never typed: a page that
differs from what its generator writes now is stale (`nox -s docs` regenerates it)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import ROOT


def test_the_recorded_baselines_page_is_current(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from harness.cli import main

    monkeypatch.chdir(ROOT)
    assert main(["baselines", "--markdown", str(tmp_path / "baselines.md")]) == 0
    committed = ROOT / "docs" / "measured" / "baselines.md"
    assert committed.read_text() == (tmp_path / "baselines.md").read_text(), "docs/measured/baselines.md is stale: run `nox -s docs`"
