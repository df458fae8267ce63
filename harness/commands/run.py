"""``harness list`` and ``harness run``: the request the command line makes, executed as the pipeline's steps
(harness.pipeline.RUN)."""

from __future__ import annotations

import argparse
import glob
from dataclasses import replace
from pathlib import Path

from harness.launchers.registry import LAUNCHERS
from harness.launchers.settings import LaunchSettings
from harness.noise import VARIATIONS
from harness.pipeline import RUN, Request, execute
from harness.suites.expand import Resources


def add_parser(sub: argparse._SubParsersAction) -> None:
    for name, text in (
        ("list", "list the cases the suites expand to"),
        ("run", "run cases against recorded baselines"),
    ):
        cmd = sub.add_parser(name, help=text)
        cmd.add_argument("suites", nargs="*", help="suite files (default: suites/*.yaml)")
        cmd.add_argument("-k", dest="keyword", help="select by case id: 'tp2 and not int8'")
        cmd.add_argument("-m", dest="markexpr", help="select by marker: 'ckpt and tp2'")
        cmd.add_argument("--platform", choices=("cpu", "gpu"), help="only cases of this platform")
    run = sub.choices["run"]
    run.add_argument("--baselines", type=Path, default=Path("baselines"), help="baseline folder (default: baselines)")
    run.add_argument("--artifacts", type=Path, default=Path("artifacts"), help="artifact folder (default: artifacts)")
    run.add_argument("--update-baselines", action="store_true", help="record measured values as the new baselines")
    run.add_argument(
        "--allow-no-gpu", action="store_true", help="with --platform gpu on a machine without GPUs: skip, exit 0"
    )
    run.add_argument("--history", type=Path, help="run history to append to (default: <artifacts>/history.sqlite)")
    run.add_argument("--junit", type=Path, help="also write JUnit XML here")
    run.add_argument(
        "--variation",
        choices=sorted(VARIATIONS),
        help="local launcher: run every CPU rank under a noise-study "
        "variation (harness.noise), e.g. a held-out check that the derived tolerances cover it; results say so",
    )
    run.add_argument(
        "--benchmark-storage",
        type=Path,
        metavar="DIR",
        help=(
            "also save the timed cases as a numbered pytest-benchmark file under DIR (`pytest-benchmark compare "
            "--storage DIR`)"
        ),
    )
    LaunchSettings.add_arguments(run, sorted(LAUNCHERS))


def _resources(args: argparse.Namespace) -> Resources:
    """What the cases may use: this machine, or under Slurm up to --nodes nodes of it."""
    here = Resources.detect()
    if getattr(args, "launcher", "local") != "slurm":
        return here
    return replace(here, cpu_ranks=here.cpu_ranks * args.nodes, gpus=args.gpus_per_node * args.nodes)


def request(args: argparse.Namespace) -> Request:
    paths = tuple(Path(p) for p in (args.suites or sorted(glob.glob("suites/*.yaml"))))
    common = {
        "command": args.command,
        "paths": paths,
        "resources": _resources(args),
        "keyword": args.keyword,
        "markexpr": args.markexpr,
        "platform": args.platform,
    }
    if args.command == "list":
        return Request(**common, launch=LaunchSettings())
    return Request(
        **common,
        launch=LaunchSettings.from_arguments(args),
        baselines=args.baselines,
        update_baselines=args.update_baselines,
        history=args.history,
        junit=args.junit,
        benchmark_storage=args.benchmark_storage,
        allow_no_gpu=args.allow_no_gpu,
        variation=VARIATIONS[args.variation] if args.variation else None,
    )


def main(args: argparse.Namespace) -> int:
    return execute(RUN, request(args))
