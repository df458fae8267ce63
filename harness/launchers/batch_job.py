"""One rank of a batch job (``python -m harness.launchers.batch_job BATCH_DIR {torchrun,slurm}``):
joins the world once, runs the batch's cases in order and writes each reply next to the batch, so
results come back through the shared (or mounted) folder. A rank whose case fails stops: the others
may wait in a collective it never joins, and the driver cancels the job.
"""

from __future__ import annotations

import dataclasses
import os
import pickle
import sys
from pathlib import Path

from harness.atomic import write_json_atomic
from harness.launchers.protocol import BATCH_FILE, Batch, reply_file, started_marker
from harness.launchers.rendezvous import RENDEZVOUS
from harness.launchers.worker import init_rank, run_task


def main(argv: list[str]) -> int:
    folder, how = Path(argv[0]), argv[1]
    coordinates = RENDEZVOUS[how](os.environ)
    os.environ.update(coordinates.environment())
    batch: Batch = pickle.loads((folder / BATCH_FILE).read_bytes())
    if coordinates.world_size != batch.world_size:
        print(f"[harness] this job has {coordinates.world_size} ranks, the batch needs {batch.world_size}", flush=True)
        return 2
    rank = coordinates.rank
    adapted = init_rank(rank, coordinates.world_size, batch.platform)
    print(
        f"[harness] rank {rank} of {coordinates.world_size} ready (master "
        f"{coordinates.master_addr}:{coordinates.master_port},"
        f" harness {Path(__file__).parents[1]}); CPU adaptations: {', '.join(adapted) or 'none'}",
        flush=True,
    )
    for index, task in enumerate(batch.tasks):
        (folder / started_marker(index, rank)).touch()
        print(f"[harness] rank {rank} starts {task.case.key}", flush=True)
        reply = run_task(task, rank)
        write_json_atomic(folder / reply_file(index, rank), dataclasses.asdict(reply))
        print(f"[harness] rank {rank} ends {task.case.key}", flush=True)
        if reply.error:
            print(reply.error, flush=True)
            return 1
    import torch.distributed as dist

    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
