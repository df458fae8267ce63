"""``harness list`` and ``harness run``: the pipeline outside pytest."""

from __future__ import annotations

import argparse
import glob
import json
import os
import signal
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from harness.atomic import unwritable, write_json_atomic, write_text_atomic
from harness.baselines import BaselineError, BaselineStore, baseline_files, read_baseline_file
from harness.checks import get_check
from harness.commands import models, noise, sensitivity
from harness.launchers.batch import LauncherError
from harness.launchers.local import LocalLauncher
from harness.launchers.registry import LAUNCHERS, make_launcher
from harness.launchers.settings import LaunchSettings
from harness.noise import VARIATIONS
from harness.outputs import ResultStores, say
from harness.pipeline import RunOptions, collect, preflight, run_plan
from harness.progress import case_progress
from harness.provenance import provenance
from harness.records import Verdict
from harness.report import summary
from harness.reports.benchmarks import BENCHMARKS, benchmark_document, save_to_storage
from harness.reports.history import History, format_case_runs, not_a_history
from harness.reports.html import html
from harness.reports.junit import write_junit
from harness.reports.measured import baselines_markdown
from harness.reports.render import markdown, sensitivity_table
from harness.reports.trends import Settings, analyse, run_label
from harness.schedule import schedule
from harness.selection import ExpressionError
from harness.suites.expand import Resources
from harness.suites.yaml_lines import SuiteError

EXIT_FAILED, EXIT_USAGE, EXIT_NO_GPU = 1, 2, 3
DEFAULT_HISTORY = Path("artifacts") / "history.sqlite"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="harness", description="Post-training regression harness for Megatron-Core + ModelOpt")
    sub = parser.add_subparsers(dest="command", required=True)
    history = sub.add_parser("history", help="print a case's metrics over the recorded runs")
    history.add_argument("case", help="a case id or any part of one: tp2pp1->tp1pp1/int4_awq")
    history.add_argument("--history", type=Path, default=DEFAULT_HISTORY, help=f"run history (default: {DEFAULT_HISTORY})")
    history.add_argument("-n", type=int, default=10, help="last N runs (default: 10)")
    report = sub.add_parser("report", help="Markdown + self-contained HTML report of the last N runs in the history")
    report.add_argument("--history", type=Path, default=DEFAULT_HISTORY, help=f"run history (default: {DEFAULT_HISTORY})")
    report.add_argument("--out", type=Path, default=Path("artifacts") / "report", help="folder for report.md and report.html")
    report.add_argument("-n", dest="runs", type=int, default=Settings.runs, help=f"last N runs (default: {Settings.runs})")
    report.add_argument("--drift-runs", type=int, default=Settings.drift_runs,
                        help=f"a drift is this many latest runs beyond tolerance (default: {Settings.drift_runs})")
    report.add_argument("--sensitivity", type=Path, metavar="FILE", help="also show a `harness sensitivity` score (its sensitivity.json)")
    report.add_argument("--drift-window", type=int, default=Settings.drift_window,
                        help=f"runs before the move that make the reference (default: {Settings.drift_window})")
    models.add_parser(sub)
    baselines = sub.add_parser("baselines", help="the baseline environments and how many of this machine's cases each covers")
    baselines.add_argument("--baselines", type=Path, default=Path("baselines"), help="baseline folder (default: baselines)")
    baselines.add_argument("suites", nargs="*", help="suite files (default: suites/*.yaml)")
    baselines.add_argument("--markdown", type=Path, metavar="FILE", help="write every recorded value (headline metrics, noise bands) "
                           "as Markdown to FILE instead (docs/measured/baselines.md: `nox -s docs`)")
    noise.add_parser(sub)
    sensitivity.add_parser(sub)
    for name, text in (("list", "list the cases the suites expand to"), ("run", "run cases against recorded baselines")):
        cmd = sub.add_parser(name, help=text)
        cmd.add_argument("suites", nargs="*", help="suite files (default: suites/*.yaml)")
        cmd.add_argument("-k", dest="keyword", help="select by case id: 'tp2 and not int8'")
        cmd.add_argument("-m", dest="markexpr", help="select by marker: 'ckpt and tp2'")
        cmd.add_argument("--platform", choices=("cpu", "gpu"), help="only cases of this platform")
    run = sub.choices["run"]
    run.add_argument("--baselines", type=Path, default=Path("baselines"), help="baseline folder (default: baselines)")
    run.add_argument("--artifacts", type=Path, default=Path("artifacts"), help="artifact folder (default: artifacts)")
    run.add_argument("--update-baselines", action="store_true", help="record measured values as the new baselines")
    run.add_argument("--allow-no-gpu", action="store_true", help="with --platform gpu on a machine without GPUs: skip, exit 0")
    run.add_argument("--history", type=Path, help="run history to append to (default: <artifacts>/history.sqlite)")
    run.add_argument("--junit", type=Path, help="also write JUnit XML here")
    run.add_argument("--variation", choices=sorted(VARIATIONS), help="local launcher: run every CPU rank under a noise-study "
                     "variation (harness.noise), e.g. a held-out check that the derived tolerances cover it; results say so")
    run.add_argument("--benchmark-storage", type=Path, metavar="DIR",
                     help="also save the timed cases as a numbered pytest-benchmark file under DIR (`pytest-benchmark compare --storage DIR`)")
    launch = run.add_argument_group("launching (see README: Containers and Slurm)")
    launch.add_argument("--launcher", choices=sorted(LAUNCHERS), default="local", help="where the ranks run (default: local)")
    launch.add_argument("--image", help="container image: a local docker/podman image, or a pyxis/enroot image under slurm")
    launch.add_argument("--engine", choices=("docker", "podman"), help="container engine (default: podman if installed, else docker)")
    launch.add_argument("--python", default="python", help="the interpreter inside the image (default: python)")
    launch.add_argument("--mount", action="append", default=[], metavar="SRC[:DST]", help="another folder for the ranks (data, checkpoints)")
    launch.add_argument("--env", action="append", default=[], metavar="NAME", help="another variable to pass to the ranks")
    launch.add_argument("--container-arg", action="append", default=[], metavar="ARG", help="extra `docker/podman run` argument")
    launch.add_argument("--nodes", type=int, default=1, help="slurm: spread each case over up to N nodes (default: 1)")
    launch.add_argument("--gpus-per-node", type=int, default=8, help="slurm: GPUs per node (default: 8)")
    launch.add_argument("--partition", help="slurm partition")
    launch.add_argument("--account", help="slurm account")
    launch.add_argument("--time", dest="time_limit", help="slurm --time per job (default: its cases' timeouts + 10 min)")
    launch.add_argument("--slurm-arg", action="append", default=[], metavar="ARG", help="extra sbatch argument: --slurm-arg=--qos=high")
    return parser


