"""The suite file format, as pydantic models (extra keys forbidden everywhere)."""

from __future__ import annotations

from typing import Any

from packaging.specifiers import InvalidSpecifier, SpecifierSet
from pydantic import (
    ConfigDict,
    Field,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    field_validator,
    model_validator,
)

from harness.checks.base import LayoutModel, StrictModel
from harness.records import Budget, Direction, Dtype, Platform, Tolerance


class ToleranceModel(StrictModel):
    abs: NonNegativeFloat = 0.0
    rel: NonNegativeFloat = 0.0
    direction: Direction = Direction.BOTH
    refresh_rel: NonNegativeFloat = 0.0  # directional only: improving by more than this share asks for a re-record

    def tolerance(self) -> Tolerance:
        return Tolerance(self.abs, self.rel, self.direction, self.refresh_rel)


class BudgetModel(StrictModel):
    min: float | None = None
    max: float | None = None

    def budget(self) -> Budget:
        return Budget(self.min, self.max)


class MatrixModel(StrictModel):
    # Axes beyond these four are check parameters, validated against the check's params model.
    model_config = ConfigDict(extra="allow", frozen=True)

    model: list[str] = Field(min_length=1)
    layout: list[LayoutModel] = Field(default_factory=lambda: [LayoutModel()], min_length=1)
    optimization: list[str] = Field(default_factory=lambda: ["none"], min_length=1)
    dtype: list[Dtype] = Field(default_factory=lambda: ["fp32"], min_length=1)  # parameters and activations


class ModelSourceModel(StrictModel):
    """A model named by where its weights are (harness.models.sources); exactly one of hf / torch_dist."""

    hf: str | None = None  # a Hugging Face checkpoint directory ($VARS and ~ expanded)
    torch_dist: str | None = None  # a megatron torch_dist checkpoint directory ...
    like: str | None = None  # ... of this zoo architecture

    @model_validator(mode="after")
    def _one_source(self) -> ModelSourceModel:
        if (self.hf is None) == (self.torch_dist is None):
            raise ValueError("give exactly one of hf: <dir> or torch_dist: <dir>")
        if self.torch_dist is not None and self.like is None:
            raise ValueError("torch_dist needs like: <zoo model> (the checkpoint's architecture)")
        if self.hf is not None and self.like is not None:
            raise ValueError("like: applies to torch_dist only (hf reads config.json)")
        return self


class OverrideModel(StrictModel):
    """For the cases matching ``when``: other tolerances and budgets, other values of check params that
    are not matrix axes (how long a case times, say: a case id never depends on an override), and the
    ``slow`` marker."""

    when: dict[str, Any] = Field(min_length=1)
    tolerances: dict[str, ToleranceModel] = Field(default_factory=dict)
    budgets: dict[str, BudgetModel] = Field(default_factory=dict)
    params: dict[str, Any] = Field(default_factory=dict)
    slow: bool = False  # marks these cases `slow`: `nox -s tests` (CI) leaves them to the main job and the nightly run


class KnownDefectModel(StrictModel):
    """Cases matching ``when`` (under the installed library ``versions``, when given) reproduce an
    upstream defect, recognised by ``symptom`` (metric bounds): symptom shown -> xfail; symptom gone ->
    xpass ("fixed?"), which fails the run so the entry is removed. The symptom's metrics and those
    in ``affects`` (the other numbers the defect moves) are excused against their baselines; a failure
    of any other metric stays a failure."""

    id: str = Field(pattern=r"^[a-z0-9][a-z0-9_.-]*$")
    when: dict[str, Any] = Field(min_length=1)
    defect: str = Field(min_length=10)
    symptom: dict[str, BudgetModel] = Field(min_length=1)
    affects: list[str] = Field(default_factory=list)
    upstream: str = ""  # an issue, PR or commit to watch
    versions: dict[str, str] = Field(
        default_factory=dict
    )  # distribution -> PEP 440 specifier, e.g. {megatron-core: "<0.20"}

    @field_validator("versions")
    @classmethod
    def _specifiers(cls, value: dict[str, str]) -> dict[str, str]:
        for name, spec in value.items():
            try:
                SpecifierSet(spec)
            except InvalidSpecifier:
                raise ValueError(f"{name}: {spec!r} is not a version specifier like '>=0.16,<0.20'") from None
        return value


class SuiteModel(StrictModel):
    suite: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]*$")
    check: str
    description: str = ""
    markers: list[str] = Field(default_factory=list)
    platforms: list[Platform] = Field(default_factory=lambda: ["cpu"], min_length=1)
    slow: bool = False
    timeout_s: PositiveFloat = 600.0
    seed: NonNegativeInt = 1234
    params: dict[str, Any] = Field(default_factory=dict)
    models: dict[str, ModelSourceModel] = Field(default_factory=dict)
    matrix: MatrixModel
    exclude: list[dict[str, Any]] = Field(default_factory=list)
    tolerances: dict[str, ToleranceModel] = Field(default_factory=dict)
    budgets: dict[str, BudgetModel] = Field(default_factory=dict)
    overrides: list[OverrideModel] = Field(default_factory=list)
    known_defects: list[KnownDefectModel] = Field(default_factory=list)
