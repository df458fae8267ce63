"""A rank's coordinates (RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT), from whoever
started it: torchrun sets them itself; under ``srun`` they are derived from the SLURM_* variables.
"""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
from collections.abc import Callable, Mapping
from dataclasses import dataclass

PORT_BASE, PORT_SPAN = 20000, 20000  # MASTER_PORT of a Slurm job: PORT_BASE + job id % PORT_SPAN


@dataclass(frozen=True)
class Coordinates:
    rank: int
    local_rank: int
    world_size: int
    master_addr: str
    master_port: int

    def environment(self) -> dict[str, str]:
        return {
            "RANK": str(self.rank),
            "LOCAL_RANK": str(self.local_rank),
            "WORLD_SIZE": str(self.world_size),
            "MASTER_ADDR": self.master_addr,
            "MASTER_PORT": str(self.master_port),
        }


def from_torchrun(env: Mapping[str, str]) -> Coordinates:
    return Coordinates(
        int(env["RANK"]), int(env["LOCAL_RANK"]), int(env["WORLD_SIZE"]), env["MASTER_ADDR"], int(env["MASTER_PORT"])
    )


def node_address(node: str) -> str:
    """A Slurm node's NodeAddr: node names need not resolve (several slurmd "nodes" on one host)."""
    found = subprocess.run(
        ["scontrol", "show", "node", "--oneliner", node], capture_output=True, text=True, check=False
    )
    match = re.search(r"\bNodeAddr=(\S+)", found.stdout)
    return match.group(1) if match else node


def first_node(nodelist: str) -> str:
    """The first host of a compressed node list (``node[1-2]``), as ``scontrol show hostnames`` expands it."""
    if shutil.which("scontrol"):
        names = subprocess.run(
            ["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True, check=False
        ).stdout.split()
        if names:
            return names[0]
    return re.sub(r"\[(\d+).*", r"\1", nodelist.split(",")[0])


def from_slurm(env: Mapping[str, str], address_of: Callable[[str], str] = node_address) -> Coordinates:
    """Rank 0 runs on the first node of the allocation; every rank agrees on the port from the job id."""
    nodelist = env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST") or socket.gethostname()
    return Coordinates(
        rank=int(env["SLURM_PROCID"]),
        local_rank=int(env["SLURM_LOCALID"]),
        world_size=int(env["SLURM_NTASKS"]),
        master_addr=address_of(first_node(nodelist)),
        master_port=PORT_BASE + int(env["SLURM_JOB_ID"]) % PORT_SPAN,
    )


RENDEZVOUS: dict[str, Callable[[Mapping[str, str]], Coordinates]] = {"torchrun": from_torchrun, "slurm": from_slurm}