def _settings(args: argparse.Namespace) -> LaunchSettings:
    return LaunchSettings(
        launcher=args.launcher, artifacts=args.artifacts, image=args.image, engine=args.engine, python=args.python,
        nodes=args.nodes, gpus_per_node=args.gpus_per_node, partition=args.partition, account=args.account,
        time_limit=args.time_limit, slurm_args=tuple(args.slurm_arg), container_args=tuple(args.container_arg),
        extra_mounts=tuple(args.mount), env=tuple(args.env),
    )


def _resources(args: argparse.Namespace) -> Resources:
    """What the cases may use: this machine, or under Slurm up to --nodes nodes of it."""
    here = Resources.detect()
    if getattr(args, "launcher", "local") != "slurm":
        return here
    return Resources(cpu_ranks=here.cpu_ranks * args.nodes, gpus=args.gpus_per_node * args.nodes, gpu_name=here.gpu_name)


def _open_history(path: Path) -> History | None:
    problem = not_a_history(path)
    if problem is not None:
        print(f"harness: {path}: {problem}", file=sys.stderr)
        return None
    return History(path)


def _report(args: argparse.Namespace) -> int:
    store = _open_history(args.history)
    if store is None:
        return EXIT_USAGE
    try:
        window = store.window(args.runs)
    finally:
        store.close()
    if not window.runs:
        print(f"harness: {args.history} holds no runs", file=sys.stderr)
        return EXIT_USAGE
    analysis = analyse(window, Settings(args.runs, args.drift_runs, args.drift_window))
    extra = ()
    if args.sensitivity is not None:
        try:
            extra = (sensitivity_table(json.loads(args.sensitivity.read_text())),)
        except (OSError, ValueError, KeyError, TypeError) as err:
            print(f"harness: {args.sensitivity}: not a sensitivity report ({getattr(err, 'strerror', None) or err})", file=sys.stderr)
            return EXIT_USAGE
    text = markdown(analysis, extra)
    write_text_atomic(args.out / "report.md", text)
    write_text_atomic(args.out / "report.html", html(analysis, extra))
    summary_file = os.environ.get("GITHUB_STEP_SUMMARY")
    if summary_file:
        with open(summary_file, "a") as handle:
            handle.write(text)
    statuses = Counter(s.status for s in analysis.cases)
    print(f"report of {len(window.runs)} run(s), latest {run_label(analysis.latest)}: "
          + ", ".join(f"{n} {status}" for status, n in sorted(statuses.items())) + f", {len(analysis.drifts)} drift(s)")
    print(f"written: {args.out / 'report.md'} and {args.out / 'report.html'}")
    return 0


