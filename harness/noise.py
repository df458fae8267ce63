"""How much each metric moves by itself, and the tolerances derived from it.

``harness noise`` reruns cases under the legitimate variations this machine can produce (the pinned
environment again, the kernels an unpinned host would pick, another thread split, ...) and keeps every
metric's samples beside its baseline, in ``baselines/<environment>/<suite>.noise.json``. The comparison
step derives each metric's band from that record with one rule:

    band = MULTIPLIER x max |sample - reference|

over the repeats of the pinned environment when the run has the baseline's fingerprint (the same
processor, pins and torch: CPU results repeat bit for bit there, so the band of a deterministic metric is
0), and over every variation otherwise. A tolerance is then ``max(declared, band)``: never tighter than
the metric's measured noise. MULTIPLIER follows Megatron-LM's golden-value statistics
(``compute_golden_statistics.py`` recommends 1.5-3 x the largest observed deviation): the variations
here are a sample of the machines a baseline meets, not all of them.

Importable without torch: the driver reads and writes these records.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.atomic import write_json_atomic
from harness.environment import THREADS_PER_WORLD, cpu_flags, threads_per_rank

FORMAT = 1
MULTIPLIER = 2.0
REFERENCE = "reference"  # the pinned environment, the run the others are measured against
REPEAT = "repeat"  # the pinned environment again: run-to-run noise (timers; GPU nondeterminism)
RULE = (
    f"band = {MULTIPLIER:g} x max |sample - reference|: over the pinned repeats on the baseline's fingerprint, "
    "over every variation elsewhere; tolerance = max(declared, band)"
)


class NoiseError(ValueError):
    """A noise record that cannot be read; the message names the file."""


@dataclass(frozen=True)
class Variation:
    """One legitimate way the same case computes other low bits: variables set (or removed, None) in
    every rank's environment on top of the pinned numerics."""

    name: str
    why: str
    changes: Callable[[int], dict[str, str | None]]  # world size -> the variables it sets or removes
    needs: frozenset[str] = frozenset()  # CPU flags the host must have

    def environment(self, world_size: int) -> dict[str, str | None]:
        return self.changes(world_size)

    def unavailable(self, flags: set[str] | None = None) -> str | None:
        missing = self.needs - (cpu_flags() if flags is None else flags)
        return f"this CPU lacks {', '.join(sorted(missing))}" if missing else None


