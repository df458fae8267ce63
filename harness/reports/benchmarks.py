"""Speed results in pytest-benchmark's format, so the tools people already use read them:
``pytest-benchmark compare`` on two nightly runs, its table under pytest. A case's timed paths
(speculative decoding: ``autoregressive`` and ``speculative``) are one benchmark each, grouped by
case, with every repetition's seconds as its data and the case's metrics (speedup, interval, pairs, ...)
and verdict as ``extra_info``. pytest-benchmark's own ``Stats`` computes the statistics.

Measuring is the check's job; this module only re-expresses finished results (like the reports).
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.atomic import write_json_atomic
from harness.records import CaseResult

BENCHMARKS = "benchmarks.json"  # beside results.json in every run's artifacts that timed a case
SAVE_NAME = re.compile(r"^(\d{4})_.*\.json$")


@dataclass(frozen=True)
class TimedPath:
    """The attributes pytest-benchmark's ``Metadata`` reads off the fixture that timed a benchmark."""

    name: str
    fullname: str
    group: str
    param: str
    params: dict[str, str]
    extra_info: dict[str, Any] = field(default_factory=dict)
    cprofile_stats: None = None
    has_error: bool = False


def timed_paths(result: CaseResult) -> list[Any]:
    """One pytest-benchmark ``Metadata`` per timed path of a case (none for a case that timed nothing)."""
    from pytest_benchmark.stats import Metadata

    case = result.case
    out = []
    for path, seconds in result.outcome.timings.items():
        timed = TimedPath(
            name=f"{case.id}[{path}]",
            fullname=f"{case.key}::{path}",
            group=case.key,
            param=path,
            params={"path": path},
            extra_info={
                **result.outcome.metrics,
                "verdict": result.verdict.value,
                "artifacts": result.outcome.artifacts,
            },
        )
        bench = Metadata(timed, iterations=1, options={"timer": "perf_counter", "interleaved": True})
        for each in seconds:
            bench.update(each)
        out.append(bench)
    return out


def benchmark_document(results: list[CaseResult], provenance: dict[str, Any]) -> dict[str, Any]:
    """pytest-benchmark's JSON document: its machine and commit info (plus this run's provenance), and
    one benchmark per timed path."""
    from pytest_benchmark import __version__
    from pytest_benchmark.plugin import pytest_benchmark_generate_machine_info
    from pytest_benchmark.utils import get_commit_info

    return {
        "machine_info": {**pytest_benchmark_generate_machine_info(), "posttrain_harness": provenance},
        "commit_info": get_commit_info("posttrain-harness"),
        "benchmarks": [bench.as_dict(include_data=True) for result in results for bench in timed_paths(result)],
        "datetime": dt.datetime.now(dt.UTC).isoformat(),
        "version": __version__,
    }


def save_to_storage(storage: Path, document: dict[str, Any]) -> Path:
    """Saved the way ``pytest --benchmark-autosave`` saves: ``<storage>/<machine id>/NNNN_<commit>_<time>.json``,
    numbered after the files already there, so ``pytest-benchmark compare --storage <storage>`` lists the runs."""
    from pytest_benchmark.utils import get_machine_id

    folder = storage / get_machine_id()
    taken = (
        [int(m.group(1)) for f in folder.glob("*.json") if (m := SAVE_NAME.match(f.name))] if folder.is_dir() else []
    )
    commit = document["commit_info"]
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%d_%H%M%S")
    tag = f"{commit['id'][:12]}{'_uncommitted-changes' if commit.get('dirty') else ''}_{stamp}"
    path = folder / f"{max(taken, default=0) + 1:04d}_{tag}.json"
    write_json_atomic(path, document)
    return path
