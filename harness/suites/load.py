"""Step 1: read suite files and validate them against the schema, the check, the zoo and the
optimization registry. Every problem is reported as ``file:line: key: message``."""

from __future__ import annotations

import copy
import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from pydantic import TypeAdapter, ValidationError

from harness.checks import get_check
from harness.checks.base import Check, LayoutModel
from harness.models.sources import ModelSourceError, hf_spec, torch_dist_spec
from harness.models.zoo import ZOO
from harness.optimizations import get_optimization
from harness.records import Dtype, ModelSpec, Platform, metric_family
from harness.suites.schema import SuiteModel
from harness.suites.yaml_lines import LineMap, Path_, SuiteError, load_yaml_with_lines

CORE_AXES = ("model", "layout", "optimization", "dtype")
MATCH_KEYS = (*CORE_AXES, "platform")  # what an exclude/when entry may name besides check params


@dataclass(frozen=True)
class Suite:
    path: str
    declared: SuiteModel  # the file as validated
    check: Check
    lines: LineMap
    axes: dict[str, list[Any]]  # every matrix axis with its validated values, in declaration order
    models: dict[str, ModelSpec]  # the zoo and the suite's own ``models:``
    problems: tuple[str, ...] = ()  # found while loading; reported with the expansion's own

    def canonical(self, axis: str, value: Any) -> Any:
        """A comparable form of an axis value (for exclude and overrides)."""
        adapter = _adapter(self.declared.check, axis)
        return adapter.dump_python(adapter.validate_python(value), mode="json")


@functools.cache
def _adapter(check_ref: str, axis: str) -> TypeAdapter:
    """Built once per (check as the suite names it, axis): building adapters is slow."""
    return TypeAdapter(axis_type(get_check(check_ref), axis))


def axis_type(check: Check, axis: str) -> Any:
    core = {"model": str, "layout": LayoutModel, "optimization": str, "dtype": Dtype, "platform": Platform}
    if axis in core:
        return core[axis]
    field = check.params.model_fields[axis]  # its constraints (PositiveInt's > 0) live in the metadata
    return Annotated[(field.annotation, *field.metadata)] if field.metadata else field.annotation


def _errors(err: ValidationError, lines: LineMap, base: Path_ = ()) -> list[str]:
    return [lines.problem((*base, *e["loc"]), e["msg"]) for e in err.errors()]


def _validate_values(check_ref: str, lines: LineMap, entries: dict[str, Any], base: Path_, problems: list[str]) -> None:
    """Keys of an exclude/when entry must be axes, the platform or check params; values must be of their type."""
    check = get_check(check_ref)
    for key, value in entries.items():
        if key not in MATCH_KEYS and key not in check.params.model_fields:
            problems.append(
                lines.problem((*base, key), f"unknown key; keys are {', '.join(MATCH_KEYS)} or params of {check.name}")
            )
            continue
        _validate_value(check_ref, lines, key, value, (*base, key), problems)


def _validate_value(check_ref: str, lines: LineMap, key: str, value: Any, where: Path_, problems: list[str]) -> None:
    try:
        _adapter(check_ref, key).validate_python(value)
    except ValidationError as err:
        problems.extend(_errors(err, lines, where))


def _unknown_metrics(check: Check, names: dict[str, Any], base: Path_, lines: LineMap) -> list[str]:
    return [
        lines.problem((*base, name), f"unknown metric; {check.name} emits {', '.join(check.metrics)}")
        for name in names
        if metric_family(name) not in check.metrics
    ]


def _fixed_params(spec: SuiteModel, check: Check, lines: LineMap, params: dict[str, Any], base: Path_) -> list[str]:
    """Params set outside the matrix (suite-wide or by an override) must be the check's and not axes."""
    problems: list[str] = []
    fields = check.params.model_fields
    for key, value in params.items():
        if key not in fields:
            problems.append(
                lines.problem((*base, key), f"unknown key; {check.name} takes {', '.join(fields) or 'no params'}")
            )
        elif key in (spec.matrix.model_extra or {}):
            problems.append(lines.problem((*base, key), "also a matrix axis; declare it in one place"))
        else:
            _validate_value(spec.check, lines, key, value, (*base, key), problems)
    return problems


