"""Checks that misbehave on purpose, named by import path from test suites
(``check: tests.support.fault_checks:SLEEPS``): the launcher must survive them."""

from __future__ import annotations

import os
import time

from pydantic import NonNegativeFloat

from harness.checks.base import Check, CheckContext, MetricSpec, StrictModel
from harness.records import Tolerance


class SleepParams(StrictModel):
    seconds: NonNegativeFloat = 0.0


def _sleep(ctx: CheckContext) -> dict[str, float]:
    time.sleep(ctx.params.seconds)
    return {"slept_s": ctx.params.seconds}


def _crash(ctx: CheckContext) -> dict[str, float]:
    os._exit(3)


def _raise(ctx: CheckContext) -> dict[str, float]:
    raise RuntimeError(f"deliberate failure in {ctx.case.id}")


_METRICS = {"slept_s": MetricSpec("seconds slept", Tolerance())}
SLEEPS = Check("sleeps", "sleeps for params.seconds", SleepParams, _METRICS, _sleep)
CRASHES = Check("crashes", "the worker process exits with code 3", SleepParams, _METRICS, _crash)
RAISES = Check("raises", "the check raises", SleepParams, _METRICS, _raise)


class ValueParams(StrictModel):
    value: float = 1.0


def _emit(ctx: CheckContext) -> dict[str, float]:
    return {"value": ctx.params.value}


# A metric the test sets through the suite: lets a test move it run by run (an injected drift).
EMITS = Check(
    "emits",
    "returns params.value",
    ValueParams,
    {"value": MetricSpec("the value of params.value", Tolerance(abs=0.05))},
    _emit,
)


class FillParams(StrictModel):
    kib: int = 64


def _fill(ctx: CheckContext) -> dict[str, float]:
    if ctx.case.world_size == 1 or int(os.environ.get("RANK", "0")) == 0:
        (ctx.artifacts / "fill.bin").write_bytes(b"\0" * (ctx.params.kib * 1024))
    return {"value": float(ctx.params.kib)}


# Writes params.kib KiB into its artifacts folder: fills a size-limited disk on purpose.
FILLS = Check(
    "fills",
    "writes params.kib KiB into the case's artifacts",
    FillParams,
    {"value": MetricSpec("KiB written", Tolerance())},
    _fill,
)


def fault_suite(name: str, check: str, seconds: float, timeout_s: float) -> str:
    """A TP=2 suite running one of these checks (``check`` names it: SLEEPS, CRASHES, RAISES)."""
    return (
        f"suite: {name}\ncheck: tests.support.fault_checks:{check}\ntimeout_s: {timeout_s}\n"
        f"params: {{seconds: {seconds}}}\nmatrix:\n  model: [tiny-gpt]\n  layout: [{{tp: 2, pp: 1}}]\n"
    )


def _numerics(ctx: CheckContext) -> dict[str, float]:
    import torch

    return {
        "threads": float(torch.get_num_threads()),
        "avx2_kernels": float(torch.backends.cpu.get_cpu_capability() == "AVX2"),
    }


# What a worker rank computes with: the pinned thread count and kernel ISA must have taken effect there.
NUMERICS = Check(
    "numerics",
    "the rank's torch threads and ATen kernel ISA",
    SleepParams,
    {
        "threads": MetricSpec("torch threads", Tolerance()),
        "avx2_kernels": MetricSpec("1 when ATen runs AVX2", Tolerance()),
    },
    _numerics,
)


SLOWDOWN = 0.20


def _slower_speculative(ctx: CheckContext) -> dict[str, float]:
    """spec_decode with its draft-then-verify loop made SLOWDOWN slower (every call waits that share of
    its own time): the regression the speedup verdict exists to catch."""
    import harness.runtime.speculative as module
    from harness.checks.spec_decode import CHECK

    real = module.speculative

    def slower(*args: object, **kwargs: object) -> object:
        start = time.perf_counter()
        out = real(*args, **kwargs)
        time.sleep(SLOWDOWN * (time.perf_counter() - start))
        return out

    module.speculative = slower
    try:
        return CHECK.run(ctx)
    finally:
        module.speculative = real


def _spec_check() -> Check:
    from dataclasses import replace

    from harness.checks.spec_decode import CHECK

    return replace(CHECK, run=_slower_speculative)


# spec_decode, SLOWDOWN (20%) slower on its speculative path: same params, metrics and case ids.
SLOWER_SPEC = _spec_check()
