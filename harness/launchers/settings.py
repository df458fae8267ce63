"""How a run is launched: the ``--launcher`` choice and its options, one record for every launcher."""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from pathlib import Path

from harness.launchers.batch import LauncherError
from harness.launchers.common import MUTATION_VARIABLE, rank_environment
from harness.models.subjects import subjects_root

# Variables a rank needs from the driver's environment when it runs elsewhere (container, other node).
PASSED_PREFIXES = ("HARNESS_", "HF_", "NCCL_", "TORCH_")
PER_RANK = {"HARNESS_PLATFORM", "HARNESS_DRIVER_ADDR", "HARNESS_AUTHKEY"}


@dataclass(frozen=True)
class LaunchSettings:
    launcher: str = "local"
    artifacts: Path = Path("artifacts")
    image: str | None = None  # container image (docker/podman name, or pyxis/enroot image under Slurm)
    engine: str | None = None  # docker | podman; default: whichever is installed, podman first
    python: str = "python"  # the interpreter inside the image
    nodes: int = 1  # Slurm: spread each case over up to this many nodes
    gpus_per_node: int = 8
    partition: str | None = None
    account: str | None = None
    time_limit: str | None = None  # Slurm --time; default: the batch's case timeouts plus a margin
    slurm_args: tuple[str, ...] = ()  # extra sbatch arguments, passed as they are
    container_args: tuple[str, ...] = ()  # extra `docker/podman run` arguments
    extra_mounts: tuple[str, ...] = ()  # SRC[:DST] folders the ranks need (data files, checkpoints)
    env: tuple[str, ...] = ()  # more variable names to pass through

    def own_folders(self) -> list[Path]:
        return list(dict.fromkeys([self.artifacts.resolve(), subjects_root().resolve()]))

    def extra_mount_pairs(self) -> list[tuple[str, str]]:
        pairs = []
        for each in self.extra_mounts:
            src, _, dst = each.partition(":")
            source = str(Path(src).resolve())
            pairs.append((source, dst or source))
        return pairs

    def mounts(self) -> list[tuple[str, str]]:
        """Artifacts and the shipped subjects at their own paths (paths inside pickled cases stay valid), then the
        extras."""
        return [(str(path), str(path)) for path in self.own_folders()] + self.extra_mount_pairs()

    def prepare_mounts(self) -> None:
        """Create the harness's own folders (a fresh cache may not exist yet: an engine refuses to mount
        a missing path); a ``--mount`` source that does not exist is the user's error, said now."""
        for path in self.own_folders():
            path.mkdir(parents=True, exist_ok=True)
        for src, _ in self.extra_mount_pairs():
            if not Path(src).exists():
                raise LauncherError(f"--mount {src}: no such file or directory")

    def passed_env(self) -> dict[str, str]:
        # never a mutation a caller's shell happens to hold (harness.mutations: sensitivity runs only)
        names = [
            n for n in os.environ if n.startswith(PASSED_PREFIXES) and n not in PER_RANK and n != MUTATION_VARIABLE
        ] + list(self.env)
        passed = {name: os.environ[name] for name in names if name in os.environ}
        # the driver's subjects, whose hashes it checked, not a copy an image may carry
        return {**passed, "HARNESS_SUBJECTS": str(subjects_root().resolve())}

    def job_environment(self, platform: str, world_size: int) -> dict[str, str]:
        """What a batch job's ranks get, whichever system starts them: the rank variables, then the passed ones."""
        return {**rank_environment(platform, world_size), **self.passed_env()}

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser, launchers: list[str]) -> None:
        """The command-line options of every launcher (docs/launchers.md), as ``harness run`` offers them."""
        launch = parser.add_argument_group("launching (docs/launchers.md)")
        launch.add_argument(
            "--launcher", choices=launchers, default="local", help="where the ranks run (default: local)"
        )
        launch.add_argument(
            "--image", help="container image: a local docker/podman image, or a pyxis/enroot image under slurm"
        )
        launch.add_argument(
            "--engine",
            choices=("docker", "podman"),
            help="container engine (default: podman if installed, else docker)",
        )
        launch.add_argument("--python", default="python", help="the interpreter inside the image (default: python)")
        launch.add_argument(
            "--mount",
            action="append",
            default=[],
            metavar="SRC[:DST]",
            help="another folder for the ranks (data, checkpoints)",
        )
        launch.add_argument(
            "--env", action="append", default=[], metavar="NAME", help="another variable to pass to the ranks"
        )
        launch.add_argument(
            "--container-arg", action="append", default=[], metavar="ARG", help="extra `docker/podman run` argument"
        )
        launch.add_argument(
            "--nodes", type=int, default=1, help="slurm: spread each case over up to N nodes (default: 1)"
        )
        launch.add_argument("--gpus-per-node", type=int, default=8, help="slurm: GPUs per node (default: 8)")
        launch.add_argument("--partition", help="slurm partition")
        launch.add_argument("--account", help="slurm account")
        launch.add_argument(
            "--time", dest="time_limit", help="slurm --time per job (default: its cases' timeouts + 10 min)"
        )
        launch.add_argument(
            "--slurm-arg",
            action="append",
            default=[],
            metavar="ARG",
            help="extra sbatch argument: --slurm-arg=--qos=high",
        )

    @classmethod
    def from_arguments(cls, args: argparse.Namespace) -> LaunchSettings:
        return cls(
            launcher=args.launcher,
            artifacts=args.artifacts,
            image=args.image,
            engine=args.engine,
            python=args.python,
            nodes=args.nodes,
            gpus_per_node=args.gpus_per_node,
            partition=args.partition,
            account=args.account,
            time_limit=args.time_limit,
            slurm_args=tuple(args.slurm_arg),
            container_args=tuple(args.container_arg),
            extra_mounts=tuple(args.mount),
            env=tuple(args.env),
        )
