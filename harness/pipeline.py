"""The run, as a tuple of named steps (``RUN``), each a plain function handed the previous one's result
and the ``Request``; a step returns what it found for the next, or an exit code that ends the run there:

    read_suites -> expand_cases -> select_cases -> schedule_cases -> list_cases -> check_before_start
                -> open_launcher -> run_cases -> tell

``harness list`` / ``harness run`` (harness.commands.run) execute them; the pytest plugin, the noise study
and the sensitivity run drive the same pieces (``collect``, ``preflight``, ``run_case``) case by case.
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from harness.atomic import unwritable, write_json_atomic
from harness.baselines import BaselineError, BaselineStore, case_subjects, compare
from harness.exit_codes import EXIT_FAILED, EXIT_NO_GPU, EXIT_USAGE
from harness.launchers.batch import LauncherError
from harness.launchers.local import LocalLauncher
from harness.launchers.registry import Launcher, make_launcher
from harness.launchers.settings import LaunchSettings
from harness.models.subjects import SubjectError, manifest
from harness.noise import Variation
from harness.outputs import ResultStores, say
from harness.progress import case_progress
from harness.provenance import provenance
from harness.records import Case, CaseOutcome, CaseResult, Verdict
from harness.report import summary
from harness.reports.benchmarks import BENCHMARKS, benchmark_document, save_to_storage
from harness.reports.history import foreign
from harness.reports.junit import write_junit
from harness.schedule import Scheduled, schedule
from harness.selection import ExpressionError, select
from harness.suites.expand import Resources, expand
from harness.suites.load import Suite, load_suites
from harness.suites.yaml_lines import SuiteError

HISTORY_FILE = "history.sqlite"


@dataclass(frozen=True)
class RunOptions:
    baselines: Path
    artifacts: Path
    update_baselines: bool = False
    environments: dict[str, str] = field(
        default_factory=dict
    )  # platform -> baseline environment (Resources.environments)


def collect(
    paths: list[str | Path], resources: Resources, keyword: str | None = None, markexpr: str | None = None
) -> list[Case]:
    return select(expand(load_suites(paths), resources), keyword, markexpr)


def launch(item: Scheduled, launcher: Launcher, artifacts: Path) -> CaseOutcome:
    """A case that fails where its files live (a full disk, a read-only folder) is an error that says
    so: its own log may be on that disk, so the tail of the log alone would not."""
    if item.skip is not None:
        return CaseOutcome(item.case, {}, None, 0.0, "", skipped=item.skip)
    try:
        outcome = launcher.launch(item.case)
    except OSError as err:
        outcome = CaseOutcome(
            item.case, {}, f"the launcher could not write {err.filename or artifacts}: {err.strerror or err}", 0.0, ""
        )
    if outcome.error is not None and (storage := unwritable(artifacts)) is not None:
        outcome = replace(outcome, error=f"artifacts folder unusable: {storage}\n{outcome.error}")
    return outcome


def with_reference(item: Scheduled, store: BaselineStore, update: bool) -> Scheduled:
    """The case with what its check kept beside the baseline (none while re-recording: the run is its own
    reference then). A baseline file that cannot be read is left to the compare step to report."""
    if item.skip is not None or update:
        return item
    try:
        reference = store.reference(item.case.platform, item.case.suite, item.case.id)
    except BaselineError:
        return item
    return replace(item, case=replace(item.case, reference=reference)) if reference else item


def run_case(item: Scheduled, launcher: Launcher, options: RunOptions, provenance: dict[str, Any]) -> CaseResult:
    """reference -> launch -> compare for one case."""
    store = BaselineStore(options.baselines, options.environments)
    outcome = launch(with_reference(item, store, options.update_baselines), launcher, options.artifacts)
    return compare(outcome, store, options.update_baselines, provenance)


def preflight(plan: list[Scheduled], store: BaselineStore, update: bool = False) -> list[str]:
    """Problems to say before any worker starts: shipped subjects the runnable cases need that are
    missing or not the manifest's bytes, baseline files they need that cannot be read, a baseline folder
    a re-record cannot write, and environments with no baselines yet (said once each)."""
    problems, notes = [], []
    for item in plan:
        if item.skip is not None:
            continue
        try:
            for name in case_subjects(item.case):
                manifest().verified_file(name)
        except SubjectError as err:
            problems.append(f"{item.case.id}: {err}")
    files = sorted({(item.case.platform, item.case.suite) for item in plan if item.skip is None})
    problems.extend(problem for platform, suite in files if (problem := store.problem(platform, suite)) is not None)
    for platform in sorted({item.case.platform for item in plan if item.skip is None}):
        if update and (why := unwritable(store.path(platform, "probe").parent)) is not None:
            problems.append(f"--update-baselines cannot write there: {why}")
        if store.has_environment(platform):
            continue
        if update:
            notes.append(
                f"note: recording the first baselines of environment {store.environment(platform)} under {store.root}/"
            )
        else:
            notes.append(
                f"note: no baselines for environment {store.environment(platform)} under {store.root}/ yet: budgets "
                "(invariants) are judged, every other metric reads no-baseline without failing the run; "
                "--update-baselines records this environment's set"
            )
    return list(dict.fromkeys(problems)) + notes


def run_plan(
    plan: list[Scheduled], launcher: Launcher, options: RunOptions, provenance: dict[str, Any]
) -> Iterator[CaseResult]:
    for item in plan:
        yield run_case(item, launcher, options, provenance)


@dataclass(frozen=True)
class Request:
    """What ``harness list`` / ``harness run`` was asked (harness.commands.run builds it from the command line)."""

    command: Literal["list", "run"]
    paths: tuple[Path, ...]
    resources: Resources
    launch: LaunchSettings
    keyword: str | None = None
    markexpr: str | None = None
    platform: str | None = None
    baselines: Path = Path("baselines")
    update_baselines: bool = False
    history: Path | None = None
    junit: Path | None = None
    benchmark_storage: Path | None = None
    allow_no_gpu: bool = False
    variation: Variation | None = None

    @property
    def artifacts(self) -> Path:
        return Path(self.launch.artifacts)

    @property
    def options(self) -> RunOptions:
        return RunOptions(self.baselines, self.artifacts, self.update_baselines, self.resources.environments)


@dataclass(frozen=True)
class Launched:
    plan: list[Scheduled]
    launcher: Launcher


@dataclass(frozen=True)
class Finished:
    results: list[CaseResult]
    interrupted: bool
    lost: str | None  # what no store could keep, if anything


Step = Callable[[Any, Request], Any]  # the previous step's result and the request -> the next's input, or an exit code


def _refuse(message: str, code: int = EXIT_USAGE) -> int:
    print(f"harness: {message}", file=sys.stderr)
    return code


def read_suites(_: None, request: Request) -> list[Suite] | int:
    try:
        return load_suites(list(request.paths))
    except SuiteError as err:
        return _refuse(str(err))


def expand_cases(suites: list[Suite], request: Request) -> list[Case] | int:
    try:
        return expand(suites, request.resources)
    except SuiteError as err:
        return _refuse(str(err))


def select_cases(cases: list[Case], request: Request) -> list[Case] | int:
    markexpr = " and ".join(f"({e})" for e in (request.markexpr, request.platform) if e) or None
    try:
        chosen = select(cases, request.keyword, markexpr)
    except ExpressionError as err:
        return _refuse(str(err))
    if chosen:
        return chosen
    asked = " ".join(
        f"{flag} {value!r}"
        for flag, value in (("-k", request.keyword), ("-m", request.markexpr), ("--platform", request.platform))
        if value
    )
    return _refuse(
        f"{asked or 'the suites'} select(s) no case of {', '.join(map(str, request.paths)) or 'no suite file'}; "
        "`harness list` prints every case id"
    )


def schedule_cases(cases: list[Case], request: Request) -> list[Scheduled]:
    return schedule(cases, request.resources)


def list_cases(plan: list[Scheduled], request: Request) -> list[Scheduled] | int:
    """``harness list`` ends here, having printed every case."""
    if request.command != "list":
        return plan
    for item in plan:
        skip = f"  [skip: {item.skip}]" if item.skip else ""
        known = "  [known defect: expected to fail]" if item.case.known_defect else ""
        print(f"{item.case.key}  world={item.case.world_size}  markers={','.join(item.case.markers)}{known}{skip}")
    print(f"{len(plan)} cases")
    return 0


def check_before_start(plan: list[Scheduled], request: Request) -> list[Scheduled] | int:
    """Everything that can be wrong before a worker starts: GPUs asked for and absent, shipped subjects, baseline
    files, a variation this machine cannot run; all said at once."""
    if request.platform == "gpu" and request.resources.gpus == 0:
        print(f"harness: no GPU on this machine; {len(plan)} GPU cases cannot run", file=sys.stderr)
        if not request.allow_no_gpu:
            return EXIT_NO_GPU
    said = preflight(plan, BaselineStore(request.baselines, request.resources.environments), request.update_baselines)
    history = request.history or request.artifacts / HISTORY_FILE
    if (problem := foreign(history)) is not None:
        said.append(f"--history {history}: {problem}")
    problems = [line for line in said if not line.startswith("note:")]
    for line in said:
        print(f"harness: {line}", file=sys.stderr)
    if problems:
        return _refuse(f"{len(problems)} problem(s) before start; nothing was run")
    variation = request.variation
    if variation is not None and (request.launch.launcher != "local" or variation.unavailable()):
        return _refuse(
            f"--variation {variation.name}: " + (variation.unavailable() or "runs with the local launcher only")
        )
    return plan


def open_launcher(plan: list[Scheduled], request: Request) -> Launched | int:
    variation = request.variation
    try:
        launcher = (
            LocalLauncher(request.artifacts, variation.environment)
            if variation is not None
            else make_launcher(request.launch, [item.case for item in plan if item.skip is None])
        )
    except LauncherError as err:
        return _refuse(str(err))
    storage = unwritable(request.artifacts)
    if storage is not None:
        launcher.close()
        return _refuse(f"--artifacts {storage}: cases could not write their files; nothing was run")
    return Launched(plan, launcher)


def _also_write(stores: ResultStores, what: str, where: Path, write: Callable[[], object]) -> None:
    """An extra output of the run; one that cannot be written is said and fails the run, like a store."""
    try:
        write()
    except OSError as err:
        say([f"cannot write the {what} {where}: {err.strerror}"])
        stores.failures[what] = f"{what} {where}: {err.strerror}"


class Terminated(KeyboardInterrupt):
    """SIGTERM, what Slurm, CI runners and ``timeout`` send: handled as Ctrl-C is (workers, containers and
    Slurm jobs ended, finished cases kept, the stores closed)."""


def _terminated(signum: int, frame: object) -> None:
    raise Terminated


def run_cases(launched: Launched, request: Request) -> Finished:
    """launch -> compare every case, each kept as it finishes (history first, then results.json), until the plan is
    done or the driver is interrupted; then the run's other outputs."""
    plan, launcher, options = launched.plan, launched.launcher, request.options
    info = provenance(Path.cwd(), request.resources.gpu_name) | (
        {"variation": request.variation.name} if request.variation else {}
    )
    stores = ResultStores(request.history or request.artifacts / HISTORY_FILE, request.artifacts / "results.json", info)
    say(stores.start())
    results = stores.results
    interrupted = False
    # A run started in the background (nohup, cron, `cmd &` in a script) inherits an ignored SIGINT;
    # `kill -INT` is how a person or a scheduler stops a run cleanly (below), so it is always armed.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _terminated)
    try:
        with case_progress(len(plan)) as advance:
            for result in run_plan(plan, launcher, options, info):
                print(result.message(), flush=True)
                say(stores.keep(result))
                advance(result)
    except KeyboardInterrupt as stop:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second one must not cut the clean-up short
        interrupted = True
        how = "terminated (SIGTERM)" if isinstance(stop, Terminated) else "interrupted"
        print(f"harness: {how} after {len(results)} of {len(plan)} cases", file=sys.stderr)
    finally:
        launcher.close()
        say(stores.finish(interrupted))
        if request.junit is not None:
            junit = request.junit
            _also_write(stores, "JUnit XML", junit, lambda: write_junit(junit, results))
        if any(r.outcome.timings for r in results):
            document = benchmark_document(results, info)
            _also_write(
                stores,
                "benchmark file",
                request.artifacts / BENCHMARKS,
                lambda: write_json_atomic(request.artifacts / BENCHMARKS, document),
            )
            if request.benchmark_storage is not None:
                storage = request.benchmark_storage
                _also_write(stores, "benchmark storage", storage, lambda: save_to_storage(storage, document))
    return Finished(results, interrupted, stores.summary())


def tell(finished: Finished, request: Request) -> int:
    print(summary(finished.results))
    if finished.interrupted:
        return EXIT_FAILED
    if request.update_baselines:
        print(
            f"baselines written under {request.baselines}/ "
            f"({sum(r.verdict is Verdict.UPDATED for r in finished.results)} cases changed beyond their tolerance, "
            "new or with a metric added or gone; informational values and in-tolerance moves are rewritten silently)"
        )
    if finished.lost is not None:
        print(f"harness: {finished.lost}", file=sys.stderr)
    return 0 if all(r.ok for r in finished.results) and finished.lost is None else EXIT_FAILED


RUN: tuple[Step, ...] = (
    read_suites,
    expand_cases,
    select_cases,
    schedule_cases,
    list_cases,
    check_before_start,
    open_launcher,
    run_cases,
    tell,
)


def execute(steps: Sequence[Step], request: Request) -> int:
    """Hand each step the previous one's result until one returns an exit code."""
    value: Any = None
    for step in steps:
        value = step(value, request)
        if type(value) is int:
            return value
    raise RuntimeError(f"the last step, {steps[-1].__name__}, returned no exit code")
