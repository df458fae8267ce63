"""Step 2: expand each suite's matrix into cases with stable ids.

Impossible layouts (heads, vocabulary or layers not divisible, more ranks than the machine has)
are rejected here, naming the line of the offending matrix value, before any worker starts.
"""

from __future__ import annotations

import importlib.metadata
import itertools
import os
from dataclasses import dataclass, replace
from typing import Any

from packaging.specifiers import SpecifierSet
from pydantic import ValidationError

from harness.environment import environment
from harness.models.zoo import LAYERS_BY_PLATFORM
from harness.optimizations import get_optimization
from harness.records import Budget, Case, KnownDefect, Layout, Tolerance
from harness.suites.load import CORE_AXES, MATCH_KEYS, Suite
from harness.suites.schema import OverrideModel
from harness.suites.yaml_lines import SuiteError

MAMBA_PACKAGES = ("mamba_ssm", "causal_conv1d")  # megatron's Mamba layers import them; NGC PyTorch ships neither


@dataclass(frozen=True)
class Resources:
    """Ranks a case may use: CPU worker processes, and GPUs (0 when the machine has none)."""

    cpu_ranks: int
    gpus: int
    gpu_name: str | None = None  # the GPU model, which picks the GPU cases' baseline environment
    mamba_missing: tuple[str, ...] = ()  # Mamba's kernel packages not importable here (GPU machines only)

    @classmethod
    def detect(cls) -> Resources:
        import importlib.util

        import torch

        cpu_ranks = int(os.environ.get("HARNESS_CPU_RANKS", os.cpu_count() or 1))
        gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
        missing = tuple(name for name in MAMBA_PACKAGES if gpus and importlib.util.find_spec(name) is None)
        return cls(cpu_ranks, gpus, torch.cuda.get_device_name(0) if gpus else None, missing)

    @property
    def environments(self) -> dict[str, str]:
        """platform -> the environment whose baselines judge its cases here (harness.environment)."""
        return {platform: environment(platform, self.gpu_name) for platform in ("cpu", "gpu")}


def _matches(suite: Suite, entry: dict[str, Any], chosen: dict[str, Any], layout: Layout, params: Any) -> bool:
    """Whether an exclude/when entry names this case (``chosen``: its axis values and platform). Check
    params are compared after the check's normalisation, so ``reload_layout: same`` and the explicit
    equal layout are one value."""
    check = suite.check
    entry_params = {k: v for k, v in entry.items() if k not in MATCH_KEYS}
    resolved = check.normalize(layout, check.params.model_validate({**params.model_dump(), **entry_params}))
    for key, value in entry.items():
        mine = chosen[key] if key in MATCH_KEYS else getattr(params, key)
        wanted = value if key in MATCH_KEYS else getattr(resolved, key)
        if suite.canonical(key, wanted) != suite.canonical(key, mine):
            return False
    return True


def _value_token(value: Any) -> str:
    if isinstance(value, dict):
        return "".join(f"{k}{v}" for k, v in value.items())
    return str(value)


def _limits(suite: Suite, overrides: list[OverrideModel]) -> tuple[dict[str, Tolerance], dict[str, Budget]]:
    """Tolerances and budgets: check defaults < suite < the case's overrides."""
    tolerances = {name: metric.tolerance for name, metric in suite.check.metrics.items()}
    tolerances.update({name: t.tolerance() for name, t in suite.declared.tolerances.items()})
    budgets = {name: metric.budget for name, metric in suite.check.metrics.items() if metric.budget is not None}
    budgets.update({name: b.budget() for name, b in suite.declared.budgets.items()})
    for override in overrides:
        tolerances.update({name: t.tolerance() for name, t in override.tolerances.items()})
        budgets.update({name: b.budget() for name, b in override.budgets.items()})
    return tolerances, budgets


