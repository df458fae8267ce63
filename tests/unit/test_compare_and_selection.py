"""Tolerance rules, the compare step, baseline files, and case selection expressions."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from harness.baselines import BaselineStore, compare
from harness.records import Budget, CaseOutcome, CaseResult, Direction, Tolerance, Verdict
from harness.report import summary
from harness.selection import ExpressionError, compile_expression, select
from tests.support.cases import make_case


@pytest.mark.parametrize(
    ("measured", "baseline", "tolerance", "ok"),
    [
        (1.0, 1.0, Tolerance(), True),
        (1.0 + 1e-12, 1.0, Tolerance(), False),
        (1.05, 1.0, Tolerance(abs=0.1), True),
        (0.85, 1.0, Tolerance(abs=0.1), False),
        (1.09, 1.0, Tolerance(rel=0.1), True),
        (100.0, 1.0, Tolerance(rel=0.1, direction=Direction.HIGHER_IS_BETTER), True),
        (0.89, 1.0, Tolerance(rel=0.1, direction=Direction.HIGHER_IS_BETTER), False),
        (0.0, 1.0, Tolerance(abs=0.1, direction=Direction.LOWER_IS_BETTER), True),
        (1.2, 1.0, Tolerance(abs=0.1, direction=Direction.LOWER_IS_BETTER), False),
        (math.nan, 1.0, Tolerance(abs=1e9), False),
        # two-sided speed gate: 20% better than the baseline asks for a re-record
        (1.19, 1.0, Tolerance(rel=0.1, direction=Direction.HIGHER_IS_BETTER, refresh_rel=0.2), True),
        (1.21, 1.0, Tolerance(rel=0.1, direction=Direction.HIGHER_IS_BETTER, refresh_rel=0.2), False),
        (0.79, 1.0, Tolerance(rel=0.1, direction=Direction.LOWER_IS_BETTER, refresh_rel=0.2), False),
    ],
)
def test_tolerance_allows(measured: float, baseline: float, tolerance: Tolerance, ok: bool) -> None:
    assert tolerance.allows(measured, baseline) is ok
    assert Tolerance.from_json(tolerance.to_json()) == tolerance


def test_compare_record_and_fail_message(tmp_path: Path) -> None:
    store = BaselineStore(tmp_path)
    outcome = CaseOutcome(make_case(), {"x": 1.0, "speed": 2.0}, None, 1.0, "/art/case")
    assert compare(outcome, store, update=False, provenance={}).verdict is Verdict.NO_BASELINE
    recorded = compare(outcome, store, update=True, provenance={"commit": "abc"})
    assert recorded.verdict is Verdict.UPDATED
    saved = json.loads((tmp_path / "cpu" / "s.json").read_text())
    assert saved["cases"]["s/tiny-gpt/tp1pp1/none"] == {
        "metrics": {"x": 1.0, "speed": 2.0},
        "provenance": {"commit": "abc", "platform": "cpu", "environment": "cpu", "subjects": {}, "params": {}},
    }
    assert compare(outcome, store, update=False, provenance={}).verdict is Verdict.PASS
    worse = CaseOutcome(make_case(), {"x": 1.2, "speed": 2.5}, None, 1.0, "/art/case")
    result = compare(worse, store, update=False, provenance={})
    assert result.verdict is Verdict.FAIL
    assert result.message().splitlines() == [
        "s/tiny-gpt/tp1pp1/none [cpu]: fail",
        "  speed: measured 2.5, baseline 2, tolerance abs 0 + rel 0.1, higher_is_better (no noise record: judged as "
        "declared) -> pass",
        "  x: measured 1.2, baseline 1, tolerance abs 0.1 (no noise record: judged as declared) -> fail",
        "  artifacts: /art/case",
    ]
    missing = CaseOutcome(make_case(), {"x": 1.0}, None, 1.0, "/art/case")
    assert compare(missing, store, update=False, provenance={}).verdict is Verdict.FAIL  # a metric vanished


HERE = {"cpu_model": "AMD EPYC", "cpu_isa_flags": ["avx2"], "versions": {"torch": "2.13.0+cpu"}}
ELSEWHERE = {**HERE, "cpu_model": "Intel Xeon"}


def test_noise_widens_a_tolerance_by_the_rule_and_goldens_hold_only_on_their_fingerprint(tmp_path: Path) -> None:
    """On the baseline's fingerprint only the pinned repeats' spread widens a tolerance (a deterministic
    metric stays exact); on another machine every variation's does, and a step-exact golden (kd_trajectory's
    per-step losses) is shown, not judged."""
    from dataclasses import replace

    from harness.noise import MULTIPLIER, CaseNoise, noise_path, write_case_noise

    store = BaselineStore(tmp_path)
    case = replace(make_case(), check="kd_trajectory", tolerances={})
    compare(
        CaseOutcome(case, {"kd_loss_last": 1.0, "kd_loss@001": 5.0}, None, 1.0, "/a"),
        store,
        update=True,
        provenance=HERE,
    )
    runs = {
        "reference": {"kd_loss_last": 1.0, "kd_loss@001": 5.0},
        "repeat": {"kd_loss_last": 1.0, "kd_loss@001": 5.0},
        "unpinned": {"kd_loss_last": 1.003, "kd_loss@001": 5.2},
    }
    write_case_noise(noise_path(store.path("cpu", "s")), "s", "cpu", case.id, CaseNoise.from_samples(runs, {}, HERE))

    def judged(last: float, step: float, provenance: dict) -> dict[str, object]:
        result = compare(
            CaseOutcome(case, {"kd_loss_last": last, "kd_loss@001": step}, None, 1.0, "/a"),
            store,
            update=False,
            provenance=provenance,
        )
        return {m.name: m for m in result.metrics}

    same = judged(1.0 + 1e-9, 5.0, HERE)
    assert same["kd_loss_last"].verdict is Verdict.FAIL and same["kd_loss_last"].tolerance.abs == 0
    assert "on its fingerprint" in same["kd_loss_last"].note
    assert judged(1.0, 5.0, HERE)["kd_loss_last"].verdict is Verdict.PASS
    other = judged(1.005, 5.3, ELSEWHERE)
    assert other["kd_loss_last"].verdict is Verdict.PASS and other["kd_loss_last"].tolerance.abs == pytest.approx(
        MULTIPLIER * 0.003
    )
    assert other["kd_loss@001"].verdict is Verdict.PASS and "recording fingerprint" in other["kd_loss@001"].note
    assert judged(1.007, 5.0, ELSEWHERE)["kd_loss_last"].verdict is Verdict.FAIL
    assert judged(1.0, 5.3, HERE)["kd_loss@001"].verdict is Verdict.FAIL  # the golden holds where it was recorded


def test_a_timed_median_is_judged_no_tighter_than_its_own_and_its_baselines_interval(tmp_path: Path) -> None:
    from dataclasses import replace

    store = BaselineStore(tmp_path)
    case = replace(
        make_case(),
        check="spec_decode",
        params={"algorithm": "medusa", "train_steps": 0},
        tolerances={"speedup": Tolerance(rel=0.05, direction=Direction.HIGHER_IS_BETTER)},
    )
    compare(
        CaseOutcome(case, {"speedup": 1.5, "speedup_ci_half_width": 0.06}, None, 1.0, "/a"),
        store,
        update=True,
        provenance=HERE,
    )

    def speedup(value: float, half_width: float) -> object:
        result = compare(
            CaseOutcome(case, {"speedup": value, "speedup_ci_half_width": half_width}, None, 1.0, "/a"),
            store,
            update=False,
            provenance=HERE,
        )
        return next(m for m in result.metrics if m.name == "speedup")

    wide = speedup(1.38, 0.06)  # 8% down, inside the 95% band of two +-6% medians (hypot: 0.12 abs)
    assert wide.verdict is Verdict.PASS and "intervals" in wide.note
    assert speedup(1.3, 0.06).verdict is Verdict.FAIL


def test_errors_and_skips_are_not_compared(tmp_path: Path) -> None:
    store = BaselineStore(tmp_path)
    error = compare(CaseOutcome(make_case(), {}, "boom", 1.0, "/a"), store, update=True, provenance={})
    assert error.verdict is Verdict.ERROR and not error.ok and not (tmp_path / "cpu").exists()
    skipped = compare(CaseOutcome(make_case(), {}, None, 0.0, "", skipped="no GPU"), store, update=False, provenance={})
    assert skipped.verdict is Verdict.SKIPPED and skipped.ok


def test_known_defects_excuse_only_their_symptom_and_flag_a_fix(tmp_path: Path) -> None:
    from dataclasses import replace

    from harness.records import Budget, KnownDefect

    store = BaselineStore(tmp_path)
    # as in a real suite, the baseline is recorded with the defect present: x = 5
    compare(
        CaseOutcome(make_case(), {"x": 5.0, "speed": 2.0, "y": 1.0}, None, 1.0, "/a"), store, update=True, provenance={}
    )
    defective = replace(
        make_case(), known_defect=KnownDefect("upstream bug 123 makes x drift", {"x": Budget(min=3.0)}, affects=("y",))
    )

    def verdict(x: float, speed: float = 2.0, error: str | None = None, y: float = 1.0) -> CaseResult:
        return compare(
            CaseOutcome(defective, {"x": x, "speed": speed, "y": y}, error, 1.0, "/a"),
            store,
            update=False,
            provenance={},
        )

    shown = verdict(5.0)
    assert shown.verdict is Verdict.XFAIL and shown.ok
    assert shown.message().splitlines()[0] == (
        "s/tiny-gpt/tp1pp1/none [cpu]: xfail (known defect: upstream bug 123 makes x drift [symptom: x in [3, inf]])"
    )
    assert verdict(4.0).verdict is Verdict.XFAIL  # the defect moved x off its recorded value, still the defect
    both = verdict(5.0, speed=1.0)  # the symptom shows, but speed (not excused) fails too
    assert both.verdict is Verdict.FAIL and "metrics it does not excuse fail too" in both.message()
    other = verdict(1.0, speed=1.0)  # a failure the defect does not explain, with the symptom gone
    assert other.verdict is Verdict.FAIL and "not the known defect's symptom" in other.message()
    assert verdict(5.0, error="boom").verdict is Verdict.ERROR
    fixed = verdict(1.0, y=0.0)  # symptom gone; x and y (which the defect affects) left the defect's baselines
    assert fixed.verdict is Verdict.XPASS and not fixed.ok
    # with a budget on x (the defect breaches it), a symptom that no longer matches is a plain failure
    bounded = replace(defective, budgets={"x": Budget(max=2.0)})
    judged = compare(
        CaseOutcome(bounded, {"x": 5.0, "speed": 2.0, "y": 1.0}, None, 1.0, "/a"), store, update=False, provenance={}
    )
    assert judged.verdict is Verdict.XFAIL
    mismatched = replace(bounded, known_defect=replace(bounded.known_defect, symptom={"x": Budget(min=6.0)}))
    judged = compare(
        CaseOutcome(mismatched, {"x": 5.0, "speed": 2.0, "y": 1.0}, None, 1.0, "/a"), store, update=False, provenance={}
    )
    assert judged.verdict is Verdict.FAIL and "not the known defect's symptom" in judged.message()
    assert "FIXED? the known defect's symptom is gone; remove its known_defects entry" in fixed.message()
    assert summary([shown, fixed]).splitlines() == [
        "2 cases: 1 xfail, 1 xpass",
        "FIXED? 1 known defect(s) no longer show their symptom: s/tiny-gpt/tp1pp1/none[cpu]",
    ]


@pytest.mark.parametrize(
    ("expression", "words", "expected"),
    [
        ("ckpt and tp2", {"ckpt", "tp2"}, True),
        ("ckpt and tp2", {"ckpt"}, False),
        ("not int8_sq", {"int8_sq"}, False),
        ("(fp8 or int8_sq) and not pp2", {"int8_sq"}, True),
        ("tp2pp1->tp1pp1", {"tp2pp1->tp1pp1"}, True),
    ],
)
def test_expressions(expression: str, words: set[str], expected: bool) -> None:
    assert compile_expression(expression)(lambda w: w in words) is expected


@pytest.mark.parametrize("bad", ["a and", "(a or b", "a b", "and a", ")"])
def test_bad_expressions(bad: str) -> None:
    with pytest.raises(ExpressionError):
        compile_expression(bad)


def test_select_by_keyword_and_marker() -> None:
    cases = [
        make_case("s/m/tp2pp1/fp8", ("fp8", "tp2")),
        make_case("s/m/tp1pp1/fp8", ("fp8",)),
        make_case("s/m/tp1pp2->tp1pp1/none", ("none", "pp2")),
    ]
    assert [c.id for c in select(cases, keyword="tp1pp1")] == ["s/m/tp1pp1/fp8", "s/m/tp1pp2->tp1pp1/none"]
    assert [c.id for c in select(cases, markexpr="fp8 and not tp2")] == ["s/m/tp1pp1/fp8"]


def test_budget_fails_whatever_the_baseline(tmp_path: Path) -> None:
    case = make_case()
    case = type(case)(**{**case.__dict__, "budgets": {"x": Budget(min=-0.5)}})
    store = BaselineStore(tmp_path)
    outcome = CaseOutcome(case, {"x": -0.7, "speed": 1.0}, None, 1.0, "/a")
    result = compare(outcome, store, update=True, provenance={})
    assert result.verdict is Verdict.FAIL  # recording cannot launder a budget breach
    assert "x: measured -0.7, baseline none, tolerance abs 0.1, budget [-0.5, inf] -> fail" in result.message()
    ok = CaseOutcome(case, {"x": -0.2, "speed": 1.0}, None, 1.0, "/a")
    assert compare(ok, store, update=True, provenance={}).verdict is Verdict.UPDATED


def test_a_rerecord_counts_as_updated_only_what_the_old_baseline_would_not_have_passed(tmp_path: Path) -> None:
    """Memory and dates change on every run: a re-record of unchanged numbers must not call every case updated."""
    from dataclasses import replace

    from harness.records import INFORMATIONAL

    case = make_case()
    case = replace(case, tolerances={**case.tolerances, "peak_memory_mib": INFORMATIONAL})
    store = BaselineStore(tmp_path)

    def rerecord(metrics: dict[str, float]) -> CaseResult:
        return compare(CaseOutcome(case, metrics, None, 1.0, "/a"), store, update=True, provenance={})

    assert rerecord({"x": 1.0, "speed": 2.0, "peak_memory_mib": 500.0}).verdict is Verdict.UPDATED  # new
    assert rerecord({"x": 1.05, "speed": 2.0, "peak_memory_mib": 512.0}).verdict is Verdict.PASS  # within abs 0.1
    assert store.lookup("cpu", "s", case.id) == {"x": 1.05, "speed": 2.0, "peak_memory_mib": 512.0}  # still written
    assert rerecord({"x": 1.5, "speed": 2.0, "peak_memory_mib": 512.0}).verdict is Verdict.UPDATED  # beyond it
    assert rerecord({"x": 1.5, "peak_memory_mib": 512.0}).verdict is Verdict.UPDATED  # a metric gone


def test_a_one_gpu_run_says_which_multi_gpu_paths_went_untested() -> None:
    from dataclasses import replace

    one = replace(make_case("s/tiny-gpt/tp1pp1/none", ("s", "gpu")), platform="gpu")
    two = replace(make_case("s/tiny-gpt/tp2pp1/none", ("s", "gpu", "tp2")), platform="gpu", world_size=2)
    results = [
        CaseResult(CaseOutcome(one, {}, None, 1.0, "/a")),
        CaseResult(CaseOutcome(two, {}, None, 0.0, "", skipped="needs 2 GPUs, this machine has 1")),
    ]
    assert summary(results).splitlines()[-1] == (
        "UNTESTED: 1 GPU case(s) need more GPUs than this machine has: no multi-GPU NCCL collective ran, nor the "
        "layouts tp2"
    )
    assert "UNTESTED" not in summary(results[:1])
