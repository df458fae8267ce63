"""What a mutation is: a realistic one-line defect of megatron-core or modelopt, injected into the
library inside the workers (never into the harness), and the cases that must catch it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Mutation:
    name: str
    kind: str  # what it breaks: a calibration statistic, scale synchronisation, state restore, a loss term, ...
    defect: str  # the one-line upstream change it stands for
    cases: tuple[str, ...]  # case keys (id[platform]) it runs against; the checks they belong to are scored
    inject: Callable[[], None]  # applies the defect in this process (a worker, after its imports)
    fast: bool = False  # part of the CI subset (tests/ run these)


def patch(owner: Any, name: str, make: Callable[[Any], Any]) -> None:
    """Replace ``owner.name`` by ``make(original)``: the defect wraps what it changes."""
    setattr(owner, name, make(getattr(owner, name)))
