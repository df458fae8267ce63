"""A real Slurm cluster on this host for the e2e tests: munged on a private socket, slurmctld and
one slurmd per "node" (several nodes share the host on their own ports), no accounting; job
completion goes to a text file so ``sacct --completion`` works.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Iterator, Mapping
from pathlib import Path

from tests.conftest import wait_for

DAEMONS = ("munged", "mungekey", "slurmctld", "slurmd", "sbatch")
CTLD_PORT, NODE_PORT = 16817, 17001
CPUS_PER_NODE = 4  # declared, not real: lets a 2-rank case share one node of this 2-core host


def missing() -> list[str]:
    return [tool for tool in DAEMONS if shutil.which(tool) is None]


def slurm_conf(folder: Path, nodes: int) -> str:
    last = NODE_PORT + nodes - 1
    node = (
        f"NodeName=node[1-{nodes}] NodeHostname=localhost NodeAddr=127.0.0.1 "
        f"Port=[{NODE_PORT}-{last}] CPUs={CPUS_PER_NODE} State=UNKNOWN"
    )
    return f"""\
ClusterName=harness
SlurmctldHost=localhost(127.0.0.1)
SlurmctldPort={CTLD_PORT}
SlurmUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={folder}/munge/munge.sock
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
SlurmdParameters=config_overrides
ReturnToService=2
StateSaveLocation={folder}/state
SlurmdSpoolDir={folder}/spool-%n
SlurmctldPidFile={folder}/slurmctld.pid
SlurmdPidFile={folder}/slurmd-%n.pid
SlurmctldLogFile={folder}/slurmctld.log
SlurmdLogFile={folder}/slurmd-%n.log
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/filetxt
JobCompLoc={folder}/jobcomp.txt
KillWait=5
{node}
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
"""


def queued(env: Mapping[str, str] | None = None) -> str:
    """``squeue``'s lines: empty when no job is left."""
    return subprocess.run(["squeue", "--noheader"], env=env, capture_output=True, text=True, check=False).stdout.strip()


def _idle_nodes(env: dict[str, str]) -> int:
    out = subprocess.run(
        ["sinfo", "--noheader", "--states=idle", "--format=%D"], env=env, capture_output=True, text=True, check=False
    ).stdout
    return sum(int(n) for n in out.split() if n.isdigit())


@contextlib.contextmanager
def local_cluster(folder: Path, nodes: int) -> Iterator[dict[str, str]]:
    """Start the cluster; yields the environment that points Slurm's tools at it (SLURM_CONF)."""
    folder.mkdir(parents=True, exist_ok=True)
    munge = folder / "munge"
    munge.mkdir(mode=0o700, exist_ok=True)
    (folder / "state").mkdir(exist_ok=True)
    conf = folder / "slurm.conf"
    conf.write_text(slurm_conf(folder, nodes))
    env = {**os.environ, "SLURM_CONF": str(conf)}
    key = munge / "munge.key"
    subprocess.run(["mungekey", "--create", f"--keyfile={key}", "--force"], check=True, capture_output=True)
    key.chmod(0o400)
    started: list[subprocess.Popen] = []
    try:
        subprocess.run(
            [
                "munged",
                f"--socket={munge}/munge.sock",
                f"--key-file={key}",
                f"--pid-file={munge}/munged.pid",
                f"--log-file={munge}/munged.log",
                f"--seed-file={munge}/munged.seed",
                "--force",
            ],
            check=True,
            capture_output=True,
        )
        started.append(
            subprocess.Popen(
                ["slurmctld", "-D", "-i", "-c", "-f", str(conf)],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        )
        for index in range(1, nodes + 1):
            started.append(
                subprocess.Popen(
                    ["slurmd", "-D", "-N", f"node{index}", "-f", str(conf)],
                    env=env,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            )
        wait_for(
            f"local Slurm cluster: {nodes} idle node(s)", lambda: _idle_nodes(env) >= nodes, timeout_s=60, poll_s=0.2
        )
        yield env
    finally:
        # jobs first (a slurmstepd left behind outlives the daemons), then the daemons
        subprocess.run(["scancel", "--full", "--user=root"], env=env, capture_output=True, check=False)
        with contextlib.suppress(AssertionError):
            wait_for("an empty queue", lambda: not queued(env), timeout_s=30, poll_s=0.2)
        subprocess.run(["scontrol", "shutdown"], env=env, capture_output=True, check=False)
        for proc in started:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, 9)
                proc.wait()
        pid = munge / "munged.pid"
        if pid.exists():
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pid.read_text().strip()), 15)