def _other_threads(world_size: int) -> dict[str, str | None]:
    """One thread where the pins give a rank more. Ranks pinned to one thread are left alone: the other split
    (two per rank) would oversubscribe the cores the pins are sized for, and time out rather than vary."""
    if threads_per_rank(world_size) == 1:
        return {}
    return {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


VARIATIONS: dict[str, Variation] = {
    v.name: v
    for v in (
        Variation(
            REPEAT,
            "the pinned environment again (run-to-run noise: timers, nondeterministic kernels)",
            lambda world: {},
        ),
        Variation(
            "unpinned",
            "no ISA or MKL pins: the kernels an unpinned host of this model picks (AVX-512, AMX, MKL's auto branch)",
            lambda world: {"ATEN_CPU_CAPABILITY": None, "MKL_CBWR": None, "ONEDNN_MAX_CPU_ISA": None},
        ),
        Variation(
            "threads",
            f"one thread per rank where {THREADS_PER_WORLD} per world are pinned: reductions split differently",
            _other_threads,
        ),
        Variation(
            "isa-avx512",
            "ATen's AVX-512 kernels (softmax, norms, reductions) instead of the pinned AVX2 ones",
            lambda world: {"ATEN_CPU_CAPABILITY": "avx512"},
            frozenset({"avx512f", "avx512bw"}),
        ),
        Variation(
            "onednn-native",
            "oneDNN at the host's widest ISA (AVX-512, bf16 and AMX kernels where present)",
            lambda world: {"ONEDNN_MAX_CPU_ISA": None},
        ),
        Variation(
            "mkl-auto",
            "MKL's automatic code path per processor instead of its vendor-neutral one",
            lambda world: {"MKL_CBWR": None},
        ),
    )
}
DEFAULT_VARIATIONS = (REPEAT, "unpinned", "threads")


def _finite(value: float) -> float:
    return value if math.isfinite(value) else math.inf


@dataclass(frozen=True)
class MetricNoise:
    """One metric's samples by label: ``reference``, ``repeat``, ``repeat-2``, ``unpinned``, ..."""

    samples: dict[str, float]

    def deviation(self, across_machines: bool) -> float:
        """The largest distance of a sample from the reference: of the pinned repeats only, or of every
        variation (``across_machines``). A NaN sample is an infinite deviation."""
        reference = self.samples.get(REFERENCE, math.nan)
        chosen = [
            v
            for label, v in self.samples.items()
            if label != REFERENCE and (across_machines or label.startswith(REPEAT))
        ]
        return max((_finite(abs(v - reference)) for v in chosen), default=0.0)

    def band(self, across_machines: bool) -> float:
        return MULTIPLIER * self.deviation(across_machines)

    def summary(self) -> dict[str, float]:
        values = [v for v in self.samples.values() if math.isfinite(v)]
        if not values:
            return {"n": 0}
        return {
            "n": len(values),
            "min": min(values),
            "max": max(values),
            "mean": statistics.fmean(values),
            "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "deviation_repeat": self.deviation(False),
            "deviation_all": self.deviation(True),
        }


@dataclass(frozen=True)
class CaseNoise:
    """A case's noise record: every metric's samples, the variations run, and what each failed with."""

    metrics: dict[str, MetricNoise]
    variations: tuple[str, ...]
    errors: dict[str, str] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_samples(
        cls, runs: Mapping[str, Mapping[str, float]], errors: Mapping[str, str], provenance: dict[str, Any]
    ) -> CaseNoise:
        """``runs``: label -> that run's metrics (the ``reference`` run among them)."""
        names = sorted({name for metrics in runs.values() for name in metrics})
        metrics = {
            name: MetricNoise({label: float(m.get(name, math.nan)) for label, m in runs.items()}) for name in names
        }
        return cls(metrics, tuple(runs), dict(errors), provenance)

    def extended(self, newer: CaseNoise) -> CaseNoise:
        """This record with ``newer``'s samples added (``newer`` wins where both ran a label): a study can grow
        one variation at a time, all against the same reference."""
        names = sorted(set(self.metrics) | set(newer.metrics))
        empty = MetricNoise({})
        metrics = {
            name: MetricNoise(self.metrics.get(name, empty).samples | newer.metrics.get(name, empty).samples)
            for name in names
        }
        variations = tuple(dict.fromkeys((*self.variations, *newer.variations)))
        earlier = [*self.provenance.get("earlier", []), {k: self.provenance.get(k) for k in ("date", "commit")}]
        return CaseNoise(metrics, variations, self.errors | newer.errors, newer.provenance | {"earlier": earlier})

    def to_json(self) -> dict[str, Any]:
        return {
            "variations": list(self.variations),
            "errors": self.errors,
            "provenance": self.provenance,
            "metrics": {name: {"samples": m.samples, **m.summary()} for name, m in self.metrics.items()},
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> CaseNoise:
        metrics = {
            name: MetricNoise({k: float(v) for k, v in entry["samples"].items()})
            for name, entry in data["metrics"].items()
        }
        return cls(metrics, tuple(data["variations"]), dict(data.get("errors", {})), dict(data.get("provenance", {})))


def noise_path(baseline_file: Path) -> Path:
    """``baselines/<env>/<suite>.json`` -> ``baselines/<env>/<suite>.noise.json``."""
    return baseline_file.with_name(f"{baseline_file.stem}.noise.json")


def read_noise_file(path: Path) -> dict[str, CaseNoise]:
    """Every case's record in ``path`` (none when the file does not exist)."""
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if data.get("format") != FORMAT:
            raise NoiseError(f"{path}:1: noise format {data.get('format')!r}, this harness reads {FORMAT}")
        return {case_id: CaseNoise.from_json(entry) for case_id, entry in data["cases"].items()}
    except json.JSONDecodeError as err:
        raise NoiseError(
            f"{path}:{err.lineno}: not valid JSON ({err.msg}); restore it from git or rerun `harness noise`"
        ) from None
    except (OSError, UnicodeDecodeError) as err:
        raise NoiseError(f"{path}:1: cannot read: {getattr(err, 'strerror', None) or err}") from None
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        raise NoiseError(f"{path}:1: not a noise record ({err})") from None


def write_case_noise(path: Path, suite: str, environment: str, case_id: str, record: CaseNoise) -> None:
    """Replace one case's record in ``path``, atomically (the other cases' records stay)."""
    cases = {case_id: entry.to_json() for case_id, entry in read_noise_file(path).items()}
    cases[case_id] = record.to_json()
    write_json_atomic(
        path,
        {
            "format": FORMAT,
            "suite": suite,
            "environment": environment,
            "rule": RULE,
            "cases": dict(sorted(cases.items())),
        },
    )


def leave_one_out(records: list[CaseNoise], skip: Callable[[str], bool]) -> dict[str, tuple[int, int]]:
    """How well the band rule generalises: for each variation, the values it moved (metrics ``skip`` does not
    leave out) and how many of them the band the *other* variations give (``MULTIPLIER`` x their largest deviation)
    covers. A variation the others cover stands for a machine the study did not sample."""
    found: dict[str, list[int]] = {}
    for record in records:
        for name, metric in record.metrics.items():
            reference = metric.samples.get(REFERENCE, math.nan)
            if skip(name) or not math.isfinite(reference):
                continue
            moved = {
                label: abs(value - reference)
                for label, value in metric.samples.items()
                if label != REFERENCE and not label.startswith(REPEAT) and math.isfinite(value)
            }
            for label, deviation in moved.items():
                if deviation == 0:
                    continue
                band = MULTIPLIER * max((d for other, d in moved.items() if other != label), default=0.0)
                counts = found.setdefault(label, [0, 0])
                counts[0] += 1
                counts[1] += deviation <= band
    return {label: (moved, covered) for label, (moved, covered) in sorted(found.items())}
