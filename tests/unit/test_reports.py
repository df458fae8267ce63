"""The nightly report from a real SQLite history of real compared results: new failures and since
when, fixed, flaky, drift inside the baseline band with the run (and version change) where it began,
versions side by side; and the HTML in a real headless browser."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from harness.baselines import BaselineStore, compare
from harness.cli import main
from harness.records import CaseOutcome, CaseResult
from harness.reports.history import History
from harness.reports.html import html
from harness.reports.render import markdown
from harness.reports.trends import Analysis, Settings, analyse
from tests.support.cases import make_case

STABLE, FLAKY, DRIFTING = "s/tiny-gpt/tp1pp1/none", "s/tiny-gpt/tp2pp1/none", "s/tiny-gpt/tp1pp2/none"


def compared(tmp_path: Path, case_id: str, x: float) -> CaseResult:
    """``x`` judged against a recorded baseline of 1.0 with tolerance abs 0.1 (``make_case``)."""
    store = BaselineStore(tmp_path / "baselines")
    if store.lookup("cpu", "s", case_id) is None:
        compare(
            CaseOutcome(make_case(case_id), {"x": 1.0, "speed": 2.0}, None, 1.0, "/a"),
            store,
            update=True,
            provenance={},
        )
    return compare(
        CaseOutcome(make_case(case_id), {"x": x, "speed": 2.0}, None, 1.0, f"/artifacts/{case_id}"),
        store,
        update=False,
        provenance={},
    )


# run by run: (megatron-core version, {case: x}); the drifting case moves by 0.15 > 0.1 at run 4 but
# stays inside the baseline band until run 6; the flaky one fails every other run.
NIGHTS = [
    ("0.16.1", {STABLE: 1.0, FLAKY: 1.0, DRIFTING: 0.92}),
    ("0.16.1", {STABLE: 1.01, FLAKY: 1.5, DRIFTING: 0.93}),
    ("0.16.1", {STABLE: 1.0, FLAKY: 1.0, DRIFTING: 0.92}),
    ("0.19.2", {STABLE: 1.0, FLAKY: 1.5, DRIFTING: 1.07}),
    ("0.19.2", {STABLE: 1.3, FLAKY: 1.0, DRIFTING: 1.08}),
    ("0.19.2", {STABLE: 1.4, FLAKY: 1.5, DRIFTING: 1.11}),
]


@pytest.fixture
def history_path(tmp_path: Path) -> Path:
    path = tmp_path / "history.sqlite"
    history = History(path)
    for night, (mcore, values) in enumerate(NIGHTS):
        run_id = history.start_run(
            {"commit": f"c{night}", "versions": {"megatron-core": mcore, "nvidia-modelopt": "0.47.0"}}
        )
        for case_id, x in values.items():
            history.record(run_id, compared(tmp_path, case_id, x))
        history.finish_run(run_id)
    history.close()
    return path


def analysis_of(path: Path, settings: Settings) -> Analysis:
    history = History(path)
    try:
        return analyse(history.window(settings.runs), settings)
    finally:
        history.close()


def test_statuses_since_when_and_flakiness(history_path: Path) -> None:
    analysis = analysis_of(history_path, Settings(runs=20, drift_runs=2, drift_window=3))
    status = {s.key.split("[")[0]: s for s in analysis.cases}
    assert (
        status[STABLE].status == "still failing" and status[STABLE].since is not None and status[STABLE].since.id == 5
    )
    assert status[STABLE].detail == "x 1.4 vs 1"
    assert (status[FLAKY].status, status[FLAKY].flips) == ("flaky", 5)
    assert (
        status[DRIFTING].status == "new failure"
        and status[DRIFTING].since is not None
        and status[DRIFTING].since.id == 6
    )
    # a window of the last run only: the stable case's failure has no earlier run to start from
    short = analysis_of(history_path, Settings(runs=1))
    assert {s.key.split("[")[0]: s.status for s in short.cases}[STABLE] == "new failure"


def test_drift_inside_the_band_names_the_run_and_the_version_change(history_path: Path) -> None:
    analysis = analysis_of(history_path, Settings(runs=20, drift_runs=2, drift_window=3))
    drifts = {d.key.split("[")[0]: d for d in analysis.drifts if d.metric == "x"}
    drift = drifts[DRIFTING]
    assert drift.first.id == 4 and drift.before == pytest.approx(0.92) and drift.after == pytest.approx(1.08)
    assert drift.changes == "megatron-core 0.16.1 -> 0.19.2; commit c2 -> c3"
    # the stable case jumped at run 5 (1.0 -> 1.3): a drift too, from run 5; the flaky one is no drift
    assert drifts[STABLE].first.id == 5 and FLAKY not in drifts
    # the drift needs the move to last: asking for three runs beyond tolerance finds only the one that did
    longer = analysis_of(history_path, Settings(runs=20, drift_runs=3, drift_window=3))
    assert [d.key.split("[")[0] for d in longer.drifts if d.metric == "x"] == [DRIFTING]
    # nothing moved in 'speed' (2.0 every run): no drift, no regression
    assert not [d for d in analysis.drifts if d.metric == "speed"]
    assert not [r for r in analysis.regressions if r.metric == "speed"]


def test_markdown_tables_and_versions_side_by_side(history_path: Path) -> None:
    text = markdown(analysis_of(history_path, Settings(runs=20, drift_runs=2, drift_window=3)))
    assert "## Still failing (1)" in text and "## Flaky (1)" in text
    assert f"| {STABLE}[cpu] | fail | #5 " in text
    assert f"| {STABLE}[cpu] | x | 1 | 1.4 | +40.000% | abs 0.1 | fail |" in text
    assert f"| {DRIFTING}[cpu] | x | 0.92 | 1.08 | +0.16 | 0.1 | 1 | #4 " in text
    assert "| megatron-core 0.16.1 / modelopt 0.47.0 | megatron-core 0.19.2 / modelopt 0.47.0 |" in text
    assert f"| {STABLE}[cpu] | x | 1 | 1.4 |" in text  # the latest value under each version pair
    assert "| s | 3 pass | 3 fail |" in text  # compatibility: the suite's verdicts under each pair


def test_report_cli_writes_both_files(history_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "report"
    assert (
        main(["report", "--history", str(history_path), "--out", str(out), "--drift-runs", "2", "--drift-window", "3"])
        == 0
    )
    assert "1 still failing" in capsys.readouterr().out
    page = (out / "report.html").read_text()
    assert page.count('<svg class="trend"') == 6  # 3 cases x (x, speed)
    assert "http" not in page.replace('xmlns="http://www.w3.org/2000/svg"', "")  # self-contained: no external asset
    assert (out / "report.md").read_text().startswith("# posttrain-harness nightly report")
    assert main(["report", "--history", str(tmp_path / "nothing.sqlite"), "--out", str(out)]) == 2


def _browser() -> str | None:
    return shutil.which("chromium-headless-shell") or shutil.which("chromium")


@pytest.mark.skipif(
    _browser() is None and not os.environ.get("HARNESS_REQUIRE_BROWSER"),
    reason="no headless chromium here (.ci/run installs Debian's chromium-headless-shell)",
)
def test_html_report_renders_in_a_real_browser(history_path: Path, tmp_path: Path) -> None:
    from PIL import Image

    browser = _browser()
    assert browser is not None, "HARNESS_REQUIRE_BROWSER is set but no chromium is installed"
    page = tmp_path / "report.html"
    page.write_text(html(analysis_of(history_path, Settings(runs=20, drift_runs=2, drift_window=3))))
    flags = [
        "--no-sandbox",
        "--disable-gpu",
        "--hide-scrollbars",
        "--window-size=1200,2600",
        "--enable-logging=stderr",
        "--v=0",
    ]
    shot = tmp_path / "report.png"
    run = subprocess.run(
        [browser, *flags, f"--screenshot={shot}", page.as_uri()],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    console = [line for line in run.stderr.splitlines() if ":CONSOLE" in line]
    assert console == [], console  # no page errors, no failed resource loads
    dom = subprocess.run(
        [browser, *flags, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120, check=True
    ).stdout
    assert dom.count('<svg class="trend"') == 6 and "Drifts (2)" in dom
    # the plots were drawn: the measured lines' blue, the failed points' red and the band's green are on screen
    pixels = Image.open(shot).convert("RGB").getdata()
    colours = {"measured": (31, 119, 180), "failed": (214, 39, 40)}
    seen = {
        name: sum(1 for p in pixels if all(abs(a - b) <= 12 for a, b in zip(p, rgb, strict=True)))
        for name, rgb in colours.items()
    }
    band = sum(1 for r, g, b in pixels if g > r + 15 and g > b + 15)  # the translucent green band
    assert seen["measured"] > 500 and seen["failed"] > 20 and band > 2000, (seen, band)


def test_the_first_night_on_a_new_environment_reads_no_baseline_not_new_failures(tmp_path: Path) -> None:
    """Every case of a new GPU model or container is no-baseline; the run exits 0, so must the report's reading."""
    path = tmp_path / "history.sqlite"
    history = History(path)
    empty = BaselineStore(tmp_path / "no-baselines")
    for night, x in enumerate((1.0, 1.5)):  # night 2: a baseline exists now and the case fails it
        run_id = history.start_run({"commit": f"c{night}"})
        store = empty if night == 0 else BaselineStore(tmp_path / "baselines")
        outcome = CaseOutcome(make_case(STABLE), {"x": x}, None, 1.0, "/a")
        if night == 1:
            compare(CaseOutcome(make_case(STABLE), {"x": 1.0}, None, 1.0, "/a"), store, update=True, provenance={})
        history.record(run_id, compare(outcome, store, update=False, provenance={}))
        history.finish_run(run_id)
        status = analysis_of(path, Settings()).cases[0]
        assert (status.verdict, status.status) == (
            ("no-baseline", "no baseline") if night == 0 else ("fail", "new failure")
        )
        text = markdown(analysis_of(path, Settings()))
        assert ("## New failures" in text) is (night == 1), text
        assert ("## No baseline yet" in text) is (night == 0), text
    history.close()


