"""Slurm launcher: one ``sbatch`` job per batch, its ranks started by ``srun`` (inside a container
image through pyxis when one is given), rendezvous from the SLURM_* variables.

Every command is an argument list; the batch script is the only text the shell reads, and every
value in it is quoted.
"""

from __future__ import annotations

import math
import re
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from harness.launchers.batch import JobState, LauncherError
from harness.launchers.common import checkout_pythonpath
from harness.launchers.protocol import Batch
from harness.launchers.settings import LaunchSettings

TOOLS = ("sbatch", "squeue", "scontrol", "scancel", "sinfo")
ENDED = {
    "COMPLETED",
    "FAILED",
    "CANCELLED",
    "TIMEOUT",
    "NODE_FAIL",
    "OUT_OF_MEMORY",
    "PREEMPTED",
    "BOOT_FAIL",
    "DEADLINE",
}
PENDING = {"PENDING", "CONFIGURING", "REQUEUED", "RESIZING", "SUSPENDED"}
CANCEL_WAIT_S = 60.0
JOB_MARGIN_S = 600.0  # --time beyond the batch's summed case timeouts: imports, rendezvous, teardown


@dataclass(frozen=True)
class Shape:
    nodes: int
    tasks_per_node: int


def shape(world_size: int, settings: LaunchSettings, platform: str) -> Shape:
    """Spread over up to ``settings.nodes`` nodes, evenly; GPU ranks per node within ``gpus_per_node``."""
    nodes = max(n for n in range(1, min(settings.nodes, world_size) + 1) if world_size % n == 0)
    per_node = world_size // nodes
    if platform == "gpu" and per_node > settings.gpus_per_node:
        raise LauncherError(
            f"world size {world_size} over {nodes} node(s) needs {per_node} GPUs per node;"
            f" --gpus-per-node is {settings.gpus_per_node} (raise --nodes)"
        )
    return Shape(nodes, per_node)


def time_limit(batch: Batch) -> str:
    minutes = math.ceil((sum(t.case.timeout_s for t in batch.tasks) + JOB_MARGIN_S) / 60)
    return f"{minutes // 60}:{minutes % 60:02d}:00"


def sbatch_command(folder: Path, batch: Batch, settings: LaunchSettings) -> list[str]:
    layout = shape(batch.world_size, settings, batch.platform)
    command = [
        "sbatch",
        "--parsable",
        f"--job-name=harness-{folder.name}",
        f"--nodes={layout.nodes}",
        f"--ntasks-per-node={layout.tasks_per_node}",
        f"--time={settings.time_limit or time_limit(batch)}",
        f"--output={folder / 'job.log'}",
        f"--chdir={Path.cwd()}",
    ]
    if batch.platform == "gpu":
        command.append(f"--gpus-per-node={layout.tasks_per_node}")
    if settings.partition:
        command.append(f"--partition={settings.partition}")
    if settings.account:
        command.append(f"--account={settings.account}")
    command.extend(settings.slurm_args)
    return [*command, str(folder / "job.sh")]


def srun_command(folder: Path, settings: LaunchSettings) -> list[str]:
    """``srun`` for every rank; with an image, pyxis starts each inside it with the folders mounted."""
    command = ["srun", "--kill-on-bad-exit=1"]
    if settings.image:
        mounts = ",".join(f"{src}:{dst}" for src, dst in settings.mounts())
        command += [
            f"--container-image={settings.image}",
            f"--container-mounts={mounts}",
            f"--container-workdir={Path.cwd()}",
        ]
        python = settings.python
    else:
        python = sys.executable
    return [*command, python, "-u", "-m", "harness.launchers.batch_job", str(folder), "slurm"]


def batch_script(folder: Path, batch: Batch, settings: LaunchSettings) -> str:
    env = settings.job_environment(batch.platform, batch.world_size)
    if not settings.image:
        env["PYTHONPATH"] = checkout_pythonpath()
    lines = ["#!/bin/bash", "# written by posttrain-harness; every value is quoted", "set -eo pipefail"]
    lines += [f"export {name}={shlex.quote(value)}" for name, value in sorted(env.items())]
    lines.append(f"exec {shlex.join(srun_command(folder, settings))}")
    return "\n".join(lines) + "\n"


def _run(command: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, capture_output=True, text=True, check=False)


class SlurmJob:
    def __init__(self, job_id: str, log: Path) -> None:
        self.id, self.log = job_id, log
        self._last = JobState("pending", "PENDING")

    def state(self) -> JobState:
        shown = _run(["scontrol", "show", "job", "--oneliner", self.id])
        found = re.search(r"\bJobState=(\S+)", shown.stdout)
        if found is None:  # purged from the controller's memory: ask accounting / job completion
            acct = _run(["sacct", "-n", "-P", "-X", "-j", self.id, "-o", "State,ExitCode"])
            fields = acct.stdout.strip().splitlines()[0].split("|") if acct.stdout.strip() else []
            if len(fields) == 2:
                self._last = JobState("ended", f"{fields[0].split()[0]} exit {fields[1]}")
            elif self._last.phase != "ended":
                self._last = JobState("ended", "no longer known to Slurm")
            return self._last
        name = found.group(1)
        exit_code = re.search(r"\bExitCode=(\S+)", shown.stdout)
        detail = f"{name} exit {exit_code.group(1)}" if exit_code and name in ENDED else name
        phase = "ended" if name in ENDED else "pending" if name in PENDING else "running"
        self._last = JobState(phase, detail)
        return self._last

    def cancel(self) -> None:
        """``scancel``, then wait (bounded) until Slurm reports the job ended, so its state is final."""
        _run(["scancel", self.id])
        deadline = time.monotonic() + CANCEL_WAIT_S
        while self.state().phase != "ended" and time.monotonic() < deadline:
            time.sleep(0.5)


class SlurmBackend:
    name = "slurm"
    success = frozenset({"COMPLETED exit 0:0"})

    def __init__(self, settings: LaunchSettings) -> None:
        missing = [tool for tool in TOOLS if shutil.which(tool) is None]
        if missing:
            raise LauncherError(
                f"--launcher slurm: {', '.join(missing)} not found on PATH (is this a Slurm login node?)"
            )
        if settings.image and settings.image.startswith(("/", "./")) and not Path(settings.image).exists():
            raise LauncherError(f"--image {settings.image}: no such file (a squashfs image for pyxis/enroot)")
        reachable = _run(["sinfo", "--noheader", "--format=%P"])
        if reachable.returncode != 0:
            raise LauncherError(f"--launcher slurm: the cluster does not answer (sinfo: {reachable.stderr.strip()})")
        if settings.image:
            settings.prepare_mounts()
        self.settings = settings

    def submit(self, folder: Path, batch: Batch) -> SlurmJob:
        command = sbatch_command(folder, batch, self.settings)
        (folder / "job.sh").write_text(batch_script(folder, batch, self.settings))
        (folder / "submit.txt").write_text(shlex.join(command) + "\n")
        submitted = _run(command)
        if submitted.returncode != 0:
            raise LauncherError(
                f"sbatch failed ({submitted.returncode}): {submitted.stderr.strip()}\ncommand: {shlex.join(command)}"
            )
        return SlurmJob(submitted.stdout.strip().split(";")[0], folder / "job.log")
