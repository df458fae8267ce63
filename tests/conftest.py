from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from harness.environment import cpu_environment
from harness.records import WORKER_MEMORY

pytest_plugins = ["pytester"]

ROOT = Path(__file__).resolve().parent.parent
CPU_ENV = cpu_environment()  # the baseline set this machine's CPU cases read and write


def wait_for(condition: str, check: Callable[[], bool], timeout_s: float = 240, poll_s: float = 0.5) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {condition}"
        time.sleep(poll_s)


TP2_CASES = "tp2pp1/int4_awq"  # a TP=2 round trip and a TP1 -> TP2 reshard of the ckpt suite


def measured_cases(results: Path) -> dict[str, tuple[str, dict[str, float]]]:
    """Each case of a ``results.json``: its verdict and every value its arithmetic computed (memory
    figures are the process's, which differ between launchers, and are left out)."""
    cases = json.loads(results.read_text())["cases"]
    return {
        c["id"]: (c["verdict"], {m["name"]: m["measured"] for m in c["metrics"] if m["name"] not in WORKER_MEMORY})
        for c in cases
    }


@pytest.fixture(scope="session")
def local_tp2(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[str, dict[str, float]]]:
    """TP2_CASES under the local launcher: what the Slurm and container launchers must reproduce exactly."""
    from harness.cli import main

    artifacts = tmp_path_factory.mktemp("local-tp2")
    assert (
        main(
            [
                "run",
                str(ROOT / "suites" / "ckpt.yaml"),
                "--platform",
                "cpu",
                "-k",
                TP2_CASES,
                "--artifacts",
                str(artifacts),
            ]
        )
        == 0
    )
    return measured_cases(artifacts / "results.json")


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
