"""A case record for tests that judge, store or report results without running a worker."""

from __future__ import annotations

from harness.models.zoo import ZOO
from harness.records import Case, Direction, Layout, Tolerance


def make_case(case_id: str = "s/tiny-gpt/tp1pp1/none", markers: tuple[str, ...] = ("s", "cpu")) -> Case:
    return Case(
        id=case_id,
        suite="s",
        check="ckpt_roundtrip",
        model="tiny-gpt",
        model_spec=ZOO["tiny-gpt"],
        layout=Layout(),
        optimization="none",
        params={},
        platform="cpu",
        world_size=1,
        markers=markers,
        tolerances={"x": Tolerance(abs=0.1), "speed": Tolerance(rel=0.1, direction=Direction.HIGHER_IS_BETTER)},
        budgets={},
        timeout_s=10,
        seed=1,
        source="s.yaml:1",
    )
