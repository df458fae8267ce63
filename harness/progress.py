"""A progress bar for long runs on a terminal: cases done, failures so far, elapsed and ETA. Off when
stderr is not a terminal (CI logs keep the plain per-case lines)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from harness.records import CaseResult


@contextmanager
def case_progress(total: int) -> Iterator[Callable[[CaseResult], None]]:
    console = Console(stderr=True)
    columns = (
        TextColumn("cases"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[failures]} failing"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console, disable=not console.is_terminal) as progress:
        task = progress.add_task("cases", total=total, failures=0)
        failures = 0

        def advance(result: CaseResult) -> None:
            nonlocal failures
            failures += not result.ok
            progress.update(task, advance=1, failures=failures)

        yield advance
