"""Output faults with real worker pools and real file systems: a full disk under --artifacts (a 2 MiB
tmpfs) and read-only folders (a read-only tmpfs). Every finished case stays in whichever store still
works (the history is written first), each failure is named as the OS names it, and the run ends
with exit 1 or, when nothing could be written at all, refuses to start with exit 2."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.cli import EXIT_FAILED, EXIT_USAGE, main
from harness.reports.history import History

pytestmark = pytest.mark.e2e

FILL_SUITE = (
    "suite: fills\ncheck: tests.support.fault_checks:FILLS\ntimeout_s: 120\n"
    "matrix:\n  model: [tiny-gpt]\n  kib: [256, 4096, 128]\n"
)


def _mount(folder: Path, options: str) -> Iterator[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)], capture_output=True, text=True, check=False
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root in a namespace that allows it): {mounted.stderr.strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    yield from _mount(tmp_path / "small", "size=2m")


@pytest.fixture
def read_only(tmp_path: Path) -> Iterator[Path]:
    yield from _mount(tmp_path / "ro", "ro,size=1m")


def history_verdicts(path: Path) -> dict[str, str]:
    history = History(path)
    try:
        return {key: runs[-1].verdict for key, runs in history.case_runs("fills/").items()}
    finally:
        history.close()


def test_a_full_disk_loses_no_finished_case_and_says_no_space(
    write_suite,
    small_disk: Path,
    tmp_path: Path,
    capsys,
) -> None:
    history = tmp_path / "history.sqlite"
    code = main(
        [
            "run",
            str(write_suite(FILL_SUITE)),
            "--baselines",
            str(tmp_path / "baselines"),
            "--artifacts",
            str(small_disk),
            "--history",
            str(history),
        ]
    )
    captured = capsys.readouterr()
    print(captured.out, captured.err)
    assert code == EXIT_FAILED
    # the history (another disk) holds all three cases; the first passed (no baselines here: budgets only)
    verdicts = history_verdicts(history)
    assert len(verdicts) == 3
    assert verdicts["fills/tiny-gpt/tp1pp1/none/kib=256[cpu]"] == "no-baseline"
    assert verdicts["fills/tiny-gpt/tp1pp1/none/kib=4096[cpu]"] == "error"
    # the case that filled the disk says so, although its own log was on that disk
    assert "No space left on device" in captured.out
    # results.json could not follow: said as what it is, once, and the run ends with exit 1, no traceback
    assert "cannot write the results file" in captured.err and "No space left on device" in captured.err
    assert "finished case(s) were kept in the store(s) that still worked" in captured.err
    assert "Traceback" not in captured.err


def test_a_read_only_artifacts_folder_is_refused_before_start(
    write_suite,
    read_only: Path,
    tmp_path: Path,
    capsys,
) -> None:
    code = main(
        [
            "run",
            str(write_suite(FILL_SUITE)),
            "--baselines",
            str(tmp_path / "baselines"),
            "--artifacts",
            str(read_only / "a"),
            "--history",
            str(tmp_path / "history.sqlite"),
        ]
    )
    err = capsys.readouterr().err
    assert code == EXIT_USAGE
    assert f"--artifacts {read_only / 'a'}: Read-only file system" in err and "nothing was run" in err
    assert not (tmp_path / "history.sqlite").exists()


def test_a_read_only_history_keeps_every_case_in_results(write_suite, read_only: Path, tmp_path: Path, capsys) -> None:
    suite = write_suite(FILL_SUITE.replace("[256, 4096, 128]", "[16, 32]"))
    artifacts = tmp_path / "artifacts"
    code = main(
        [
            "run",
            str(suite),
            "--baselines",
            str(tmp_path / "baselines"),
            "--artifacts",
            str(artifacts),
            "--history",
            str(read_only / "history.sqlite"),
        ]
    )
    err = capsys.readouterr().err
    assert code == EXIT_FAILED
    assert f"cannot write the run history {read_only / 'history.sqlite'}" in err and "Read-only file system" in err
    cases = json.loads((artifacts / "results.json").read_text())["cases"]
    assert [c["verdict"] for c in cases] == ["no-baseline", "no-baseline"]
