"""A warm worker rank: joins the world process group once, imports megatron-core and modelopt
once, then runs one case after another as the driver sends them.

Started by ``harness.launchers.local`` as ``python -m harness.launchers.worker``; the driver's
address, authkey and this rank's coordinates come in the environment.
"""

from __future__ import annotations

import contextlib
import os
import time
import traceback
from datetime import timedelta
from multiprocessing.connection import Client, Connection
from pathlib import Path

from harness.launchers.common import MUTATION_VARIABLE
from harness.launchers.protocol import RankReply, Task
from harness.records import DEVICE_MEMORY, PEAK_MEMORY


def init_rank(rank: int, world: int, platform: str) -> list[str]:
    import torch
    import torch.distributed as dist

    if platform == "gpu":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", rank)))
        # the TF32 policy (harness.environment.GPU_PINS), for torch's own kernels too
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        backend, adapted = "nccl", []
    else:
        from harness.runtime.cpu_compat import apply_cpu_adaptations

        backend, adapted = "gloo", apply_cpu_adaptations()
        check_pins()
    dist.init_process_group(backend, rank=rank, world_size=world, timeout=timedelta(minutes=30))
    # Paid once per worker instead of once per case (~10 s together on 2 CPU cores).
    import megatron.core.models.gpt  # noqa: F401
    import modelopt.torch.quantization  # noqa: F401

    if platform == "gpu":
        from harness.runtime.cuda_extensions import warm

        warm(rank)
    if os.environ.get(MUTATION_VARIABLE):  # a sensitivity run: one known defect, injected after the imports
        from harness.mutations import inject

        adapted = [*adapted, inject(os.environ[MUTATION_VARIABLE])]
    return adapted


def check_pins() -> None:
    """The pinned CPU numerics (harness.environment) must have taken effect: a torch that ignored them
    would compute other low bits while the results claim the pinned environment."""
    import torch

    isa = os.environ.get("ATEN_CPU_CAPABILITY")
    threads = int(os.environ["OMP_NUM_THREADS"])
    if isa is not None and torch.backends.cpu.get_cpu_capability().lower() != isa:
        raise RuntimeError(
            f"ATEN_CPU_CAPABILITY={isa} did not take effect (torch runs {torch.backends.cpu.get_cpu_capability()})"
        )
    if torch.get_num_threads() != threads:
        raise RuntimeError(
            f"OMP_NUM_THREADS={threads} did not take effect (torch runs {torch.get_num_threads()} threads)"
        )


def reset_peak_memory(platform: str) -> None:
    """Start this rank's memory high-water marks afresh: a warm worker runs many cases."""
    if platform == "gpu":
        import torch

        torch.cuda.reset_peak_memory_stats()
        return
    # Linux: writing 5 to clear_refs resets the peak resident set size (VmHWM) to the current RSS.
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")


def memory_metrics(platform: str) -> dict[str, float]:
    """This rank's peak memory over the case, in MiB (the driver keeps the largest rank's): the CUDA
    allocator's peak on a GPU, with what the device has in use at the end (the figure NVML and
    nvidia-smi report: context, cached blocks, other processes); the peak resident set on a CPU."""
    mib = 1024 * 1024
    if platform == "gpu":
        import torch

        free, total = torch.cuda.mem_get_info()
        return {PEAK_MEMORY: torch.cuda.max_memory_allocated() / mib, DEVICE_MEMORY: (total - free) / mib}
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return {PEAK_MEMORY: int(line.split()[1]) / 1024}
    return {}


def run_task(task: Task, rank: int) -> RankReply:
    from harness.checks import get_check
    from harness.checks.base import CheckContext

    start = time.perf_counter()
    reset_peak_memory(task.case.platform)
    try:
        check = get_check(task.case.check)
        context = CheckContext(
            case=task.case,
            model=task.case.model_spec,
            params=check.params.model_validate(task.case.params),
            artifacts=Path(task.artifacts),
        )
        metrics = check.run(context) | memory_metrics(task.case.platform)
        timings = {name: tuple(values) for name, values in context.timings.items()}
        return RankReply(rank, metrics, None, time.perf_counter() - start, timings, context.kept)
    except Exception:
        return RankReply(rank, None, traceback.format_exc(), time.perf_counter() - start)
    finally:
        # A gloo group's threads only stop once its last reference is collected, and on a GPU the next
        # case (or pool) must start with the device memory of this one's models freed.
        from harness.runtime.forward import release_memory

        release_memory()


def main() -> None:
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    host, port = os.environ["HARNESS_DRIVER_ADDR"].rsplit(":", 1)
    conn: Connection = Client((host, int(port)), authkey=bytes.fromhex(os.environ["HARNESS_AUTHKEY"]))
    conn.send(("hello", rank))
    adapted = init_rank(rank, world, os.environ["HARNESS_PLATFORM"])
    conn.send(("ready", rank, adapted))
    while True:
        message = conn.recv()
        if message[0] == "stop":
            break
        task: Task = message[1]
        print(f"[harness] rank {rank} starts {task.case.key}", flush=True)
        conn.send(("done", run_task(task, rank)))
        print(f"[harness] rank {rank} ends {task.case.key}", flush=True)
    import torch.distributed as dist

    dist.destroy_process_group()


if __name__ == "__main__":
    main()