def _declared_models(spec: SuiteModel, lines: LineMap, problems: list[str]) -> dict[str, ModelSpec]:
    models = dict(ZOO)
    for name, source in spec.models.items():
        where = ("models", name)
        if name in ZOO:
            problems.append(lines.problem(where, f"{name!r} is a zoo model; pick another name"))
        elif source.like is not None and source.like not in ZOO:
            problems.append(
                lines.problem((*where, "like"), f"unknown zoo model {source.like!r}; known: {', '.join(ZOO)}")
            )
        else:
            try:
                models[name] = (
                    hf_spec(name, source.hf)
                    if source.hf is not None
                    else torch_dist_spec(name, source.torch_dist, source.like)
                )
            except (ModelSourceError, KeyError, ValueError, OSError) as err:
                problems.append(lines.problem(where, f"cannot read the checkpoint: {err}"))
    return models


def _check_semantics(spec: SuiteModel, check: Check, lines: LineMap, models: dict[str, ModelSpec]) -> list[str]:
    problems: list[str] = []
    for i, model in enumerate(spec.matrix.model):
        if model not in models and model not in spec.models:  # a declared model that failed is already reported
            problems.append(
                lines.problem(("matrix", "model", i), f"unknown model {model!r}; known: {', '.join(models)}")
            )
    for i, opt in enumerate(spec.matrix.optimization):
        try:
            get_optimization(opt)
        except KeyError as err:
            problems.append(lines.problem(("matrix", "optimization", i), str(err.args[0])))
    fields = check.params.model_fields
    for axis, values in (spec.matrix.model_extra or {}).items():
        if axis not in fields:
            problems.append(
                lines.problem(("matrix", axis), f"unknown key; {check.name} takes {', '.join(fields) or 'no params'}")
            )
        elif not isinstance(values, list) or not values:
            problems.append(lines.problem(("matrix", axis), "a matrix axis must be a non-empty list"))
        else:
            for i, value in enumerate(values):
                _validate_value(spec.check, lines, axis, value, ("matrix", axis, i), problems)
    problems.extend(_fixed_params(spec, check, lines, spec.params, ("params",)))
    problems.extend(_unknown_metrics(check, spec.tolerances, ("tolerances",), lines))
    problems.extend(_unknown_metrics(check, spec.budgets, ("budgets",), lines))
    for i, entry in enumerate(spec.exclude):
        _validate_values(spec.check, lines, entry, ("exclude", i), problems)
    for i, known in enumerate(spec.known_defects):
        _validate_values(spec.check, lines, known.when, ("known_defects", i, "when"), problems)
        problems.extend(_unknown_metrics(check, known.symptom, ("known_defects", i, "symptom"), lines))
        problems.extend(
            _unknown_metrics(check, {name: None for name in known.affects}, ("known_defects", i, "affects"), lines)
        )
    for i, override in enumerate(spec.overrides):
        _validate_values(spec.check, lines, override.when, ("overrides", i, "when"), problems)
        problems.extend(_unknown_metrics(check, override.tolerances, ("overrides", i, "tolerances"), lines))
        problems.extend(_unknown_metrics(check, override.budgets, ("overrides", i, "budgets"), lines))
        problems.extend(_fixed_params(spec, check, lines, override.params, ("overrides", i, "params")))
    return problems


def _schema_problems(err: ValidationError, lines: LineMap) -> list[str]:
    out = []
    for e in err.errors():
        if e["type"] == "extra_forbidden" and len(e["loc"]) == 1:
            out.append(lines.problem(e["loc"], f"unknown key; a suite takes {', '.join(SuiteModel.model_fields)}"))
        else:
            out.append(lines.problem(e["loc"], e["msg"]))
    return out


def _without_failures(data: dict[str, Any], err: ValidationError) -> dict[str, Any]:
    """``data`` less what failed: the innermost list entry on each error's path (a bad layout of the matrix),
    else the top-level key."""
    out = copy.deepcopy(data)
    doomed: dict[tuple[int, int], tuple[list[Any], int]] = {}  # (id(list), index) -> (the list, index)
    top: set[Any] = set()
    for error in err.errors():
        loc, node, cut = error["loc"], out, None
        for part in loc:
            if isinstance(node, list) and isinstance(part, int) and part < len(node):
                cut = (node, part)
            elif not (isinstance(node, dict) and part in node):
                break
            node = node[part]
        if cut is not None:
            doomed[(id(cut[0]), cut[1])] = cut
        elif loc:
            top.add(loc[0])
    for entries, index in sorted(doomed.values(), key=lambda cut: -cut[1]):  # last to first: indices stay true
        del entries[index]
    return {key: value for key, value in out.items() if key not in top}


