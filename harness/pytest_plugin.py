"""pytest integration: every case of every ``suites/*.yaml`` is a pytest item.

Markers come from the suite (check kind, model, optimization, ``tp2``/``pp2``, ``cpu``/``gpu``,
``slow`` and the suite's own), so ``pytest -m "ckpt and tp2"`` and ``-k`` select cases. Items are
ordered by (platform, world size) so warm worker pools are reused across the session.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from harness.baselines import BaselineStore
from harness.launchers.local import LocalLauncher
from harness.outputs import ResultStores, say
from harness.pipeline import RunOptions, preflight, run_case
from harness.provenance import provenance
from harness.records import Case, CaseResult, Verdict
from harness.report import summary
from harness.reports.benchmarks import timed_paths
from harness.schedule import Scheduled, skip_reason
from harness.suites.expand import Resources, expand_suite
from harness.suites.load import read_suite
from harness.suites.yaml_lines import SuiteError

_SESSION = pytest.StashKey["HarnessSession"]()


class HarnessSession:
    """Per pytest session: resources, one launcher (warm pools), results so far, and the run in the
    history that its cases are appended to (opened at the first case, so sessions without cases
    leave no empty runs)."""

    def __init__(self, config: pytest.Config) -> None:
        root = Path(config.rootpath)
        self.resources = Resources.detect()
        self.options = RunOptions(
            baselines=config.getoption("harness_baselines") or root / "baselines",
            artifacts=config.getoption("harness_artifacts") or root / "artifacts",
            update_baselines=bool(config.getoption("harness_update_baselines")),
            environments=self.resources.environments,
        )
        self.provenance = provenance(root, self.resources.gpu_name)
        history = config.getoption("harness_history") or self.options.artifacts / "history.sqlite"
        self.stores = ResultStores(
            history, self.options.artifacts / "results.json", self.provenance
        )  # opened at the first case
        self._launcher: LocalLauncher | None = None
        self.interrupted = False

    @property
    def launcher(self) -> LocalLauncher:
        if self._launcher is None:
            self._launcher = LocalLauncher(self.options.artifacts)
        return self._launcher

    def record(self, result: CaseResult) -> None:
        say(self.stores.keep(result))

    def close(self) -> None:
        if self._launcher is not None:
            self._launcher.close()
        say(self.stores.finish(self.interrupted))

    @property
    def results(self) -> list[CaseResult]:
        return self.stores.results


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("posttrain-harness")
    group.addoption(
        "--harness-baselines", type=Path, default=None, help="baseline folder (default: <rootdir>/baselines)"
    )
    group.addoption(
        "--harness-artifacts", type=Path, default=None, help="artifact folder (default: <rootdir>/artifacts)"
    )
    group.addoption("--harness-update-baselines", action="store_true", help="record measured values as baselines")
    group.addoption(
        "--harness-history",
        type=Path,
        default=None,
        help="run history to append to (default: <artifacts>/history.sqlite)",
    )


def _session(config: pytest.Config) -> HarnessSession:
    if _SESSION not in config.stash:
        config.stash[_SESSION] = HarnessSession(config)
        config.add_cleanup(config.stash[_SESSION].close)
    return config.stash[_SESSION]


def pytest_collect_file(file_path: Path, parent: pytest.Collector) -> pytest.Collector | None:
    if file_path.suffix == ".yaml" and file_path.parent.name == "suites":
        return SuiteFile.from_parent(parent, path=file_path)
    return None


class SuiteCollectError(Exception):
    """A malformed suite, shown as its one-line problems without a traceback."""


class SuiteFile(pytest.File):
    def collect(self) -> Iterator[CaseItem]:
        session = _session(self.config)
        try:
            cases = expand_suite(read_suite(self.path), session.resources)
        except SuiteError as err:
            raise SuiteCollectError(str(err)) from None
        for case in cases:
            for marker in case.markers:
                self.config.addinivalue_line("markers", f"{marker}: harness case marker")
            item = CaseItem.from_parent(self, name=case.key, case=case)
            for marker in case.markers:
                item.add_marker(marker)
            yield item

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException], style: Any = None) -> str:
        if isinstance(excinfo.value, SuiteCollectError):
            return str(excinfo.value)
        return str(super().repr_failure(excinfo))


class CaseFailed(Exception):
    pass


class CaseItem(pytest.Item):
    def __init__(self, *, case: Case, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.case = case

    def runtest(self) -> None:
        session = _session(self.config)
        skip = skip_reason(self.case, session.resources)
        if skip is not None:
            pytest.skip(skip)
        item = Scheduled(self.case, None)
        problems = [
            line
            for line in preflight([item], BaselineStore(session.options.baselines, session.options.environments))
            if not line.startswith("note:")
        ]
        if problems:
            raise CaseFailed("\n".join(problems))
        result = run_case(item, session.launcher, session.options, session.provenance)
        session.record(result)
        _add_to_benchmark_table(self.config, result)
        if not result.ok:
            raise CaseFailed(result.message())
        if result.verdict is Verdict.XFAIL:
            pytest.xfail(f"known defect: {self.case.known_defect.describe()}")

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException], style: Any = None) -> str:
        if isinstance(excinfo.value, CaseFailed):
            return str(excinfo.value)
        return str(super().repr_failure(excinfo))

    def reportinfo(self) -> tuple[Path, int | None, str]:
        return self.path, None, f"{self.case.id} [{self.case.platform}] (from {self.case.source})"


def _add_to_benchmark_table(config: pytest.Config, result: CaseResult) -> None:
    """With pytest-benchmark active, a timed case's paths join its table and its --benchmark-json /
    --benchmark-autosave files like any benchmark-fixture test."""
    bench_session = getattr(config, "_benchmarksession", None)
    if bench_session is not None and not bench_session.disabled:
        bench_session.benchmarks.extend(timed_paths(result))


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """An interrupted session's run stays unfinished in the history (its finished cases stay recorded)."""
    if _SESSION in session.config.stash and exitstatus == pytest.ExitCode.INTERRUPTED:
        session.config.stash[_SESSION].interrupted = True


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    def order(indexed: tuple[int, pytest.Item]) -> tuple[int, str, int, int]:
        index, item = indexed
        if isinstance(item, CaseItem):
            return (1, item.case.platform, item.case.world_size, index)
        return (0, "", 0, index)

    items[:] = [item for _, item in sorted(enumerate(items), key=order)]


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    """Every case's numbers (measured, baseline, tolerance), after the run, like a benchmark table."""
    if _SESSION not in config.stash or not config.stash[_SESSION].results:
        return
    results = config.stash[_SESSION].results
    terminalreporter.section("posttrain-harness cases")
    for result in results:
        terminalreporter.write_line(result.message())
    terminalreporter.write_line(summary(results))
    lost = config.stash[_SESSION].stores.summary()
    if lost is not None:
        terminalreporter.write_line(f"harness: {lost}", red=True)
