"""How a quantized model's next-token distributions differ from its base's on the same tokens, the
way llama.cpp's ``perplexity --kl-divergence`` judges a quantization: KL(base || quant) per token
(mean, median, p99, max), top-1 agreement, and the change of the correct token's probability (mean,
RMS), each mean with a bootstrap interval over sequences.

Both sides are measured in one run on one machine, so another processor's low bits move them far less
than they move an absolute accuracy: these travel across machines.
"""

from __future__ import annotations

import numpy as np
import torch

from harness.runtime.forward import forward_logits
from harness.stats import Estimate, mean, rms


@torch.no_grad()
def next_token_logprobs(model: torch.nn.Module, batches: list[torch.Tensor], vocab_size: int) -> list[torch.Tensor]:
    """Log-probabilities ``[batch, seq - 1, vocab]`` of each batch's next tokens, float32 on the host
    (held for the comparison with a second model: tokens x vocabulary x 4 bytes)."""
    return [
        torch.log_softmax(forward_logits(model, batch[:, :-1], vocab_size).double(), dim=-1).float().cpu()
        for batch in batches
    ]


def _rows(batches: list[torch.Tensor]) -> np.ndarray:
    return torch.cat([b.reshape(b.shape[0], -1) for b in batches]).double().numpy()


@torch.no_grad()
def per_token(
    base: list[torch.Tensor], quant: list[torch.Tensor], targets: list[torch.Tensor]
) -> dict[str, np.ndarray]:
    """Per-token arrays ``[sequences, positions]`` from log-probabilities ``[batch, seq, vocab]`` of the two models."""
    kld, agree, dp = [], [], []
    for logp_base, logp_quant, target in zip(base, quant, targets, strict=True):
        logp_base, logp_quant, target = logp_base.double(), logp_quant.double(), target.cpu().unsqueeze(-1)
        kld.append((logp_base.exp() * (logp_base - logp_quant)).sum(-1))
        agree.append((logp_base.argmax(-1) == logp_quant.argmax(-1)).double())
        dp.append(logp_quant.gather(-1, target).squeeze(-1).exp() - logp_base.gather(-1, target).squeeze(-1).exp())
    return {"kld": _rows(kld), "agree": _rows(agree), "dp": _rows(dp)}


def _with_interval(name: str, estimate: Estimate, scale: float = 1.0) -> dict[str, float]:
    return {
        name: scale * estimate.value,
        f"{name}_ci_low": scale * estimate.low,
        f"{name}_ci_high": scale * estimate.high,
    }


def divergence_metrics(
    base: list[torch.Tensor], quant: list[torch.Tensor], targets: list[torch.Tensor], seed: int
) -> dict[str, float]:
    tokens = per_token(base, quant, targets)
    kld = tokens["kld"]
    return {
        **_with_interval("kld_mean", mean(kld, seed)),
        "kld_median": float(np.median(kld)),
        "kld_p99": float(np.percentile(kld, 99)),
        "kld_max": float(kld.max()),
        **_with_interval("top1_agreement_pct", mean(tokens["agree"], seed), 100.0),
        **_with_interval("dp_correct_mean_pct", mean(tokens["dp"], seed), 100.0),
        **_with_interval("dp_correct_rms_pct", rms(tokens["dp"], seed), 100.0),
    }