def _validated(data: dict[str, Any], lines: LineMap, problems: list[str]) -> SuiteModel | None:
    """The suite model; what fails is reported and left out (a bad matrix entry, else its top-level key), so the
    rest is still validated in the same run (None when a required key cannot be saved)."""
    try:
        return SuiteModel.model_validate(data)
    except ValidationError as err:
        problems.extend(_schema_problems(err, lines))
        remaining = _without_failures(data, err)
    try:
        return SuiteModel.model_validate(remaining)
    except ValidationError:
        return None


def _known_optimization(name: str) -> bool:
    try:
        get_optimization(name)
    except KeyError:
        return False
    return True


def _runnable(spec: SuiteModel, check: Check, models: dict[str, ModelSpec]) -> SuiteModel:
    """The suite without the pieces semantic validation rejected (already reported), so its matrix
    can still be expanded and its layouts judged in the same run."""
    fields = check.params.model_fields

    def entry_ok(entries: dict[str, Any]) -> bool:
        found: list[str] = []
        _validate_values(spec.check, LineMap("", {}), entries, (), found)
        return not found

    def value_ok(axis: str, value: Any) -> bool:
        found: list[str] = []
        _validate_value(spec.check, LineMap("", {}), axis, value, (), found)
        return not found

    extra = {
        axis: [v for v in values if value_ok(axis, v)]
        for axis, values in (spec.matrix.model_extra or {}).items()
        if axis in fields and isinstance(values, list)
    }
    matrix = {
        "model": [m for m in spec.matrix.model if m in models],
        "layout": spec.matrix.layout,
        "optimization": [o for o in spec.matrix.optimization if _known_optimization(o)],
        "dtype": spec.matrix.dtype,
        **extra,
    }
    return spec.model_copy(
        update={
            "matrix": spec.matrix.model_construct(**matrix),
            "params": {k: v for k, v in spec.params.items() if k in fields and k not in extra},
            "exclude": [e for e in spec.exclude if entry_ok(e)],
            "overrides": [o for o in spec.overrides if entry_ok(o.when)],
            "known_defects": [k for k in spec.known_defects if entry_ok(k.when)],
        }
    )


def read_suite(path: str | Path) -> Suite:
    """The suite with every problem found: raises SuiteError only when nothing can be expanded (no
    YAML, no valid required keys, an unknown check); otherwise the problems ride along in
    ``Suite.problems`` and the expansion step adds its own (impossible layouts) to them."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as err:
        raise SuiteError([f"{path}:1: <file>: cannot read: {err.strerror}"]) from None
    data, lines, problems = load_yaml_with_lines(text, str(path))
    if not isinstance(data, dict):
        raise SuiteError([*problems, lines.problem((), "a suite is a mapping with keys suite, check, matrix, ...")])
    spec = _validated(data, lines, problems)
    if spec is None:
        raise SuiteError(problems)
    try:
        check = get_check(spec.check)
    except KeyError as err:
        raise SuiteError([*problems, lines.problem(("check",), str(err.args[0]))]) from None
    models = _declared_models(spec, lines, problems)
    semantic = _check_semantics(spec, check, lines, models)
    runnable = _runnable(spec, check, models) if semantic else spec
    axes: dict[str, list[Any]] = {
        "model": list(runnable.matrix.model),
        "layout": list(runnable.matrix.layout),
        "optimization": list(runnable.matrix.optimization),
        "dtype": list(runnable.matrix.dtype),
        **(runnable.matrix.model_extra or {}),
    }
    return Suite(str(path), runnable, check, lines, axes, models, tuple(problems + semantic))


def load_suite(path: str | Path) -> Suite:
    """A suite with no problem at the loading stage, or SuiteError with every one of them."""
    suite = read_suite(path)
    if suite.problems:
        raise SuiteError(list(suite.problems))
    return suite


def load_suites(paths: list[str | Path]) -> list[Suite]:
    """Load every file. Problems that stop a file from being expanded are raised here, for all files
    together; the others travel in ``Suite.problems`` to the expansion step, which reports them with
    its own, so one run says everything."""
    suites: list[Suite] = []
    problems: list[str] = []
    for path in paths:
        try:
            suites.append(read_suite(path))
        except SuiteError as err:
            problems.extend(err.problems)
    names: dict[str, str] = {}
    for suite in suites:
        if suite.declared.suite in names:
            problems.append(
                suite.lines.problem(
                    ("suite",), f"suite name {suite.declared.suite!r} is also used by {names[suite.declared.suite]}"
                )
            )
        names[suite.declared.suite] = suite.path
    if problems:
        raise SuiteError([*problems, *(line for suite in suites for line in suite.problems)])
    return suites
