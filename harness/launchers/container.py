"""Container launcher: each batch runs in a fresh container of an image (docker or podman, same
CLI subset), its ranks started by torchrun inside; artifacts and the shipped subjects are mounted at
their own paths, so results come back through the mounted folder.
"""

from __future__ import annotations

import contextlib
import resource
import secrets
import shlex
import shutil
import subprocess
from pathlib import Path

from harness.launchers.batch import JobState, LauncherError
from harness.launchers.protocol import Batch
from harness.launchers.settings import LaunchSettings

ENGINES = ("podman", "docker")
# NGC's recommended limits, each capped at this host's hard limit (a container may not exceed it).
# nproc stays at 32768: podman + runc here refused 65536 although the hard limit was higher.
ULIMITS = {
    "nofile": (resource.RLIMIT_NOFILE, 65536),
    "nproc": (resource.RLIMIT_NPROC, 32768),
    "memlock": (resource.RLIMIT_MEMLOCK, -1),
    "stack": (resource.RLIMIT_STACK, 64 * 1024 * 1024),
}


def ulimit_args() -> list[str]:
    args = []
    for name, (which, wanted) in ULIMITS.items():
        hard = resource.getrlimit(which)[1]
        value = hard if wanted == -1 or (hard != resource.RLIM_INFINITY and hard < wanted) else wanted
        args.append(f"--ulimit={name}={value}:{value}")
    return args


def gpu_args(engine: str) -> list[str]:
    """Docker's ``--gpus``; podman reaches GPUs through CDI (nvidia-ctk cdi generate)."""
    return ["--gpus=all"] if Path(engine).name == "docker" else ["--device=nvidia.com/gpu=all"]


def run_command(engine: str, name: str, folder: Path, batch: Batch, settings: LaunchSettings) -> list[str]:
    assert settings.image is not None
    command = [engine, "run", "--rm", f"--name={name}", "--ipc=host", "--network=host", *ulimit_args()]
    if batch.platform == "gpu":
        command += gpu_args(engine)
    for src, dst in settings.mounts():
        command.append(f"--volume={src}:{dst}")
    env = settings.job_environment(batch.platform, batch.world_size)
    command += [f"--env={name}={value}" for name, value in sorted(env.items())]
    command += [f"--workdir={settings.artifacts.resolve()}", *settings.container_args, settings.image]
    return [
        *command,
        settings.python,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nnodes=1",
        f"--nproc-per-node={batch.world_size}",
        "-m",
        "harness.launchers.batch_job",
        str(folder),
        "torchrun",
    ]


class ContainerJob:
    def __init__(self, engine: str, name: str, command: list[str], log: Path) -> None:
        self.engine, self.id, self.log = engine, name, log
        with open(log, "wb") as out:
            self.proc = subprocess.Popen(
                command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
            )

    def state(self) -> JobState:
        code = self.proc.poll()
        return JobState("running", "running") if code is None else JobState("ended", f"exited with code {code}")

    def cancel(self) -> None:
        if self.proc.poll() is None:
            subprocess.run([self.engine, "kill", self.id], capture_output=True, check=False)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    self.proc.kill()
                self.proc.wait()


def find_engine(wanted: str | None) -> str:
    for name in (wanted,) if wanted else ENGINES:
        found = shutil.which(name)
        if found:
            return found
    raise LauncherError(f"--launcher container: {wanted or ' or '.join(ENGINES)} not found on PATH")


class ContainerBackend:
    name = "container"
    success = frozenset({"exited with code 0"})

    def __init__(self, settings: LaunchSettings) -> None:
        if not settings.image:
            raise LauncherError("--launcher container needs --image (a local image: build containers/Containerfile)")
        self.engine = find_engine(settings.engine)
        found = subprocess.run(
            [self.engine, "image", "inspect", settings.image], capture_output=True, text=True, check=False
        )
        if found.returncode != 0:
            raise LauncherError(
                f"--image {settings.image}: not usable with {self.engine} "
                f"({found.stderr.strip() or 'image not found'});"
                f" pull or build it first"
            )
        settings.prepare_mounts()
        self.settings = settings

    def submit(self, folder: Path, batch: Batch) -> ContainerJob:
        name = f"harness-{folder.name}-{secrets.token_hex(3)}"
        command = run_command(self.engine, name, folder, batch, self.settings)
        (folder / "submit.txt").write_text(shlex.join(command) + "\n")
        return ContainerJob(self.engine, name, command, folder / "job.log")
