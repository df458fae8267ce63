"""Mutation self-test: realistic one-line defects of megatron-core and modelopt, one file per area, each
injected into the library inside the workers of a sensitivity run (``harness sensitivity``) and run
against the cases that must catch it. A defect no metric catches is a hole in the harness.

A worker applies the mutation named in ``HARNESS_MUTATION`` once its imports are done; only the
sensitivity command sets it (harness.launchers.local drops one inherited from the caller's environment).
"""

from __future__ import annotations

from harness.mutations import ckpt, export, kd, moe, quant, spec
from harness.mutations.base import Mutation

VARIABLE = "HARNESS_MUTATION"
MUTATIONS: dict[str, Mutation] = {
    m.name: m
    for m in (*quant.MUTATIONS, *ckpt.MUTATIONS, *export.MUTATIONS, *kd.MUTATIONS, *spec.MUTATIONS, *moe.MUTATIONS)
}


def inject(name: str) -> str:
    """Apply mutation ``name`` in this process; what it did, for the worker's log and adaptations list."""
    if name not in MUTATIONS:
        raise KeyError(f"unknown mutation {name!r}; known: {', '.join(MUTATIONS)}")
    MUTATIONS[name].inject()
    return f"MUTATION {name}: {MUTATIONS[name].defect}"
