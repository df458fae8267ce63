"""What a check is: a params schema, the metrics it emits with default tolerances, and a function
that runs inside every worker rank of a case.

Check modules import torch, megatron and modelopt only inside ``run``: the driver imports them to
validate suites and must stay fast.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, PositiveInt, ValidationInfo, create_model, field_validator

from harness.records import DEVICE_MEMORY, INFORMATIONAL, PEAK_MEMORY, Budget, Case, Layout, Tolerance

if TYPE_CHECKING:
    from harness.records import ModelSpec


_NUMBERS = (int, float, int | None, float | None, bool)


class StrictModel(BaseModel):
    """Suite-facing models: unknown keys are errors, and a number written as a string (``tp: "2"``, a quoted YAML
    value) is refused rather than coerced: a suite means what it says."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    @field_validator("*", mode="before")
    @classmethod
    def _no_numbers_as_strings(cls, value: Any, info: ValidationInfo) -> Any:
        field = cls.model_fields.get(info.field_name or "")
        if isinstance(value, str) and field is not None and field.annotation in _NUMBERS:
            kind = "a boolean" if field.annotation is bool else "a number"
            raise ValueError(f"{kind}, not the string {value!r} (quoted in the YAML?)")
        return value


class _LayoutFields(StrictModel):
    def layout(self) -> Layout:
        return Layout(**self.model_dump())


# A layout as suites write it ({tp: 2, pp: 1, sp: true}): records.Layout's own fields, each size at least 1;
# declared once, there, so a new axis is one field of Layout.
LayoutModel = create_model(
    "LayoutModel",
    __base__=_LayoutFields,
    **{f.name: (PositiveInt if f.type in (int, "int") else f.type, f.default) for f in fields(Layout)},
)


@dataclass(frozen=True)
class MetricSpec:
    """A metric a check emits. With a ``budget`` it is an invariant: an absolute bound that holds on
    every machine and in every environment (suites may tighten it). Without one it belongs to its
    environment and is judged only against that environment's baseline, within ``tolerance``."""

    description: str
    tolerance: Tolerance
    budget: Budget | None = None
    # A step-exact golden (a per-step training loss, say): it repeats bit for bit only where the arithmetic
    # is the same, so it is judged only on the baseline's fingerprint; elsewhere what it summarises is.
    fingerprint_bound: bool = False
    # The metric holding this one's 95% interval half-width, relative to it (a timed median): the tolerance is
    # then at least the 95% band of the difference of two such estimates, hypot(measured's, baseline's).
    interval: str | None = None


# Memory varies with the allocator and the machine: recorded for trends, bounded only by a suite's
# budget (a real-model suite states what must fit on its GPUs).
WORKER_METRICS = {
    PEAK_MEMORY: MetricSpec(
        "peak memory of the case's largest rank (MiB): CUDA allocator peak on GPU, resident set on CPU", INFORMATIONAL
    ),
    DEVICE_MEMORY: MetricSpec("GPU memory in use at the case's end, as NVML reports it (MiB; GPU only)", INFORMATIONAL),
}


@dataclass(frozen=True)
class CheckContext:
    """Everything a check's ``run`` gets inside a worker rank."""

    case: Case
    model: ModelSpec
    params: Any  # an instance of the check's ``params`` model
    artifacts: Path  # the case's own folder, shared by its ranks
    # Seconds per repetition of what the check times, filled by ``run`` (the case's benchmark record).
    timings: dict[str, list[float]] = field(default_factory=dict)
    # Outputs to keep beside the baseline when it is recorded, filled by ``run`` (plain JSON); the next run finds
    # them in ``case.reference`` (empty while recording, or where none was kept).
    kept: dict[str, Any] = field(default_factory=dict)


def _single_layout(layout: Layout, params: Any) -> dict[str, Layout]:
    return {"layout": layout}


@dataclass(frozen=True)
class Check:
    name: str
    description: str
    params: type[StrictModel]
    metrics: dict[str, MetricSpec]
    run: Callable[[CheckContext], dict[str, float]]
    # Every layout a case touches, by the suite key that declares it (for validation and markers).
    layouts: Callable[[Layout, Any], dict[str, Layout]] = _single_layout
    # The layout segment of the case id, and the params it already names.
    label: Callable[[Layout, Any], str] = lambda layout, params: layout.token
    label_params: tuple[str, ...] = field(default_factory=tuple)
    # Canonical params for a layout (e.g. a reload layout equal to the layout becomes "same").
    normalize: Callable[[Layout, Any], Any] = lambda layout, params: params
    # Why a case cannot run, judged before any worker starts: (param name, message) pairs.
    case_problems: Callable[[Layout, Any, ModelSpec], list[tuple[str, str]]] = lambda layout, params, model: []
    # The layout a checkpoint saved under the case's layout is reloaded under (another: a reshard; or the same),
    # where the check saves one: the optimization's reshard problems are judged on the pair before start.
    reloads_under: Callable[[Layout, Any], Layout | None] = lambda layout, params: None
    # Why a case (its params, as the case holds them) cannot run on a CPU worker; such cases skip there.
    cpu_blocker: Callable[[dict[str, Any]], str | None] = lambda params: None
    # Shipped subjects a case loads besides its own model (a KD teacher, trained draft heads), from its
    # params and model name: their hashes go into the provenance of the baselines it records.
    subjects: Callable[[dict[str, Any], str], list[str]] = lambda params, model: []
    # Whether ``run`` takes a model of virtual pipeline chunks (layouts with vpp > 1).
    virtual_pipeline: bool = False
    # The metrics that summarise a case, in the generated tables of recorded values (docs/measured/).
    headline: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        # Every check's cases also report what the worker measures around them (harness.launchers.worker).
        object.__setattr__(self, "metrics", {**self.metrics, **WORKER_METRICS})


@dataclass(frozen=True)
class SecondLayout:
    """Hooks for a check parameter that names a second layout the case also runs under (a reload
    layout, a parity layout). ``sentinel`` means "none"; a layout equal to the case's is the sentinel
    too, so both spellings are one case."""

    field: str
    sentinel: str
    separator: str  # between the two layouts in the case id: tp2pp1->tp1pp1

    def other(self, layout: Layout, params: Any) -> Layout | None:
        value = getattr(params, self.field)
        second = None if value == self.sentinel else value.layout()
        return None if second == layout else second

    def layouts(self, layout: Layout, params: Any) -> dict[str, Layout]:
        second = self.other(layout, params)
        return {"layout": layout} | ({self.field: second} if second else {})

    def label(self, layout: Layout, params: Any) -> str:
        second = self.other(layout, params)
        return layout.token if second is None else f"{layout.token}{self.separator}{second.token}"

    def normalize(self, layout: Layout, params: Any) -> Any:
        return params if self.other(layout, params) else params.model_copy(update={self.field: self.sentinel})

    def hooks(self) -> dict[str, Any]:
        """Keyword arguments for ``Check``."""
        return {
            "layouts": self.layouts,
            "label": self.label,
            "label_params": (self.field,),
            "normalize": self.normalize,
        }
