"""What an optimization is: a named transformation of a built megatron model, run in a worker."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

    from harness.records import Layout, ModelSpec

ForwardLoop = Callable[["torch.nn.Module"], None]


@dataclass(frozen=True)
class Optimization:
    name: str
    description: str
    apply: Callable[[torch.nn.Module, ForwardLoop], torch.nn.Module]
    gpu_only: str | None = None  # why it cannot run on CPU; its CPU cases skip with this reason
    # Why it cannot run under a layout, judged before any worker starts (the suite names file and line).
    layout_problems: Callable[[Layout], list[str]] = lambda layout: []
    # Why state saved under one layout cannot be loaded under another (a reshard) or the same for this model,
    # judged before start.
    reshard_problems: Callable[[Layout, Layout, ModelSpec], list[str]] = lambda saved, reloaded, model: []
    # The step of its number format relative to the format's range (the unit of the layout-parity bound,
    # harness.evals.parity); None: it leaves the model's dtype as the narrowest format.
    epsilon: float | None = None
