"""The commands the Slurm and container launchers generate (the NGC/pyxis path cannot run here, so its
commands are checked as argument lists), the batch script's quoting (read back by a real bash), the
rendezvous derived from SLURM_* variables, and the errors given before anything is submitted."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from harness.cli import EXIT_USAGE, main
from harness.launchers.batch import LauncherError
from harness.launchers.container import ContainerBackend, run_command, ulimit_args
from harness.launchers.protocol import Batch, Task
from harness.launchers.rendezvous import PORT_BASE, first_node, from_slurm, from_torchrun
from harness.launchers.settings import LaunchSettings
from harness.launchers.slurm import Shape, SlurmBackend, batch_script, sbatch_command, shape, srun_command, time_limit
from harness.pipeline import collect
from harness.suites.expand import Resources
from tests.conftest import ROOT

NGC = "nvcr.io#nvidia/pytorch:25.10-py3"


def batch(platform: str, world: int, count: int = 2) -> Batch:
    cases = [
        c for c in collect([ROOT / "suites" / "ckpt.yaml"], Resources(cpu_ranks=64, gpus=64)) if c.platform == platform
    ]
    chosen = [c for c in cases if c.world_size == min(world, 2)][:count]
    return Batch(platform, world, tuple(Task(c, f"/results/{i}") for i, c in enumerate(chosen)))


def option(command: list[str], name: str) -> str:
    (value,) = [arg.split("=", 1)[1] for arg in command if arg.startswith(f"{name}=")]
    return value


def test_sbatch_for_an_ngc_gpu_batch_over_two_nodes(tmp_path: Path) -> None:
    settings = LaunchSettings(
        "slurm",
        tmp_path / "artifacts",
        image=NGC,
        nodes=2,
        gpus_per_node=8,
        partition="batch",
        account="llm",
        slurm_args=("--qos=high",),
    )
    command = sbatch_command(tmp_path / "job1", batch("gpu", 16), settings)
    assert command[:2] == ["sbatch", "--parsable"]
    assert option(command, "--nodes") == "2" and option(command, "--ntasks-per-node") == "8"
    assert option(command, "--gpus-per-node") == "8"
    assert option(command, "--partition") == "batch" and option(command, "--account") == "llm"
    assert "--qos=high" in command and command[-1] == str(tmp_path / "job1" / "job.sh")
    assert option(command, "--output") == str(tmp_path / "job1" / "job.log")
    srun = srun_command(tmp_path / "job1", settings)
    assert option(srun, "--container-image") == NGC
    mounts = option(srun, "--container-mounts").split(",")
    artifacts = str((tmp_path / "artifacts").resolve())
    assert f"{artifacts}:{artifacts}" in mounts
    assert srun[-6:] == ["python", "-u", "-m", "harness.launchers.batch_job", str(tmp_path / "job1"), "slurm"]


def test_cpu_batches_ask_for_no_gpus_and_run_this_interpreter(tmp_path: Path) -> None:
    settings = LaunchSettings("slurm", tmp_path)
    command = sbatch_command(tmp_path, batch("cpu", 2), settings)
    assert not any(arg.startswith("--gpus") for arg in command)
    srun = srun_command(tmp_path, settings)
    assert not any(arg.startswith("--container") for arg in srun)
    assert srun[2] == sys.executable


def test_shapes_split_evenly_and_refuse_what_does_not_fit() -> None:
    settings = LaunchSettings("slurm", nodes=4, gpus_per_node=8)
    assert shape(2, settings, "cpu") == Shape(2, 1)
    assert shape(6, settings, "gpu") == Shape(3, 2)
    assert shape(32, settings, "gpu") == Shape(4, 8)
    with pytest.raises(LauncherError, match="needs 16 GPUs per node"):
        shape(64, settings, "gpu")
    assert shape(1, settings, "cpu").nodes == 1


def test_job_time_is_the_summed_case_timeouts_plus_a_margin() -> None:
    two = batch("cpu", 2)
    minutes = (sum(t.case.timeout_s for t in two.tasks) + 600) / 60
    hours, rest = time_limit(two).split(":")[:2]
    assert int(hours) * 60 + int(rest) == pytest.approx(minutes, abs=1)


def test_the_batch_script_quotes_every_value(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    hostile = "a b'c\"$(touch pwned)`touch pwned2`;rm -rf /"
    monkeypatch.setenv("HARNESS_NOTE", hostile)
    folder = tmp_path / "with space's"
    script = batch_script(folder, batch("cpu", 2), LaunchSettings("slurm", tmp_path, image="my image's;ls"))
    # bash reads the exports back verbatim and runs nothing from them
    echo = script.replace("exec srun", "printf '%s\\n' srun")
    out = subprocess.run(
        ["bash", "-c", echo + 'printf "NOTE=%s\\n" "$HARNESS_NOTE"'],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    )
    assert f"NOTE={hostile}" in out.stdout.splitlines()
    assert "--container-image=my image's;ls" in out.stdout.splitlines()
    assert str(folder) in out.stdout.splitlines()
    assert not (tmp_path / "pwned").exists() and not (tmp_path / "pwned2").exists()


def test_container_run_command_for_docker_and_podman(tmp_path: Path) -> None:
    settings = LaunchSettings(
        "container",
        tmp_path / "artifacts",
        image=NGC.replace("#", "/"),
        extra_mounts=("/data/mmlu:/mmlu",),
        env=("HOME",),
    )
    docker = run_command("/usr/bin/docker", "harness-x", tmp_path / "job", batch("gpu", 2), settings)
    podman = run_command("podman", "harness-x", tmp_path / "job", batch("gpu", 2), settings)
    assert "--gpus=all" in docker and "--device=nvidia.com/gpu=all" in podman
    for command in (docker, podman):
        assert command[1:3] == ["run", "--rm"] and "--ipc=host" in command
        assert "--volume=/data/mmlu:/mmlu" in command
        assert f"--env=HOME={os.environ['HOME']}" in command
        image_at = command.index(settings.image)
        assert command[image_at + 1 : image_at + 6] == [
            "python",
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nnodes=1",
        ]
        assert command[-4:] == ["-m", "harness.launchers.batch_job", str(tmp_path / "job"), "torchrun"]
    cpu = run_command("podman", "harness-x", tmp_path / "job", batch("cpu", 2), settings)
    assert "--env=CUDA_VISIBLE_DEVICES=" in cpu and not any("gpu" in arg for arg in cpu[: cpu.index(settings.image)])


def test_container_ulimits_never_exceed_this_hosts_hard_limits() -> None:
    import resource

    limits = dict(arg.removeprefix("--ulimit=").split("=") for arg in ulimit_args())
    for name, which in (("nofile", resource.RLIMIT_NOFILE), ("memlock", resource.RLIMIT_MEMLOCK)):
        hard = resource.getrlimit(which)[1]
        value = int(limits[name].split(":")[0])
        assert hard == resource.RLIM_INFINITY or value <= hard


def test_rendezvous_from_slurm_variables() -> None:
    env = {
        "SLURM_PROCID": "3",
        "SLURM_LOCALID": "1",
        "SLURM_NTASKS": "4",
        "SLURM_JOB_ID": "123456",
        "SLURM_JOB_NODELIST": "gpu-a[07-08]",
    }
    found = from_slurm(env, address_of=lambda node: f"addr-of-{node}")
    assert (found.rank, found.local_rank, found.world_size) == (3, 1, 4)
    assert found.master_addr in ("addr-of-gpu-a07", "addr-of-gpu-a7")
    assert found.master_port == PORT_BASE + 123456 % 20000
    assert found.environment()["MASTER_PORT"] == str(found.master_port)
    torchrun = from_torchrun(
        {"RANK": "1", "LOCAL_RANK": "1", "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"}
    )
    assert torchrun.environment() == {
        "RANK": "1",
        "LOCAL_RANK": "1",
        "WORLD_SIZE": "2",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": "29500",
    }


@pytest.mark.skipif(shutil.which("scontrol") is None, reason="scontrol (slurm-client) not installed")
def test_first_node_expands_like_scontrol() -> None:
    assert first_node("node[1-2]") == "node1" and first_node("gpu-a[07-08],cpu3") == "gpu-a07"


def no_tools_path(tmp_path: Path) -> str:
    """A PATH with this interpreter but no Slurm or container tools."""
    folder = tmp_path / "bin"
    folder.mkdir()
    return str(folder)


def test_missing_slurm_tools_are_named_before_anything_is_submitted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("PATH", no_tools_path(tmp_path))
    with pytest.raises(LauncherError, match="sbatch, squeue, scontrol, scancel, sinfo not found"):
        SlurmBackend(LaunchSettings("slurm"))
    code = main(["run", str(ROOT / "suites" / "ckpt.yaml"), "--launcher", "slurm", "--artifacts", str(tmp_path / "a")])
    assert code == EXIT_USAGE
    assert "not found on PATH" in capsys.readouterr().err
    assert not (tmp_path / "a").exists()


def test_container_launcher_needs_an_engine_and_an_image(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(LauncherError, match="needs --image"):
        ContainerBackend(LaunchSettings("container"))
    monkeypatch.setenv("PATH", no_tools_path(tmp_path))
    with pytest.raises(LauncherError, match="podman or docker not found"):
        ContainerBackend(LaunchSettings("container", image="anything"))


def test_a_pyxis_image_file_that_does_not_exist_is_refused(tmp_path: Path) -> None:
    if shutil.which("sbatch") is None:
        pytest.skip("slurm-client not installed")
    missing = tmp_path / "nope.sqsh"
    with pytest.raises(LauncherError, match=f"--image {missing}: no such file"):
        SlurmBackend(LaunchSettings("slurm", image=str(missing)))


def test_mounts_create_the_harness_folders_and_refuse_missing_extras(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HARNESS_SUBJECTS", str(tmp_path / "fresh" / "subjects"))
    settings = LaunchSettings("container", tmp_path / "artifacts", image="x")
    settings.prepare_mounts()  # an engine refuses to mount a path that does not exist yet
    assert (tmp_path / "fresh" / "subjects").is_dir() and (tmp_path / "artifacts").is_dir()
    with pytest.raises(LauncherError, match=f"--mount {tmp_path / 'no-data'}: no such file"):
        LaunchSettings(
            "container", tmp_path / "artifacts", image="x", extra_mounts=(f"{tmp_path / 'no-data'}:/data",)
        ).prepare_mounts()
