"""Step 7: tell people. Terminal lines per case, a summary, and ``results.json`` rewritten
atomically after every case so an interrupted run keeps what it finished."""

from __future__ import annotations

import dataclasses
import re
from collections import Counter
from pathlib import Path
from typing import Any

from harness.atomic import write_json_atomic
from harness.records import CaseResult, Verdict


def result_record(result: CaseResult) -> dict[str, Any]:
    case = result.case
    return {
        "id": case.id,
        "platform": case.platform,
        "verdict": result.verdict.value,
        "duration_s": round(result.outcome.duration_s, 3),
        "artifacts": result.outcome.artifacts,
        "error": result.outcome.error,
        "skipped": result.outcome.skipped,
        "timings": {name: list(values) for name, values in result.outcome.timings.items()},
        "metrics": [
            {**dataclasses.asdict(m), "tolerance": m.tolerance.to_json(), "verdict": m.verdict.value}
            for m in result.metrics
        ],
    }


def write_results(path: Path, results: list[CaseResult], provenance: dict[str, Any]) -> None:
    write_json_atomic(path, {"provenance": provenance, "cases": [result_record(r) for r in results]})


def summary(results: list[CaseResult]) -> str:
    counts = Counter(r.verdict for r in results)
    parts = [f"{counts[v]} {v.value}" for v in Verdict if counts[v]]
    line = f"{len(results)} cases: " + (", ".join(parts) if parts else "none selected")
    fixed = [r.case.key for r in results if r.verdict is Verdict.XPASS]
    if fixed:
        line += f"\nFIXED? {len(fixed)} known defect(s) no longer show their symptom: {', '.join(fixed)}"
    short = [r.case for r in results if r.case.platform == "gpu" and (r.outcome.skipped or "").startswith("needs ")]
    if short:
        layouts = sorted({m for case in short for m in case.markers if re.fullmatch(r"(tp|pp|ep|cp|vpp)[0-9]+", m)})
        line += (
            f"\nUNTESTED: {len(short)} GPU case(s) need more GPUs than this machine has: no multi-GPU NCCL collective "
            f"ran, nor the layouts {', '.join(layouts) or '(none named)'}"
        )
    return line
