"""``harness list`` and ``harness run``: the pipeline outside pytest."""

from __future__ import annotations

import argparse
import glob
import os
import sys
from collections import Counter
from pathlib import Path

from harness.atomic import write_text_atomic
from harness.launchers.batch import LauncherError
from harness.launchers.registry import LAUNCHERS, make_launcher
from harness.launchers.settings import LaunchSettings
from harness.pipeline import RunOptions, collect, run_plan
from harness.progress import case_progress
from harness.provenance import provenance
from harness.records import Verdict
from harness.report import summary, write_results
from harness.reports.history import History, format_case_runs
from harness.reports.html import html
from harness.reports.junit import write_junit
from harness.reports.render import markdown
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
    report.add_argument("--drift-window", type=int, default=Settings.drift_window,
                        help=f"runs before the move that make the reference (default: {Settings.drift_window})")
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
    return Resources(cpu_ranks=here.cpu_ranks * args.nodes, gpus=args.gpus_per_node * args.nodes)


def _open_history(path: Path) -> History | None:
    if not path.exists():
        print(f"harness: no run history at {path}", file=sys.stderr)
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
    text = markdown(analysis)
    write_text_atomic(args.out / "report.md", text)
    write_text_atomic(args.out / "report.html", html(analysis))
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


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "history":
        return _history(args)
    if args.command == "report":
        return _report(args)
    paths = args.suites or sorted(glob.glob("suites/*.yaml"))
    resources = _resources(args)
    markexpr = " and ".join(f"({e})" for e in (args.markexpr, args.platform) if e) or None
    try:
        cases = collect(paths, resources, args.keyword, markexpr)
    except (SuiteError, ExpressionError) as err:
        print(f"harness: {err}", file=sys.stderr)
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
    options = RunOptions(args.baselines, args.artifacts, args.update_baselines)
    try:
        launcher = make_launcher(_settings(args), [item.case for item in plan if item.skip is None])
    except LauncherError as err:
        print(f"harness: {err}", file=sys.stderr)
        return EXIT_USAGE
    info = provenance(Path.cwd())
    history = History(args.history or args.artifacts / DEFAULT_HISTORY.name)
    run_id = history.start_run(info)
    results = []
    try:
        with case_progress(len(plan)) as advance:
            for result in run_plan(plan, launcher, options, info):
                results.append(result)
                print(result.message(), flush=True)
                write_results(args.artifacts / "results.json", results, info)
                history.record(run_id, result)
                advance(result)
        history.finish_run(run_id)
    except KeyboardInterrupt:
        print(f"harness: interrupted after {len(results)} of {len(plan)} cases", file=sys.stderr)
        return EXIT_FAILED
    finally:
        launcher.close()
        history.close()
        if args.junit is not None:
            write_junit(args.junit, results)
    print(summary(results))
    if options.update_baselines:
        print(f"baselines written under {args.baselines}/ ({sum(r.verdict is Verdict.UPDATED for r in results)} cases changed)")
    return 0 if all(r.ok for r in results) else EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