def test_per_subject_layer_and_position_metrics_trend_and_only_step_losses_do_not(tmp_path: Path) -> None:
    """``@`` names a family member; only a training step's loss is a trajectory inside one run."""
    from harness.records import per_step

    assert per_step("kd_loss@007") and per_step("intermediate_loss@120")
    assert not any(
        per_step(n) for n in ("subject_delta_pts@anatomy", "layer_sqnr_db@03", "layer_sqnr_db@120", "draft_accuracy@2")
    )
    path = tmp_path / "history.sqlite"
    history = History(path)
    names = ("x", "subject_delta_pts@anatomy", "layer_sqnr_db@01", "kd_loss@001")
    for night, mcore in enumerate(("0.16.1", "0.16.1", "0.19.2")):
        run_id = history.start_run({"commit": f"c{night}", "versions": {"megatron-core": mcore}})
        outcome = CaseOutcome(make_case(STABLE), dict.fromkeys(names, 1.0 + night), None, 1.0, "/a")
        history.record(run_id, compare(outcome, BaselineStore(tmp_path / "b"), update=False, provenance={}))
        history.finish_run(run_id)
    history.close()
    analysis = analysis_of(path, Settings(runs=20, drift_runs=1, drift_window=2))
    assert {s.metric for s in analysis.series} == set(names) - {"kd_loss@001"}
    assert analysis.versions is not None
    assert {name for _, name, _ in analysis.versions.rows} == set(names) - {"kd_loss@001"}


