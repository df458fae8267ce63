"""``harness``: the parser and the dispatch. Each subcommand is a module of harness/commands/ with its own
``add_parser`` and ``main``; ``list`` and ``run`` execute the pipeline's steps (harness.pipeline.RUN)."""

from __future__ import annotations

import argparse
import os
import sys

from harness.commands import baselines, history, models, noise, report, run, sensitivity
from harness.exit_codes import EXIT_FAILED, EXIT_NO_GPU, EXIT_USAGE

__all__ = ["EXIT_FAILED", "EXIT_NO_GPU", "EXIT_USAGE", "main"]
COMMANDS = {
    "list": run,
    "run": run,
    "history": history,
    "report": report,
    "models": models,
    "baselines": baselines,
    "noise": noise,
    "sensitivity": sensitivity,
}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="harness",
        description="Post-training regression harness for Megatron-Core + ModelOpt",
        epilog="exit codes: 0 passed (or skipped, or no-baseline in a new environment); 1 a failure, error "
        "or unwritable output; 2 bad input found before any worker started; 3 --platform gpu "
        "without a GPU",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for command in dict.fromkeys(COMMANDS.values()):
        command.add_parser(sub)
    for each in sub.choices.values():  # every subcommand's --help says what its exit status means
        each.epilog = parser.epilog
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return COMMANDS[args.command].main(args)
    except BrokenPipeError:  # `harness list | head`: the reader has gone, which is no error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error when Python flushes at exit
        return 0


if __name__ == "__main__":
    sys.exit(main())
