"""The suite file format, as pydantic models (extra keys forbidden everywhere)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import ConfigDict, Field, NonNegativeFloat, NonNegativeInt, PositiveFloat

from harness.checks.base import LayoutModel, StrictModel
from harness.records import Budget, Direction, Tolerance


class ToleranceModel(StrictModel):
    abs: NonNegativeFloat = 0.0
    rel: NonNegativeFloat = 0.0
    direction: Direction = Direction.BOTH

    def tolerance(self) -> Tolerance:
        return Tolerance(self.abs, self.rel, self.direction)


class BudgetModel(StrictModel):
    min: float | None = None
    max: float | None = None

    def budget(self) -> Budget:
        return Budget(self.min, self.max)


class MatrixModel(StrictModel):
    # Axes beyond these three are check parameters, validated against the check's params model.
    model_config = ConfigDict(extra="allow", frozen=True)

    model: list[str] = Field(min_length=1)
    layout: list[LayoutModel] = Field(default_factory=lambda: [LayoutModel()], min_length=1)
    optimization: list[str] = Field(default_factory=lambda: ["none"], min_length=1)


class OverrideModel(StrictModel):
    when: dict[str, Any] = Field(min_length=1)
    tolerances: dict[str, ToleranceModel] = Field(default_factory=dict)
    budgets: dict[str, BudgetModel] = Field(default_factory=dict)


class SuiteModel(StrictModel):
    suite: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]*$")
    check: str
    description: str = ""
    markers: list[str] = Field(default_factory=list)
    platforms: list[Literal["cpu", "gpu"]] = Field(default_factory=lambda: ["cpu"], min_length=1)
    slow: bool = False
    timeout_s: PositiveFloat = 600.0
    seed: NonNegativeInt = 1234
    params: dict[str, Any] = Field(default_factory=dict)
    matrix: MatrixModel
    exclude: list[dict[str, Any]] = Field(default_factory=list)
    tolerances: dict[str, ToleranceModel] = Field(default_factory=dict)
    budgets: dict[str, BudgetModel] = Field(default_factory=dict)
    overrides: list[OverrideModel] = Field(default_factory=list)