def test_what_changed_names_the_environment_processor_and_full_container_and_series_do_not_mix_them(
    tmp_path: Path,
) -> None:
    from harness.reports.history import RunRow
    from harness.reports.trends import changes_between

    a = {"container": "NVIDIA_PYTORCH_VERSION=25.01", "environments": {"gpu": "gpu-nvidia-h100-80gb-hbm3"}}
    b = {"container": "NVIDIA_PYTORCH_VERSION=25.04", "environments": {"gpu": "gpu-nvidia-h200"}}
    said = changes_between(RunRow(1, "t1", "t1", a | {"cpu_model": "AMD EPYC"}), RunRow(2, "t2", "t2", b))
    assert "container NVIDIA_PYTORCH_VERSION=25.01 -> NVIDIA_PYTORCH_VERSION=25.04" in said
    assert "environments gpu=gpu-nvidia-h100-80gb-hbm3 -> gpu=gpu-nvidia-h200" in said
    assert "cpu_model AMD EPYC -> -" in said
    path = tmp_path / "history.sqlite"
    history = History(path)
    for night, environment in enumerate(("cpu-x86_64-avx2", "cpu-x86_64-avx2", "cpu-aarch64-native")):
        run_id = history.start_run({"commit": f"c{night}", "environments": {"cpu": environment}})
        outcome = CaseOutcome(make_case(STABLE), {"x": 1.0 + night}, None, 1.0, "/a")
        history.record(run_id, compare(outcome, BaselineStore(tmp_path / "b"), update=False, provenance={}))
        history.finish_run(run_id)
    history.close()
    (series,) = analysis_of(path, Settings(runs=20, drift_runs=1, drift_window=2)).series
    assert series.environment == "cpu-aarch64-native" and [run.id for run, _ in series.points] == [3]