def _history(args: argparse.Namespace) -> int:
    store = _open_history(args.history)
    if store is None:
        return EXIT_USAGE
    try:
        found = store.case_runs(args.case, args.n)
    finally:
        store.close()
    if not found:
        print(f"harness: no case matching {args.case!r} in {args.history}", file=sys.stderr)
        return EXIT_USAGE
    print("\n\n".join(format_case_runs(key, runs) for key, runs in found.items()))
    return 0


def _baselines(args: argparse.Namespace) -> int:
    """Each recorded environment: which suites and how many of this machine's cases of its platform it covers."""
    try:
        cases = collect(args.suites or sorted(glob.glob("suites/*.yaml")), Resources.detect())
    except SuiteError as err:
        print(f"harness: {err}", file=sys.stderr)
        return EXIT_USAGE
    if args.markdown is not None:
        headlines = {case.suite: get_check(case.check).headline for case in cases}
        write_text_atomic(args.markdown, baselines_markdown(args.baselines, headlines))
        print(f"written: {args.markdown}")
        return 0
    here = Resources.detect().environments
    found = sorted(p for p in args.baselines.iterdir() if p.is_dir()) if args.baselines.is_dir() else []
    for folder in found:
        recorded: set[tuple[str, str]] = set()
        for file in baseline_files(folder):
            try:
                recorded |= {(file.stem, case_id) for case_id in read_baseline_file(file)["cases"]}
            except BaselineError as err:
                print(f"harness: {err}", file=sys.stderr)
        platform = "gpu" if folder.name.startswith("gpu-") else "cpu"
        mine = [c for c in cases if c.platform == platform]
        covered = sum((c.suite, c.id) in recorded for c in mine)
        tag = "  <- this machine" if here.get(platform) == folder.name else ""
        print(f"{folder.name}: {len(recorded)} cases recorded, {covered} of the {len(mine)} {platform} cases of the suites{tag}")
        suites = Counter(suite for suite, _ in recorded)
        print("  " + ", ".join(f"{suite} {n}" for suite, n in sorted(suites.items())))
    missing = sorted(set(here.values()) - {f.name for f in found} - {"gpu-none"})
    for name in missing:
        print(f"{name}: no baselines (this machine's environment; record with `harness run --update-baselines`)")
    return 0


