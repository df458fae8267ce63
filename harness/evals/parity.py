"""Layout parity against a bound from floating-point theory, with a negative control.

Two layouts (TP2 and TP1, a reshard, a quantized twin) compute the same function in another reduction
order, so they may differ by rounding only. The error is the relative Frobenius norm of the difference,
``||a - b||_F / ||b||_F`` (as Megatron-LM's cross-layout gradient test measures it), and its bound is

    bound = K x sqrt(G) x eps,    G = 4 L + 1

- ``G``: the GEMMs on the path whose reduction a layout can split (per layer: QKV, attention output
  projection, FC1, FC2; and the output layer). Each split changes its outputs by a few roundings that are
  independent of the others', so they add in quadrature (probabilistic rounding-error analysis, Higham &
  Mary 2019) instead of linearly.
- ``eps``: machine epsilon of the dtype (fp32 2^-23, bf16 2^-7). On a quantized path the layout's rounding
  differences also flip a value that sits within them of a quantization boundary onto the next grid
  point: a flip has a chance ~ eps_dtype x crest / eps_format and costs one step ~ eps_format / crest of the
  tensor's RMS (crest = amax / RMS ~ 4 for activations), so its expected squared error per element is
  ~ eps_dtype x eps_format x crest; ``eps = max(eps_dtype, sqrt(CREST x eps_dtype x eps_format))`` with
  ``eps_format`` the format's step (FP8 E4M3 2^-3, INT8 1/127, INT4 1/7, FP4 E2M1 2^-1).
- ``K = 4``: Megatron's constant for the hidden big-O factor (``test_optimizer_grads_match.py``, after
  arXiv 2506.09280, Thm 5.3), here with the measured growth of this mechanism (sqrt(G)) in place of its C^L.

Checked against measurements (tiny-gpt, 4 layers, CPU): fp32 TP1->TP2 reshard 5.1e-7 (bound 2.0e-6),
bf16 8.9e-3 (bound 0.13), INT8 quantized TP2 vs TP1 4.0e-4 (bound 1.4e-3).

Negative control: the same error against the reference rolled by one position along the sequence (the
right numbers in the wrong place, Megatron's shuffled control). It must land above the bound: a bound the
control does not exceed cannot tell a broken layout from a correct one, and the case says so.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

K = 4.0
CREST = 4.0  # amax / RMS of an activation tensor: how much coarser a format's step is than its epsilon suggests
EPSILON = {"fp32": 2.0**-23, "bf16": 2.0**-7}


def bound(layers: int, dtype: str, format_epsilon: float | None = None) -> float:
    """The largest relative Frobenius error two layouts of an ``layers``-layer model may show in ``dtype``,
    quantized to a format of step ``format_epsilon`` (None: unquantized)."""
    eps = EPSILON[dtype]
    if format_epsilon is not None:
        eps = max(eps, math.sqrt(CREST * 2 * eps * format_epsilon))
    return K * math.sqrt(4 * layers + 1) * eps


def export_bound(layers: int, dtype: str, format_epsilon: float | None = None) -> float:
    """The largest relative Frobenius error between a fake-quantized model and its exported real-quantized
    twin. The exporter rounds ``w / s`` where fake quantization rounds ``w x (1 / s)``: the weights within an ulp
    of a rounding boundary (a fraction ~ eps / eps_format; measured: 2 of 1.57M FP8 weights of a random-weight
    model) land one format step apart, which perturbs each GEMM output by ~ sqrt(eps x eps_format), the flip term
    of ``bound`` above. A fake-quantized
    activation downstream turns a perturbation ``d`` into flips worth ~ sqrt(CREST x 2 x d x eps_format) (the
    same mechanism as in ``bound``, applied once more to that term):
    ``eps = eps_format^(3/4) x (CREST x 2 x eps)^(1/4)``. Unquantized, the two differ by rounding order only."""
    eps = EPSILON[dtype]
    if format_epsilon is not None:
        eps = max(eps, format_epsilon**0.75 * (CREST * 2 * eps) ** 0.25)
    return K * math.sqrt(4 * layers + 1) * eps


def rel_error(measured: torch.Tensor, reference: torch.Tensor) -> float:
    import torch

    return float(
        torch.linalg.vector_norm((measured - reference).double())
        / torch.linalg.vector_norm(reference.double()).clamp_min(1e-300)
    )


def rolled(reference: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """The reference one position later along ``dim`` (the sequence of ``[batch, seq, ...]`` tensors)."""
    import torch

    return torch.roll(reference, shifts=1, dims=dim)


def parity_metrics(prefix: str, measured: torch.Tensor, reference: torch.Tensor, limit: float) -> dict[str, float]:
    """``<prefix>rel_error`` with its bound and negative control, and the two ratios judged by budgets
    (``<prefix>error_to_bound`` <= 1, ``<prefix>control_to_bound`` >= 1)."""
    error, control = rel_error(measured, reference), rel_error(measured, rolled(reference))
    return {
        f"{prefix}rel_error": error,
        f"{prefix}rel_error_bound": limit,
        f"{prefix}rel_error_control": control,
        f"{prefix}error_to_bound": error / limit,
        f"{prefix}control_to_bound": control / limit,
    }


def margin_ratios(rows: torch.Tensor, limit: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row's top-1 token and its top-1 margin over what rounding within the parity bound can move it: the
    bound allows a row of logits an error of ``limit x ||row||``, and the gap between two logits moves by at most
    ``sqrt(2)`` times that. A ratio above 1 is a decided choice; below it a near tie that rounding (bf16, a GPU
    kernel tiled by sequence length) may order either way."""
    import torch

    rows = rows.double().flatten(0, -2)
    top2 = rows.topk(2, dim=-1).values
    threshold = math.sqrt(2.0) * limit * torch.linalg.vector_norm(rows, dim=-1)
    # argmax, as greedy decoding chooses (topk may order an exact tie the other way)
    return rows.argmax(dim=-1), (top2[:, 0] - top2[:, 1]) / threshold.clamp_min(1e-300)


