"""Held-out language-model scores: next-token accuracy (with its standard error) and perplexity."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from harness.runtime.forward import forward_logits


@dataclass(frozen=True)
class LmScores:
    accuracy: float  # fraction of next tokens whose argmax is right
    nll: float  # mean negative log-likelihood per token (nats)
    tokens: int

    @property
    def perplexity(self) -> float:
        return math.exp(self.nll)

    @property
    def accuracy_stderr(self) -> float:
        """Binomial standard error, as lm-evaluation-harness reports ``acc_stderr``."""
        return math.sqrt(self.accuracy * (1 - self.accuracy) / max(1, self.tokens - 1))


@torch.no_grad()
def score_lm(model: torch.nn.Module, batches: list[torch.Tensor], vocab_size: int) -> LmScores:
    correct = 0
    nll = 0.0
    tokens = 0
    for batch in batches:
        logits = forward_logits(model, batch[:, :-1], vocab_size)
        targets = batch[:, 1:]
        logp = torch.log_softmax(logits.double(), dim=-1)
        nll -= float(logp.gather(-1, targets.unsqueeze(-1)).sum())
        correct += int((logits.argmax(dim=-1) == targets).sum())
        tokens += targets.numel()
    return LmScores(accuracy=correct / tokens, nll=nll / tokens, tokens=tokens)
