"""What an optimization is: a named transformation of a built megatron model, run in a worker."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

ForwardLoop = Callable[["torch.nn.Module"], None]


@dataclass(frozen=True)
class Optimization:
    name: str
    description: str
    apply: Callable[[torch.nn.Module, ForwardLoop], torch.nn.Module]
    gpu_only: str | None = None  # why it cannot run on CPU; its CPU cases skip with this reason
