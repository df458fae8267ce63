"""Local launcher: warm worker pools on this machine, one per (platform, world size).

All ranks of a pool share one process group, so a hung or crashed case is ended by killing the
group (checkpoint writer children included) and the next case gets a fresh pool.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from multiprocessing.connection import Connection, Listener, wait
from pathlib import Path

from harness.launchers.common import (
    MUTATION_VARIABLE,
    checkout_pythonpath,
    fresh_artifacts,
    rank_environment,
    startup_timeout_s,
    tail,
)
from harness.launchers.protocol import Measured, RankReply, Task, merged
from harness.records import Case, CaseOutcome

ERROR_GRACE_S = 10.0
EXIT_GRACE_S = 5.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def traceback_lines(error: str) -> list[str]:
    """A case error's own lines: those before the rank log tails ``_explain`` appends ("--- rank N log")."""
    lines = error.strip().splitlines()
    end = next((i for i, line in enumerate(lines) if line.startswith("--- rank")), len(lines))
    return [line for line in lines[:end] if line.strip()]


def raised(error: str) -> str:
    """The exception a case ended with (its traceback's last line), not the last line of a log tail."""
    lines = traceback_lines(error)
    return (lines[-1] if lines else error.strip())[:300]


class PoolBroken(RuntimeError):
    """The pool can no longer run cases; its message says why (with log tails)."""


# World size -> variables to set (or, None, remove) in every rank's environment on top of the pinned
# numerics: a noise study's variation (harness.noise), a sensitivity run's injected defect (harness.mutations).
EnvironmentChanges = Callable[[int], dict[str, str | None]]


