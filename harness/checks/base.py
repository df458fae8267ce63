"""What a check is: a params schema, the metrics it emits with default tolerances, and a function
that runs inside every worker rank of a case.

Check modules import torch, megatron and modelopt only inside ``run``: the driver imports them to
validate suites and must stay fast.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, PositiveInt

from harness.records import Case, Layout, Tolerance

if TYPE_CHECKING:
    from harness.models.zoo import ModelSpec


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class LayoutModel(StrictModel):
    tp: PositiveInt = 1
    pp: PositiveInt = 1

    def layout(self) -> Layout:
        return Layout(self.tp, self.pp)


@dataclass(frozen=True)
class MetricSpec:
    description: str
    tolerance: Tolerance


@dataclass(frozen=True)
class CheckContext:
    """Everything a check's ``run`` gets inside a worker rank."""

    case: Case
    model: ModelSpec
    params: Any  # an instance of the check's ``params`` model
    artifacts: Path  # the case's own folder, shared by its ranks


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
