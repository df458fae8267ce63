"""The mutation self-test: the registry covers every check kind with realistic defects on cases the suites
have, the scoring counts what it should, and (e2e, the CI subset) each fast defect injected into the
libraries inside the workers is caught by a metric that holds on any machine."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from harness.commands.sensitivity import CaseRun, Catch, markdown, scores
from harness.mutations import MUTATIONS
from tests.conftest import ROOT

CHECKS = ("quant_accuracy", "ckpt_roundtrip", "kd_parity", "kd_trajectory", "spec_decode")


def test_every_check_kind_faces_at_least_three_defects_on_cases_the_suites_have() -> None:
    from harness.pipeline import collect
    from harness.suites.expand import Resources

    cases = {
        c.key: c
        for c in collect(sorted((ROOT / "suites").glob("*.yaml")), Resources(cpu_ranks=2, gpus=0), markexpr="cpu")
    }
    faced: Counter[str] = Counter()
    for mutation in MUTATIONS.values():
        assert mutation.cases and all(key in cases for key in mutation.cases), mutation.name
        assert not any(cases[key].known_defect for key in mutation.cases), (
            mutation.name
        )  # a known defect would blur the verdict
        faced.update({cases[key].check for key in mutation.cases})
    assert all(faced[check] >= 3 for check in CHECKS), faced
    assert {m.kind for m in MUTATIONS.values()} >= {
        "calibration statistic",
        "scale synchronisation across ranks",
        "state restore",
        "a loss term's temperature",
        "a draft position",
        "a router choice",
        "a slowed code path",
    }
    assert any(m.fast for m in MUTATIONS.values())


def test_a_defect_counts_once_however_many_of_its_cases_catch_it_and_portability_is_kept_apart() -> None:
    portable, exact = Catch("x", 1.0, 2.0, 0.1, True), Catch("y", 1.0, 1.0 + 1e-9, 0.0, False)
    runs = [
        CaseRun("a", "q/1", "quant_accuracy", catches=(portable,)),
        CaseRun("a", "q/2", "quant_accuracy"),
        CaseRun("b", "q/1", "quant_accuracy", catches=(exact,)),
        CaseRun("c", "k/1", "kd_parity", error="boom"),
        CaseRun("d", "k/1", "kd_parity"),
        CaseRun("e", "k/2", "kd_parity", skipped="GPU only"),
    ]
    total, table = scores(runs)
    assert (total.defects, total.caught, total.portable, total.missed) == (4, 3, 2, ["b", "d"])
    assert (table["quant_accuracy"].defects, table["quant_accuracy"].portable) == (2, 1)
    text = markdown(runs, total, table)
    assert (
        "**2 of 4 defects caught by a portable metric**" in text
        and "bit-exact only" in text
        and "**not caught**" in text
    )


def test_a_mutation_in_the_callers_environment_never_reaches_a_real_run(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Only a sensitivity run injects a defect: a HARNESS_MUTATION left in a shell is dropped by every launcher."""
    from harness.launchers.common import MUTATION_VARIABLE
    from harness.launchers.local import WorkerPool
    from harness.launchers.settings import LaunchSettings

    monkeypatch.setenv(MUTATION_VARIABLE, "quant-amax-clipped")
    monkeypatch.setenv("HARNESS_OTHER", "kept")
    passed = LaunchSettings(launcher="slurm", artifacts=tmp_path).passed_env()
    assert MUTATION_VARIABLE not in passed and passed["HARNESS_OTHER"] == "kept"
    pool = WorkerPool.__new__(WorkerPool)  # its environment only: no processes
    pool.world_size, pool.platform, pool.changes = 1, "cpu", None
    assert MUTATION_VARIABLE not in pool._env(0, "127.0.0.1:1", b"k", 2)
    pool.changes = lambda world: {MUTATION_VARIABLE: "quant-amax-clipped", "MKL_CBWR": None}
    env = pool._env(0, "127.0.0.1:1", b"k", 2)
    assert env[MUTATION_VARIABLE] == "quant-amax-clipped" and "MKL_CBWR" not in env
