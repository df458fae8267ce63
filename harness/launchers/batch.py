"""Driver side of batch jobs: the launchers that hand cases to another system (a Slurm cluster, a
container engine) instead of warm local pools.

A batch is the case asked for plus the planned cases after it in the same (platform, world size)
group, so one job (one queue wait, one import of megatron-core and modelopt per rank) runs many
cases. Replies come back as files in the batch's folder. A case that fails, hangs or loses its job
ends that job (cancelled, with its id, state and log tail in the case's error); the next case gets a
fresh job holding the rest of the group.
"""

from __future__ import annotations

import json
import pickle
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from harness.launchers.common import artifact_dir_name, fresh_artifacts, startup_timeout_s, tail
from harness.launchers.protocol import BATCH_FILE, Batch, Measured, RankReply, Task, merged, reply_file, started_marker
from harness.records import Case, CaseOutcome

POLL_S = 0.5
ERROR_GRACE_S = 10.0  # after one rank's error, how long the others get to report theirs
EXIT_GRACE_S = 60.0  # after a job's last case, how long it gets to exit by itself


class LauncherError(RuntimeError):
    """A launcher cannot work here (tool missing, image unknown): said before anything is submitted."""


@dataclass(frozen=True)
class JobState:
    phase: str  # "pending" | "running" | "ended"
    detail: str  # the system's own words: "RUNNING", "FAILED exit 1:0", "exited with code 137"


class Job(Protocol):
    id: str
    log: Path

    def state(self) -> JobState: ...

    def cancel(self) -> None: ...


class Backend(Protocol):
    name: str
    success: frozenset[str]  # the JobState details of a job that ended well

    def submit(self, folder: Path, batch: Batch) -> Job: ...


@dataclass
class _Running:
    job: Job
    folder: Path
    keys: list[str]  # case keys in the batch's order
    done: int = 0  # cases whose replies are in
    ready_since: float = field(default_factory=time.monotonic)  # when the current case could start


def _reply(path: Path) -> RankReply | None:
    try:
        return RankReply(**json.loads(path.read_text()))
    except FileNotFoundError:
        return None


class BatchLauncher:
    """``launch(case)`` for a backend; ``upcoming`` is the plan's runnable cases, in order."""

    def __init__(self, backend: Backend, artifacts_root: Path, upcoming: list[Case]) -> None:
        self.backend, self.artifacts_root = backend, artifacts_root.resolve()
        self.upcoming = list(upcoming)
        self.launched: set[str] = set()
        self.running: _Running | None = None
        self._serial = 0

    def _submit(self, case: Case) -> _Running:
        group = (case.platform, case.world_size)
        later = [
            c
            for c in self.upcoming
            if (c.platform, c.world_size) == group and c.key not in self.launched and c.key != case.key
        ]
        cases = [case, *later]
        self._serial += 1
        folder = (
            self.artifacts_root / "_jobs" / f"{self.backend.name}-{case.platform}-w{case.world_size}-{self._serial}"
        )
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        tasks = tuple(Task(each, str(fresh_artifacts(self.artifacts_root, each))) for each in cases)
        batch = Batch(case.platform, case.world_size, tasks)
        (folder / BATCH_FILE).write_bytes(pickle.dumps(batch))
        job = self.backend.submit(folder, batch)
        print(
            f"[harness] {self.backend.name} job {job.id}: {len(cases)} case(s), world size {case.world_size}, folder "
            f"{folder}",
            flush=True,
        )
        return _Running(job, folder, [c.key for c in cases])

    def _cancel(self) -> _Running | None:
        """Detach the running job and cancel it (its remaining cases go to a new job, if any)."""
        running, self.running = self.running, None
        if running is not None:
            running.job.cancel()
        return running

    def _end(self, why: str) -> str:
        """Cancel the running job; the error text for the case it was on."""
        running = self._cancel()
        assert running is not None
        state = running.job.state()
        return (
            f"{why}\n{self.backend.name} job {running.job.id} ({state.detail}); folder {running.folder}\n"
            f"--- job log ({running.job.log}), last lines:\n{tail(running.job.log)}"
        )

    def _await(self, case: Case) -> Measured | str:
        """What the case's ranks measured, or the error text after its job was ended."""
        running = self.running
        assert running is not None
        index, world = running.done, case.world_size
        startup_s = startup_timeout_s(case.platform)
        deadline: float | None = None
        first_error_at: float | None = None
        while True:
            replies = [
                r for r in (_reply(running.folder / reply_file(index, rank)) for rank in range(world)) if r is not None
            ]
            errors = [r for r in replies if r.error]
            if len(replies) == world and not errors:
                running.done += 1
                running.ready_since = time.monotonic()
                return merged(replies)
            if errors:
                first_error_at = first_error_at or time.monotonic()
                if len(replies) == world or time.monotonic() > first_error_at + ERROR_GRACE_S:
                    return self._end(
                        "\n".join(f"rank {r.rank} raised:\n{r.error}" for r in sorted(errors, key=lambda r: r.rank))
                    )
            state = running.job.state()
            if state.phase == "ended" and not errors:
                return self._end(f"the job ended before {case.id} finished")
            started = any((running.folder / started_marker(index, rank)).exists() for rank in range(world))
            if started and deadline is None:
                deadline = time.monotonic() + case.timeout_s
            if deadline is not None and time.monotonic() > deadline:
                return self._end(f"timed out after {case.timeout_s:g} s; job cancelled")
            if state.phase == "pending":
                running.ready_since = time.monotonic()  # queue time does not count
            elif not started and time.monotonic() > running.ready_since + startup_s:
                return self._end(f"the job's ranks did not start {case.id} within {startup_s:.0f} s")
            time.sleep(POLL_S)

    def _finish(self) -> None:
        """Let a job whose cases are all in end by itself, and say so when it then fails; cancel it otherwise."""
        running = self.running
        if running is None:
            return
        if running.done < len(running.keys):  # the plan changed under it, or the run stops
            self._cancel()
            return
        self.running = None
        deadline = time.monotonic() + EXIT_GRACE_S
        while (state := running.job.state()).phase != "ended" and time.monotonic() < deadline:
            time.sleep(POLL_S)
        if state.phase != "ended":
            running.job.cancel()
            print(
                f"[harness] {self.backend.name} job {running.job.id} did not exit {EXIT_GRACE_S:.0f} s after its last "
                "case; cancelled",
                flush=True,
            )
        elif state.detail not in self.backend.success:
            print(
                f"[harness] {self.backend.name} job {running.job.id} ended {state.detail} after its cases; log: "
                f"{running.job.log}",
                flush=True,
            )

    def launch(self, case: Case) -> CaseOutcome:
        start = time.perf_counter()
        running = self.running
        if running is not None and (running.done >= len(running.keys) or running.keys[running.done] != case.key):
            self._finish()
        self.launched.add(case.key)
        artifacts = str(self.artifacts_root / artifact_dir_name(case))
        try:
            if self.running is None:
                self.running = self._submit(case)
            found = self._await(case)
        except LauncherError as err:  # this case cannot be submitted (its shape, sbatch refused it)
            return CaseOutcome(case, {}, str(err), time.perf_counter() - start, artifacts)
        except BaseException:  # Ctrl-C included: no job outlives the driver
            self._cancel()
            raise
        if isinstance(found, str):
            return CaseOutcome(case, {}, found, time.perf_counter() - start, artifacts)
        return CaseOutcome(
            case, found.metrics, None, time.perf_counter() - start, artifacts, timings=found.timings, kept=found.kept
        )

    def close(self) -> None:
        self._finish()