def _also_write(stores: ResultStores, what: str, where: Path, write: Callable[[], object]) -> None:
    """An extra output of the run; one that cannot be written is said and fails the run, like a store."""
    try:
        write()
    except OSError as err:
        say([f"cannot write the {what} {where}: {err.strerror}"])
        stores.failures[what] = f"{what} {where}: {err.strerror}"


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "history":
        return _history(args)
    if args.command == "report":
        return _report(args)
    if args.command == "models":
        return models.main(args)
    if args.command == "baselines":
        return _baselines(args)
    if args.command == "noise":
        return noise.main(args)
    if args.command == "sensitivity":
        return sensitivity.main(args)
    paths = args.suites or sorted(glob.glob("suites/*.yaml"))
    resources = _resources(args)
    markexpr = " and ".join(f"({e})" for e in (args.markexpr, args.platform) if e) or None
    try:
        cases = collect(paths, resources, args.keyword, markexpr)
    except (SuiteError, ExpressionError) as err:
        print(f"harness: {err}", file=sys.stderr)
        return EXIT_USAGE
    if not cases:
        asked = " ".join(f"{flag} {value!r}" for flag, value in (("-k", args.keyword), ("-m", args.markexpr), ("--platform", args.platform))
                         if value)
        print(f"harness: {asked or 'the suites'} select(s) no case of {', '.join(map(str, paths)) or 'no suite file'}; "
              "`harness list` prints every case id", file=sys.stderr)
        return EXIT_USAGE
    plan = schedule(cases, resources)
    if args.command == "list":
        for item in plan:
            skip = f"  [skip: {item.skip}]" if item.skip else ""
            known = "  [known defect: expected to fail]" if item.case.known_defect else ""
            print(f"{item.case.key}  world={item.case.world_size}  markers={','.join(item.case.markers)}{known}{skip}")
        print(f"{len(plan)} cases")
        return 0
    if args.platform == "gpu" and resources.gpus == 0:
        print(f"harness: no GPU on this machine; {len(plan)} GPU cases cannot run", file=sys.stderr)
        if not args.allow_no_gpu:
            return EXIT_NO_GPU
    options = RunOptions(args.baselines, args.artifacts, args.update_baselines, resources.environments)
    said = preflight(plan, BaselineStore(options.baselines, options.environments), options.update_baselines)
    problems = [line for line in said if not line.startswith("note:")]
    for line in said:
        print(f"harness: {line}", file=sys.stderr)
    if problems:
        print(f"harness: {len(problems)} problem(s) before start; nothing was run", file=sys.stderr)
        return EXIT_USAGE
    variation = VARIATIONS[args.variation] if args.variation else None
    if variation is not None and (args.launcher != "local" or variation.unavailable()):
        print(f"harness: --variation {variation.name}: " + (variation.unavailable() or "runs with the local launcher only"), file=sys.stderr)
        return EXIT_USAGE
    try:
        launcher = (LocalLauncher(args.artifacts, variation.environment) if variation is not None
                    else make_launcher(_settings(args), [item.case for item in plan if item.skip is None]))
    except LauncherError as err:
        print(f"harness: {err}", file=sys.stderr)
        return EXIT_USAGE
    storage = unwritable(args.artifacts)
    if storage is not None:
        launcher.close()
        print(f"harness: --artifacts {storage}: cases could not write their files; nothing was run", file=sys.stderr)
        return EXIT_USAGE
    info = provenance(Path.cwd(), resources.gpu_name) | ({"variation": variation.name} if variation is not None else {})
    stores = ResultStores(args.history or args.artifacts / DEFAULT_HISTORY.name, args.artifacts / "results.json", info)
    say(stores.start())
    results = stores.results
    interrupted = False
    # A run started in the background (nohup, cron, `cmd &` in a script) inherits an ignored SIGINT;
    # `kill -INT` is how a person or a scheduler stops a run cleanly (below), so it is always armed.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with case_progress(len(plan)) as advance:
            for result in run_plan(plan, launcher, options, info):
                print(result.message(), flush=True)
                say(stores.keep(result))
                advance(result)
    except KeyboardInterrupt:
        interrupted = True
        print(f"harness: interrupted after {len(results)} of {len(plan)} cases", file=sys.stderr)
    finally:
        launcher.close()
        say(stores.finish(interrupted))
        if args.junit is not None:
            _also_write(stores, "JUnit XML", args.junit, lambda: write_junit(args.junit, results))
        if any(r.outcome.timings for r in results):
            document = benchmark_document(results, info)
            _also_write(stores, "benchmark file", args.artifacts / BENCHMARKS, lambda: write_json_atomic(args.artifacts / BENCHMARKS, document))
            if args.benchmark_storage is not None:
                _also_write(stores, "benchmark storage", args.benchmark_storage, lambda: save_to_storage(args.benchmark_storage, document))
    if interrupted:
        return EXIT_FAILED
    print(summary(results))
    if options.update_baselines:
        print(f"baselines written under {args.baselines}/ ({sum(r.verdict is Verdict.UPDATED for r in results)} cases changed)")
    lost = stores.summary()
    if lost is not None:
        print(f"harness: {lost}", file=sys.stderr)
    return 0 if all(r.ok for r in results) and lost is None else EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
