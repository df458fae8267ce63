"""modelopt's CUDA extensions, compiled before any case starts (GPU ranks only).

modelopt builds its quantization kernels with torch's cpp_extension on first use, which takes
minutes in a fresh container. Inside a case that time would count against the case's timeout and
its timings, and a rank killed mid-compile leaves torch's build lock behind, on which every later
load waits forever. So rank 0 compiles while the pool starts (under the pool's start-up limit), the
other ranks load the result after a barrier, and a lock older than any compile is removed first.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

STALE_LOCK_S = 30 * 60  # far longer than a compile takes (minutes)


def extensions_root() -> Path:
    """Where torch builds extensions: TORCH_EXTENSIONS_DIR, else its per-user cache (one folder per
    Python/CUDA pair below it, one per extension below that)."""
    from torch.utils.cpp_extension import get_default_build_root

    return Path(os.environ.get("TORCH_EXTENSIONS_DIR") or get_default_build_root())


def stale_locks(root: Path, now: float | None = None) -> list[Path]:
    """torch's build locks under ``root`` older than ``STALE_LOCK_S``: left by a killed compile."""
    now = time.time() if now is None else now
    return [lock for lock in root.glob("**/lock") if now - lock.stat().st_mtime > STALE_LOCK_S]


def warm(rank: int) -> None:
    import torch.distributed as dist
    from modelopt.torch.quantization import extensions

    if rank == 0:
        for lock in stale_locks(extensions_root()):
            print(f"[harness] removing a stale torch extension build lock: {lock}", flush=True)
            lock.unlink(missing_ok=True)
        started = time.perf_counter()
        extensions.precompile()
        print(
            f"[harness] modelopt CUDA extensions ready in {time.perf_counter() - started:.0f} s (pid {os.getpid()})",
            flush=True,
        )
    dist.barrier()
    if rank != 0:
        extensions.precompile()  # built by rank 0: a load