class WorkerPool:
    def __init__(
        self, world_size: int, platform: str, log_dir: Path, changes: EnvironmentChanges | None = None
    ) -> None:
        self.world_size, self.platform, self.log_dir, self.changes = world_size, platform, log_dir, changes
        self.procs: list[subprocess.Popen] = []
        self.conns: dict[int, Connection] = {}
        self.adaptations: list[str] = []
        self._start()

    def _env(self, rank: int, address: str, authkey: bytes, master_port: int) -> dict[str, str]:
        env = {
            **{name: value for name, value in os.environ.items() if name != MUTATION_VARIABLE},
            "RANK": str(rank),
            "LOCAL_RANK": str(rank),
            "WORLD_SIZE": str(self.world_size),
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(master_port),
            "HARNESS_DRIVER_ADDR": address,
            "HARNESS_AUTHKEY": authkey.hex(),
            "PYTHONPATH": checkout_pythonpath(),
            **rank_environment(self.platform, self.world_size),
        }
        for name, value in (self.changes(self.world_size) if self.changes else {}).items():
            if value is None:
                env.pop(name, None)
            else:
                env[name] = value
        return env

    def _start(self) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        authkey = secrets.token_bytes(16)
        listener = Listener(("127.0.0.1", 0), authkey=authkey)
        address = f"127.0.0.1:{listener.address[1]}"
        master_port = free_port()
        accepted: list[Connection] = []

        def accept() -> None:
            try:
                while len(accepted) < self.world_size:
                    accepted.append(listener.accept())
            except OSError:  # listener closed because the pool gave up
                pass

        acceptor = threading.Thread(target=accept, daemon=True)
        acceptor.start()
        for rank in range(self.world_size):
            log = open(self.log_dir / f"rank{rank}.log", "wb")  # noqa: SIM115 - the child owns it
            group = {"process_group": 0 if rank == 0 else self.procs[0].pid}
            self.procs.append(
                subprocess.Popen(
                    [sys.executable, "-m", "harness.launchers.worker"],
                    env=self._env(rank, address, authkey, master_port),
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    **group,
                )
            )
            log.close()
        startup_s = startup_timeout_s(self.platform)
        deadline = time.monotonic() + startup_s
        try:
            while acceptor.is_alive():
                acceptor.join(0.2)
                self._raise_if_dead("while starting")
                if time.monotonic() > deadline:
                    raise PoolBroken(self._explain(f"workers did not connect within {startup_s:.0f} s"))
            for conn in accepted:
                _, rank = conn.recv()
                self.conns[rank] = conn
            pending = set(self.conns)
            while pending:
                ready = wait([self.conns[r] for r in pending], timeout=max(0.0, deadline - time.monotonic()))
                if not ready:
                    raise PoolBroken(self._explain(f"workers were not ready within {startup_s:.0f} s"))
                for conn in ready:
                    try:
                        _, rank, self.adaptations = conn.recv()
                    except EOFError:
                        raise PoolBroken(self._explain("a worker died while starting")) from None
                    pending.discard(rank)
        except BaseException:
            self.kill()
            raise
        finally:
            listener.close()

    def _await_exit(self, conn: Connection) -> None:
        """A closed connection comes before the exit status: give that rank a moment to be reaped."""
        rank = next(r for r, c in self.conns.items() if c is conn)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.procs[rank].wait(timeout=EXIT_GRACE_S)

    def _raise_if_dead(self, when: str) -> None:
        for rank, proc in enumerate(self.procs):
            if proc.poll() is not None:
                raise PoolBroken(self._explain(f"rank {rank} exited with code {proc.returncode} {when}"))

    def _explain(self, reason: str) -> str:
        tails = "\n".join(
            f"--- rank {r} log ({self.log_dir / f'rank{r}.log'}), last lines:\n{tail(self.log_dir / f'rank{r}.log')}"
            for r in range(self.world_size)
        )
        return f"{reason}\n{tails}"

    def run(self, case: Case, artifacts: Path) -> Measured:
        """What the ranks of ``case`` measured (harness.launchers.protocol.merged); ``PoolBroken`` otherwise."""
        task = Task(case, str(artifacts))
        for conn in self.conns.values():
            conn.send(("run", task))
        replies: dict[int, RankReply] = {}
        deadline = time.monotonic() + case.timeout_s
        first_error_at: float | None = None
        while len(replies) < self.world_size:
            if first_error_at is not None and time.monotonic() > first_error_at + ERROR_GRACE_S:
                break  # the other ranks are likely blocked in a collective the failed rank never joined
            pending = [c for r, c in self.conns.items() if r not in replies]
            ready = wait(pending, timeout=min(1.0, max(0.0, deadline - time.monotonic())))
            for conn in ready:
                try:
                    reply: RankReply = conn.recv()[1]
                except EOFError:
                    self._await_exit(conn)
                    self._raise_if_dead(f"during {case.id}")
                    raise PoolBroken(self._explain(f"lost the connection to a worker during {case.id}")) from None
                replies[reply.rank] = reply
                if reply.error and first_error_at is None:
                    first_error_at = time.monotonic()
            if not ready:
                self._raise_if_dead(f"during {case.id}")
                if time.monotonic() >= deadline:
                    raise PoolBroken(
                        self._explain(
                            f"timed out after {case.timeout_s:g} s; worker process group {self.procs[0].pid} killed"
                        )
                    )
        errors = [r for r in sorted(replies.values(), key=lambda r: r.rank) if r.error]
        if errors:
            raise PoolBroken(self._explain("\n".join(f"rank {r.rank} raised:\n{r.error}" for r in errors)))
        return merged(list(replies.values()))

    def kill(self) -> None:
        if self.procs and self.procs[0].pid:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.procs[0].pid, signal.SIGKILL)
        for proc in self.procs:
            proc.wait()
        for conn in self.conns.values():
            conn.close()

    def close(self) -> None:
        for conn in self.conns.values():
            with contextlib.suppress(OSError):
                conn.send(("stop",))
        for proc in self.procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                break
        self.kill()


class LocalLauncher:
    """Runs cases on warm pools; a pool that fails a case is killed and replaced for the next."""

    def __init__(self, artifacts_root: Path, changes: EnvironmentChanges | None = None) -> None:
        self.artifacts_root, self.changes = artifacts_root, changes
        self.pools: dict[tuple[str, int], WorkerPool] = {}
        self._serial = 0

    def launch(self, case: Case) -> CaseOutcome:
        artifacts = fresh_artifacts(self.artifacts_root, case)
        start = time.perf_counter()
        key = (case.platform, case.world_size)
        try:
            if key not in self.pools:
                if case.platform == "gpu":  # GPU pools share devices 0..N-1: one pool on them at a time
                    for other in [k for k in self.pools if k[0] == "gpu"]:
                        self.pools.pop(other).close()
                self._serial += 1
                log_dir = self.artifacts_root / "_workers" / f"{case.platform}-w{case.world_size}-{self._serial}"
                self.pools[key] = WorkerPool(case.world_size, case.platform, log_dir, self.changes)
            found = self.pools[key].run(case, artifacts)
            return CaseOutcome(
                case,
                found.metrics,
                None,
                time.perf_counter() - start,
                str(artifacts),
                timings=found.timings,
                kept=found.kept,
            )
        except PoolBroken as err:
            broken = self.pools.pop(key, None)
            if broken is not None:
                broken.kill()
            return CaseOutcome(case, {}, str(err), time.perf_counter() - start, str(artifacts))

    def close(self) -> None:
        for pool in self.pools.values():
            pool.close()
        self.pools.clear()
