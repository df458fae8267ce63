"""What the in-run distribution and parity metrics cost, at the zoo models' shapes (pytest-benchmark:
measured and stored with the machine's info, never asserted). A whole case's cost is a case's
``duration_s``; a noise study's is its runs' (``harness noise`` prints them per case)."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from harness.evals.divergence import divergence_metrics
from harness.evals.parity import bound, parity_metrics

VOCAB, BATCHES, ROWS, SEQ = 1024, 8, 16, 64  # tiny-gpt-trained and quant_accuracy's default eval set


@pytest.fixture(scope="module")
def logprobs() -> tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]]:
    generator = torch.Generator().manual_seed(0)
    logits = [torch.randn(ROWS, SEQ, VOCAB, generator=generator) for _ in range(BATCHES)]
    base = [torch.log_softmax(x.double(), -1).float() for x in logits]
    quant = [
        torch.log_softmax((x + 0.05 * torch.randn(x.shape, generator=generator)).double(), -1).float() for x in logits
    ]
    return base, quant, [torch.randint(0, VOCAB, (ROWS, SEQ), generator=generator) for _ in range(BATCHES)]


def test_distribution_metrics_cost(benchmark: Any, logprobs: tuple[list[torch.Tensor], ...]) -> None:
    base, quant, targets = logprobs
    found = benchmark(divergence_metrics, base, quant, targets, 0)
    assert found["kld_mean"] > 0


def test_parity_metrics_cost(benchmark: Any) -> None:
    generator = torch.Generator().manual_seed(1)
    reference = torch.randn(4, SEQ, VOCAB, generator=generator)
    found = benchmark(
        parity_metrics,
        "p_",
        reference + 1e-7 * torch.randn(reference.shape, generator=generator),
        reference,
        bound(4, "fp32"),
    )
    assert found["p_control_to_bound"] > 1