def decisive_flips(before: torch.Tensor, after: torch.Tensor, limit: float) -> dict[str, float]:
    """Next-token choices of two layouts on the same tokens (teacher-forced: a flip does not change what the
    later positions see), ``[batch, positions, vocab]`` logits each: the flips, and the decisive ones (where the
    first layout's choice was decided, ``margin_ratios`` > 1), which no machine may show."""
    top1, ratios = margin_ratios(before, limit)
    flipped = after.double().flatten(0, -2).argmax(dim=-1) != top1
    return {
        "greedy_flips": float(flipped.sum()),
        "greedy_decisive_flips": float((ratios[flipped] > 1.0).sum()),
        "greedy_flip_margin_to_threshold": float(ratios[flipped].max()) if bool(flipped.any()) else 0.0,
    }


def first_divergences(
    outputs: list[torch.Tensor],
    truths: list[torch.Tensor],
    rows: list[torch.Tensor | None],
    starts: list[int],
    limit: float,
) -> dict[str, float]:
    """Speculative against autoregressive greedy output, per prompt (``[1, seq]`` tokens; ``rows``: the
    autoregressive ``[1, new tokens, vocab]`` logits that chose each new token, needed, and read, only where the two
    outputs differ): the first position where they
    differ, a *decisive* divergence where the autoregressive choice there was decided (``margin_ratios`` > 1).
    Later positions follow another prefix, so nothing after the first divergence is counted."""
    decisive, diverged, worst = 0, 0, 0.0
    for output, truth, logits, start in zip(outputs, truths, rows, starts, strict=True):
        differ = (output[0, start:] != truth[0, start:]).nonzero()
        if len(differ) == 0:
            continue
        position = int(differ[0, 0])
        assert logits is not None, "the logits of a diverging prompt"
        _, ratio = margin_ratios(logits[:, position : position + 1], limit)
        diverged, worst = diverged + 1, max(worst, float(ratio[0]))
        decisive += int(float(ratio[0]) > 1.0)
    return {
        "lossless_mismatches": float(decisive),
        "lossless_divergences": float(diverged),
        "lossless_divergence_margin_to_threshold": worst,
    }