def _case(
    suite: Suite, chosen: dict[str, Any], where: dict[str, tuple], platform: str, resources: Resources
) -> tuple[Case | None, list[str]]:
    declared, check, lines = suite.declared, suite.check, suite.lines
    layout: Layout = chosen["layout"].layout()
    check_params = {k: v for k, v in chosen.items() if k not in CORE_AXES}
    try:
        params = check.params.model_validate({**declared.params, **check_params})
    except ValidationError as err:
        return None, [
            lines.problem(where.get(str(e["loc"][0]), ("params",)) if e["loc"] else ("params",), e["msg"])
            for e in err.errors()
        ]
    params = check.normalize(layout, params)
    matched = {**chosen, "platform": platform}
    if any(_matches(suite, entry, matched, layout, params) for entry in declared.exclude):
        return None, []
    # The overrides that name this case, decided once on the case as the matrix made it (an override's
    # params never decide which other overrides apply).
    overrides = [o for o in declared.overrides if _matches(suite, o.when, matched, layout, params)]
    for override in (o for o in overrides if o.params):
        try:
            params = check.normalize(layout, check.params.model_validate({**params.model_dump(), **override.params}))
        except ValidationError:
            return None, []  # reported, with its line, where the suite was loaded (load._fixed_params)
    if chosen["model"] not in suite.models:
        return None, []  # a declared model that could not be read: reported, with its line, by load
    # The case's own copy of the model: its dtype axis value and its platform's layer spec.
    model = suite.models[chosen["model"]]
    model = replace(model, dtype=chosen["dtype"], layers=model.layers or LAYERS_BY_PLATFORM[platform])
    problems: list[str] = []
    optimization = get_optimization(chosen["optimization"])
    layouts = check.layouts(layout, params)
    world = max(each.world_size for each in layouts.values())
    first_key = {each: key for key, each in reversed(layouts.items())}  # a layout named twice is judged once
    for each, key in first_key.items():
        for reason in each.errors() + ([] if model.unavailable else model.layout_errors(each)):
            problems.append(lines.problem(where[key], reason))
        if world % each.world_size:
            problems.append(lines.problem(where[key], f"{each.token} does not divide the case's world size {world}"))
        if each.vpp > 1 and not check.virtual_pipeline:
            problems.append(
                lines.problem(where[key], f"check {check.name} does not run virtual pipeline stages (vpp > 1)")
            )
        problems.extend(lines.problem(where[key], reason) for reason in optimization.layout_problems(each))
    reloaded = check.reloads_under(layout, params)
    if reloaded is not None and not model.unavailable and not problems:  # on layouts that can be built at all
        key = next((key for key, each in layouts.items() if each == reloaded), "layout")  # a check's own reload
        problems.extend(
            lines.problem(where[key], reason) for reason in optimization.reshard_problems(layout, reloaded, model)
        )
    if not model.unavailable:
        problems.extend(
            lines.problem(where.get(key, ("params", key)), message)
            for key, message in check.case_problems(layout, params, model)
        )
    # More CPU ranks than the machine offers is a suite error (HARNESS_CPU_RANKS raises it); a GPU case
    # needing more GPUs than this machine has skips with the reason (harness.schedule), so one suite
    # serves one-GPU and eight-GPU machines alike.
    if platform == "cpu" and world > resources.cpu_ranks:
        problems.append(
            lines.problem(
                where["layout"], f"needs {world} ranks but this machine offers {resources.cpu_ranks} cpu ranks"
            )
        )
    if problems:
        return None, problems
    tolerances, budgets = _limits(suite, overrides)
    extra = [
        f"{k}={_value_token(suite.canonical(k, getattr(params, k)))}"
        for k in check_params
        if k not in check.label_params
    ]
    # fp32 is implicit in ids, so the ids (and baselines) of fp32 cases did not change with the dtype axis.
    dtype = [] if chosen["dtype"] == "fp32" else [chosen["dtype"]]
    case_id = "/".join(
        [declared.suite, chosen["model"], check.label(layout, params), chosen["optimization"], *dtype, *extra]
    )
    parallel = set().union(*(each.markers for each in layouts.values()))
    markers = (
        *declared.markers,
        check.name,
        chosen["model"],
        chosen["optimization"],
        chosen["dtype"],
        platform,
        *sorted(parallel),
        *(("slow",) if declared.slow or any(o.slow for o in overrides) else ()),
    )
    return Case(
        id=case_id,
        suite=declared.suite,
        check=declared.check,
        model=chosen["model"],
        model_spec=model,
        layout=layout,
        optimization=chosen["optimization"],
        params=params.model_dump(mode="json"),
        platform=platform,
        world_size=world,
        markers=tuple(dict.fromkeys(markers)),
        tolerances=tolerances,
        budgets=budgets,
        timeout_s=declared.timeout_s,
        seed=declared.seed,
        source=f"{suite.path}:{lines.line(('matrix',))}",
        known_defect=next(
            (
                KnownDefect(
                    k.defect, {name: b.budget() for name, b in k.symptom.items()}, k.id, k.upstream, tuple(k.affects)
                )
                for k in declared.known_defects
                if _matches(suite, k.when, matched, layout, params) and installed_within(k.versions)
            ),
            None,
        ),
    ), []


def installed_within(versions: dict[str, str]) -> bool:
    """Whether the installed distributions satisfy every specifier (a missing one satisfies none)."""
    for name, spec in versions.items():
        try:
            installed = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            return False
        if not SpecifierSet(spec).contains(installed, prereleases=True):
            return False
    return True


def expand_suite(suite: Suite, resources: Resources) -> list[Case]:
    names = list(suite.axes)
    cases: dict[str, Case] = {}
    problems: list[str] = list(suite.problems)
    for platform in suite.declared.platforms:
        for indices in itertools.product(*(range(len(suite.axes[n])) for n in names)):
            chosen = {n: suite.axes[n][i] for n, i in zip(names, indices, strict=True)}
            where = {n: ("matrix", n, i) for n, i in zip(names, indices, strict=True)}
            where.update({k: ("params", k) for k in suite.declared.params})
            case, found = _case(suite, chosen, where, platform, resources)
            problems.extend(p for p in found if p not in problems)
            if case is None:
                continue
            twin = cases.get(case.key)
            if twin is not None and twin != case:
                problems.append(suite.lines.problem(("matrix",), f"two different cases share the id {case.id}"))
            cases[case.key] = case
    if problems:
        raise SuiteError(problems)
    return list(cases.values())


def expand(suites: list[Suite], resources: Resources) -> list[Case]:
    problems: list[str] = []
    cases: list[Case] = []
    for suite in suites:
        try:
            cases.extend(expand_suite(suite, resources))
        except SuiteError as err:
            problems.extend(err.problems)
    if problems:
        raise SuiteError(problems)
    return cases
