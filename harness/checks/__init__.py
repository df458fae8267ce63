"""Check registry: one module per check, one entry here.

A suite may also name a check by import path (``package.module:CHECK``) for checks that live
outside the harness.
"""

from __future__ import annotations

import importlib

from harness.checks.base import Check
from harness.checks.ckpt_roundtrip import CHECK as CKPT_ROUNDTRIP
from harness.checks.export_roundtrip import CHECK as EXPORT_ROUNDTRIP
from harness.checks.kd_parity import CHECK as KD_PARITY
from harness.checks.kd_trajectory import CHECK as KD_TRAJECTORY
from harness.checks.moe_router import CHECK as MOE_ROUTER
from harness.checks.quant_accuracy import CHECK as QUANT_ACCURACY
from harness.checks.spec_decode import CHECK as SPEC_DECODE

CHECKS: dict[str, Check] = {
    check.name: check
    for check in (CKPT_ROUNDTRIP, EXPORT_ROUNDTRIP, QUANT_ACCURACY, KD_PARITY, KD_TRAJECTORY, SPEC_DECODE, MOE_ROUTER)
}


def get_check(name: str) -> Check:
    """The registered check ``name``, or the ``Check`` at import path ``module:attr``."""
    if name in CHECKS:
        return CHECKS[name]
    if ":" not in name:
        raise KeyError(f"unknown check {name!r}; known: {', '.join(sorted(CHECKS))} (or module:attr)")
    module_name, _, attr = name.partition(":")
    try:
        found = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as err:
        raise KeyError(f"cannot import check {name!r}: {err}") from None
    if not isinstance(found, Check):
        raise KeyError(f"{name!r} is a {type(found).__name__}, not a harness Check")
    return found
