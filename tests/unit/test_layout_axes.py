"""Expert, sequence and virtual-pipeline parallelism as layout axes: in case ids and markers, impossible
combinations rejected with file and line before any worker starts, and (real ranks) the same logits as TP1."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.suites.expand import Resources, expand
from harness.suites.load import load_suites
from harness.suites.yaml_lines import SuiteError

FOUR_RANKS = Resources(cpu_ranks=4, gpus=0)
SUITE = "suite: axes\ncheck: ckpt_roundtrip\nmatrix:\n  model: [{model}]\n  layout:\n{layouts}"


def suite(write_suite, model: str, *layouts: str) -> Path:
    return write_suite(SUITE.format(model=model, layouts="".join(f"    - {layout}\n" for layout in layouts)))


def test_new_axes_name_their_cases_and_markers_and_dense_ids_stay(write_suite) -> None:
    cases = expand(
        load_suites(
            [
                suite(
                    write_suite,
                    "tiny-moe",
                    "{tp: 1, pp: 1}",
                    "{tp: 1, pp: 1, ep: 2}",
                    "{tp: 2, pp: 1, sp: true}",
                    "{tp: 2, pp: 1, ep: 2}",
                )
            ]
        ),
        FOUR_RANKS,
    )
    by_id = {c.id: c for c in cases}
    assert sorted(by_id) == [
        "axes/tiny-moe/tp1pp1/none",
        "axes/tiny-moe/tp1pp1ep2/none",
        "axes/tiny-moe/tp2pp1ep2/none",
        "axes/tiny-moe/tp2pp1sp/none",
    ]
    assert by_id["axes/tiny-moe/tp1pp1ep2/none"].world_size == 2
    assert by_id["axes/tiny-moe/tp2pp1ep2/none"].world_size == 4
    assert {"ep2", "tp2"} <= set(by_id["axes/tiny-moe/tp2pp1ep2/none"].markers)
    assert {"sp", "tp2"} <= set(by_id["axes/tiny-moe/tp2pp1sp/none"].markers)
    assert not {"ep2", "sp"} & set(by_id["axes/tiny-moe/tp1pp1/none"].markers)


@pytest.mark.parametrize(
    ("model", "layout", "message"),
    [
        (
            "tiny-gpt",
            "{tp: 1, pp: 1, ep: 2}",
            "ep=2 (expert parallel) needs a mixture-of-experts model; tiny-gpt is dense",
        ),
        ("tiny-moe", "{tp: 1, pp: 1, ep: 3}", "num_moe_experts 4 of model tiny-moe is not divisible by ep=3"),
        ("tiny-gpt", "{tp: 1, pp: 1, sp: true}", "sp (sequence parallel) needs tp > 1"),
        ("tiny-gpt", "{tp: 1, pp: 1, vpp: 2}", "vpp=2 (virtual pipeline stages) needs pp > 1"),
        ("tiny-gpt", "{tp: 1, pp: 2, vpp: 3}", "num_layers 4 of model tiny-gpt is not divisible by pp x vpp=6"),
    ],
)
def test_impossible_layouts_are_rejected_with_file_and_line(write_suite, model: str, layout: str, message: str) -> None:
    path = suite(write_suite, model, layout)
    with pytest.raises(SuiteError) as info:
        expand(load_suites([path]), Resources(cpu_ranks=8, gpus=0))
    assert any(line.startswith(f"{path}:6:") and message in line for line in info.value.problems), info.value.problems


def test_virtual_stages_are_named_and_layouts_refused_where_checks_or_modelopt_cannot_run_them(write_suite) -> None:
    cases = expand(load_suites([suite(write_suite, "tiny-gpt", "{tp: 1, pp: 2, vpp: 2}")]), FOUR_RANKS)
    assert [(c.id, c.world_size, "vpp2" in c.markers) for c in cases] == [("axes/tiny-gpt/tp1pp2vpp2/none", 2, True)]
    refusals = {
        "check quant_accuracy does not run virtual pipeline stages": "suite: q\ncheck: quant_accuracy\nmatrix:\n  "
        "model: [tiny-gpt]\n"
        "  layout:\n    - {tp: 1, pp: 2, vpp: 2}\n  optimization: [fp8]\n",
        "vpp=2: modelopt saves and restores its state for one model chunk only": "suite: c\ncheck: "
        "ckpt_roundtrip\nmatrix:\n  model: [tiny-gpt]\n  layout:\n    - {tp: 1, pp: 2, vpp: 2}\n"
        "  optimization: [int8_sq]\n",
        "tp=2 with ep=2: modelopt's quantized MoE experts refuse tensor and expert parallelism together": "suite: "
        "m\ncheck: ckpt_roundtrip\nmatrix:\n  model: [tiny-moe]\n  layout:\n    - {tp: 2, pp: 1, ep: 2}\n"
        "  optimization: [fp8]\n",
    }
    for message, text in refusals.items():
        path = write_suite(text)
        with pytest.raises(SuiteError) as info:
            expand(load_suites([path]), FOUR_RANKS)
        assert any(line.startswith(f"{path}:6:") and message in line for line in info.value.problems), (
            info.value.problems
        )


def test_mamba_hybrid_cases_exist_and_skip_on_cpu_with_the_measured_reason(write_suite) -> None:
    from harness.schedule import skip_reason

    cases = expand(
        load_suites([suite(write_suite, "tiny-mamba-hybrid", "{tp: 1, pp: 1}", "{tp: 2, pp: 1}")]), FOUR_RANKS
    )
    assert [c.id for c in cases] == ["axes/tiny-mamba-hybrid/tp1pp1/none", "axes/tiny-mamba-hybrid/tp2pp1/none"]
    for case in cases:
        reason = skip_reason(case, FOUR_RANKS)
        assert reason is not None and reason.startswith(
            "GPU only: model tiny-mamba-hybrid: Mamba layers need mamba_ssm"
        ), reason
    with pytest.raises(SuiteError) as info:
        expand(load_suites([suite(write_suite, "tiny-mamba-hybrid", "{tp: 1, pp: 2}")]), FOUR_RANKS)
    assert any(
        "tiny-mamba-hybrid is Mamba-hybrid: the harness builds its hybrid stack without pipeline stages" in line
        for line in info.value.problems
    ), info.value.problems


@pytest.mark.parametrize("cp", [2, 4])
def test_context_parallel_shards_are_megatrons_load_balanced_chunks_and_gather_back(cp: int) -> None:
    import torch

    from harness.runtime.forward import context_shard, context_unshard

    sequence = torch.arange(2 * 4 * cp * 3).reshape(2, 4 * cp, 3)  # [batch, seq, hidden]
    shards = [context_shard(sequence, cp, rank) for rank in range(cp)]
    # rank 0 holds the first and the last of 2 x cp chunks (megatron's get_batch_on_this_cp_rank)
    assert (
        shards[0][:, :2].tolist() == sequence[:, :2].tolist() and shards[0][:, 2:].tolist() == sequence[:, -2:].tolist()
    )
    assert torch.equal(context_unshard(shards), sequence)


def test_context_parallel_cases_run_in_bf16_and_skip_on_cpu_with_the_reason(write_suite) -> None:
    """TE has no fp32 attention backend under context parallelism: fp32 + cp is refused before start."""
    from harness.schedule import skip_reason

    with pytest.raises(SuiteError, match=r"suite.yaml:6: matrix.layout\[0\]: cp=2 in fp32: Transformer Engine has no"):
        expand(load_suites([suite(write_suite, "tiny-gpt", "{tp: 1, pp: 1, cp: 2}")]), FOUR_RANKS)
    bf16 = suite(write_suite, "tiny-gpt", "{tp: 1, pp: 1, cp: 2}")
    bf16.write_text(bf16.read_text() + "  dtype: [bf16]\n")
    (case,) = expand(load_suites([bf16]), FOUR_RANKS)
    assert (case.id, case.world_size, "cp2" in case.markers) == ("axes/tiny-gpt/tp1pp1cp2/none/bf16", 2, True)
    reason = skip_reason(case, FOUR_RANKS)
    assert reason is not None and "DotProductAttention asserts context_parallel_size == 1" in reason, reason


def test_only_a_withdrawable_cpu_adaptation_can_be_withdrawn() -> None:
    from harness.runtime.cpu_compat import withdrawn

    with (
        pytest.raises(ValueError, match="no CPU adaptation 'cpu-current-device' can be withdrawn"),
        withdrawn("cpu-current-device"),
    ):
        pass


# Two gloo ranks: a model's weights saved whole at TP1, loaded under each layout, logits compared with TP1's.
