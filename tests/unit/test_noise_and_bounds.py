"""The noise rule, the layout-parity bound and its negative control, the distribution metrics and the
paired-MMLU statistics: pure functions, no workers."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from harness.evals.divergence import divergence_metrics
from harness.evals.parity import bound, parity_metrics, rel_error
from harness.noise import MULTIPLIER, VARIATIONS, CaseNoise, MetricNoise, NoiseError, read_noise_file, write_case_noise
from harness.stats import mcnemar_exact, mean, rms


def test_the_band_is_the_multiplier_times_the_largest_deviation_of_the_runs_that_apply() -> None:
    noise = MetricNoise({"reference": 1.0, "repeat": 1.0, "unpinned": 1.004, "threads": 0.999})
    assert noise.deviation(across_machines=False) == 0 and noise.band(False) == 0
    assert noise.band(True) == pytest.approx(MULTIPLIER * 0.004)
    assert MetricNoise({"reference": 1.0, "repeat-2": 1.1}).band(False) == pytest.approx(MULTIPLIER * 0.1)
    assert math.isinf(MetricNoise({"reference": 1.0, "unpinned": math.nan}).band(True))  # a run lost the metric


def test_records_round_trip_one_case_at_a_time_and_a_bad_file_is_named(tmp_path: Path) -> None:
    path = tmp_path / "quant.noise.json"
    first = CaseNoise.from_samples({"reference": {"x": 1.0}, "repeat": {"x": 1.0}}, {}, {"commit": "a"})
    write_case_noise(path, "quant", "cpu-x", "a", first)
    write_case_noise(
        path, "quant", "cpu-x", "b", CaseNoise.from_samples({"reference": {"y": 2.0}}, {"unpinned": "boom"}, {})
    )
    records = read_noise_file(path)
    assert set(records) == {"a", "b"} and records["a"] == first and records["b"].errors == {"unpinned": "boom"}
    saved = json.loads(path.read_text())
    assert saved["cases"]["a"]["metrics"]["x"]["n"] == 2 and "rule" in saved
    path.write_text("{not json")
    with pytest.raises(NoiseError, match=r"quant\.noise\.json:1: not valid JSON"):
        read_noise_file(path)


def test_a_record_grows_one_variation_at_a_time_against_the_same_reference() -> None:
    first = CaseNoise.from_samples(
        {"reference": {"x": 1.0}, "unpinned": {"x": 1.002}}, {}, {"date": "d1", "commit": "a"}
    )
    later = CaseNoise.from_samples({"reference": {"x": 1.0, "y": 5.0}, "isa-avx512": {"x": 0.99, "y": 5.0}}, {}, {})
    grown = first.extended(later)
    assert grown.variations == ("reference", "unpinned", "isa-avx512")
    assert grown.metrics["x"].samples == {"reference": 1.0, "unpinned": 1.002, "isa-avx512": 0.99}
    assert grown.metrics["x"].band(True) == pytest.approx(MULTIPLIER * 0.01)
    assert grown.metrics["y"].samples == {"reference": 5.0, "isa-avx512": 5.0}
    assert grown.provenance["earlier"] == [{"date": "d1", "commit": "a"}]


def test_variations_change_what_they_say() -> None:
    assert VARIATIONS["threads"].environment(1) == {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    assert VARIATIONS["threads"].environment(2) == {}  # one thread per rank already: the study skips it there
    assert VARIATIONS["unpinned"].environment(1) == {
        "ATEN_CPU_CAPABILITY": None,
        "MKL_CBWR": None,
        "ONEDNN_MAX_CPU_ISA": None,
    }
    assert VARIATIONS["isa-avx512"].unavailable({"avx2"}) == "this CPU lacks avx512bw, avx512f"
    assert VARIATIONS["repeat"].environment(2) == {}


def test_the_bound_follows_dtype_depth_and_format() -> None:
    assert bound(4, "fp32") == pytest.approx(4 * math.sqrt(17) * 2**-23)
    assert bound(4, "bf16") / bound(4, "fp32") == pytest.approx(2**16)
    assert bound(4, "fp32", 1 / 127) == pytest.approx(4 * math.sqrt(17) * math.sqrt(8 * 2**-23 / 127))
    assert bound(4, "bf16", 2**-3) > 1  # bf16 with a coarse format: no bound below an O(1) error (suites say so)


def test_two_reduction_orders_sit_under_the_bound_and_the_rolled_control_above_it() -> None:
    """A real reduction-order difference: the same 4-layer MLP run with its matmuls split in two (as TP2
    splits a row-parallel GEMM) against run whole, in fp32 and bf16."""
    generator = torch.Generator().manual_seed(0)
    for dtype in ("fp32", "bf16"):
        kind = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype]
        weights = [(torch.randn(256, 256, generator=generator) / 16).to(kind) for _ in range(4)]
        x = torch.randn(2, 32, 256, generator=generator).to(kind)
        whole, split = x, x
        for w in weights:
            whole = torch.tanh(whole @ w)
            split = torch.tanh(split[..., :100] @ w[:100] + split[..., 100:] @ w[100:])
        metrics = parity_metrics("p_", split.float(), whole.float(), bound(4, dtype))
        assert 0 < metrics["p_error_to_bound"] < 1 < metrics["p_control_to_bound"], metrics
        assert rel_error(whole.float(), whole.float()) == 0


def test_distribution_metrics_are_zero_for_identical_models_and_match_their_definitions() -> None:
    generator = torch.Generator().manual_seed(1)
    logits = torch.randn(4, 8, 16, generator=generator, dtype=torch.float64)
    targets = torch.randint(0, 16, (4, 8), generator=generator)
    base = [torch.log_softmax(logits, -1)]
    same = divergence_metrics(base, base, [targets], seed=0)
    assert same["kld_mean"] == 0 and same["top1_agreement_pct"] == 100 and same["dp_correct_rms_pct"] == 0
    moved = [torch.log_softmax(logits + 0.3 * torch.randn(4, 8, 16, generator=generator, dtype=torch.float64), -1)]
    found = divergence_metrics(base, moved, [targets], seed=0)
    p = base[0].exp()
    assert found["kld_mean"] == pytest.approx(float((p * (base[0] - moved[0])).sum(-1).mean()))
    assert found["kld_max"] >= found["kld_p99"] >= found["kld_median"] >= 0
    assert found["kld_mean_ci_low"] <= found["kld_mean"] <= found["kld_mean_ci_high"]
    dp = moved[0].exp().gather(-1, targets.unsqueeze(-1)) - p.gather(-1, targets.unsqueeze(-1))
    assert found["dp_correct_mean_pct"] == pytest.approx(100 * float(dp.mean()))


def test_bootstrap_intervals_cover_the_estimate_repeat_with_the_seed_and_narrow_with_more_rows() -> None:
    rng = np.random.default_rng(3)
    few, many = rng.normal(1, 1, (10, 8)), rng.normal(1, 1, (400, 8))
    a, b = mean(few, seed=5), mean(few, seed=5)
    assert a == b and a.low <= a.value <= a.high
    wide, narrow = mean(few, 5), mean(many, 5)
    assert narrow.high - narrow.low < wide.high - wide.low
    assert rms(np.full((3, 4), 2.0), 0).value == pytest.approx(2.0)


@pytest.mark.parametrize(
    ("lost", "gained", "p"), [(0, 0, 1.0), (5, 5, 1.0), (0, 5, 0.0625), (1, 10, 24 / 2048), (0, 2000, 0.0)]
)
def test_mcnemar_exact(lost: int, gained: int, p: float) -> None:
    assert mcnemar_exact(lost, gained) == pytest.approx(p, abs=1e-300)
    assert mcnemar_exact(gained, lost) == mcnemar_exact(lost, gained)


def test_a_flip_counts_only_where_the_choice_was_decided_beyond_rounding() -> None:
    """Greedy invariants that hold on every machine: a near tie (margin within sqrt(2) x bound x ||row||) may flip,
    a decided choice may not; speculative output is judged at its first divergence only."""
    import torch

    from harness.evals.parity import decisive_flips, first_divergences

    limit = 1e-3
    near_tie = torch.tensor([[[5.0, 5.0 + 1e-4, 0.0, 0.0]]])  # ||row|| ~ 7.07: threshold ~ 0.01, margin 1e-4
    decided = torch.tensor([[[5.0, 6.0, 0.0, 0.0]]])  # margin 1: decided
    swapped = torch.tensor([[[5.0 + 2e-4, 5.0, 0.0, 0.0]]])
    assert decisive_flips(near_tie, swapped, limit) == {
        "greedy_flips": 1.0,
        "greedy_decisive_flips": 0.0,
        "greedy_flip_margin_to_threshold": pytest.approx(1e-4 / (2**0.5 * limit * float(near_tie.norm())), rel=1e-2),
    }
    assert decisive_flips(decided, swapped, limit)["greedy_decisive_flips"] == 1.0
    assert decisive_flips(decided, decided, limit) == {
        "greedy_flips": 0.0,
        "greedy_decisive_flips": 0.0,
        "greedy_flip_margin_to_threshold": 0.0,
    }
    # speculative vs autoregressive: prompt of 2, three new tokens; prompt 1 leaves at a near tie (then differs
    # everywhere: not counted), prompt 2 at a decided choice, prompt 3 never
    truth = torch.tensor([[7, 7, 1, 2, 3]])
    rows = torch.cat([decided, near_tie, decided], dim=1)  # the logits that chose new tokens 1, 2, 3
    outputs = [torch.tensor([[7, 7, 1, 0, 0]]), torch.tensor([[7, 7, 0, 2, 3]]), truth]
    found = first_divergences(outputs, [truth] * 3, [rows] * 3, [2, 2, 2], limit)
    assert (found["lossless_mismatches"], found["lossless_divergences"]) == (1.0, 2.0)
    assert found["lossless_divergence_margin_to_threshold"] > 1.0


def test_leave_one_out_judges_each_variation_by_the_others_bands() -> None:
    from harness.noise import CaseNoise, leave_one_out

    record = CaseNoise.from_samples(
        {
            "reference": {"x": 1.0, "y": 5.0, "calibration_s": 2.0},
            "a": {"x": 1.1, "y": 5.0, "calibration_s": 9.0},  # moved x by 0.1: b's band is 2 x 0.04 = 0.08
            "b": {"x": 1.04, "y": 5.0, "calibration_s": 9.0},  # moved x by 0.04: a's band 0.2 covers it
            "repeat": {"x": 1.3, "y": 5.0, "calibration_s": 9.0},  # pinned repeats are not a variation
        },
        {},
        {},
    )
    assert leave_one_out([record], lambda name: name.endswith("_s")) == {"a": (1, 0), "b": (1, 1)}
