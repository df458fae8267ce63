"""The mutation self-test end to end (CI's subset of `nox -s sensitivity`)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from harness.mutations import MUTATIONS
from tests.conftest import ROOT


@pytest.mark.e2e
def test_the_fast_defects_are_caught_on_any_machine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """CI's subset of `nox -s sensitivity`: each fast defect, injected into modelopt inside the workers, fails
    its cases against the repository's baselines with a metric judged by the across-machine noise bands."""
    from harness.cli import main

    monkeypatch.chdir(ROOT)
    code = main(["sensitivity", "--fast", "--artifacts", str(tmp_path)])
    report = json.loads((tmp_path / "sensitivity.json").read_text())
    fast = {m.name for m in MUTATIONS.values() if m.fast}
    assert {run["mutation"] for run in report["runs"]} == fast
    assert report["total"]["portable"] == report["total"]["defects"] == len(fast), (
        tmp_path / "sensitivity.md"
    ).read_text()
    assert code == 0
