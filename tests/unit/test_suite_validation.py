"""Malformed suites and impossible layouts are rejected with file, line and key, one line each."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from harness.suites.expand import Resources, expand
from harness.suites.load import load_suites
from harness.suites.yaml_lines import SuiteError
from tests.conftest import ROOT

TWO_RANKS = Resources(cpu_ranks=2, gpus=0)

GOOD = """\
suite: demo
check: ckpt_roundtrip
matrix:
  model: [tiny-gpt]
  layout:
    - {tp: 1, pp: 1}
    - {tp: 2, pp: 1}
  optimization: [none, int4_awq]
  reload_layout: [same, {tp: 1, pp: 1}]
"""


def problems(path: Path, resources: Resources = TWO_RANKS) -> list[str]:
    with pytest.raises(SuiteError) as info:
        expand(load_suites([path]), resources)
    lines = str(info.value).splitlines()
    assert lines == info.value.problems  # one line per problem
    return lines


def test_good_suite_expands(write_suite) -> None:
    cases = expand(load_suites([write_suite(GOOD)]), TWO_RANKS)
    assert sorted(c.id for c in cases) == sorted(
        [
            "demo/tiny-gpt/tp1pp1/none",
            "demo/tiny-gpt/tp1pp1/int4_awq",
            "demo/tiny-gpt/tp2pp1/none",
            "demo/tiny-gpt/tp2pp1/int4_awq",
            "demo/tiny-gpt/tp2pp1->tp1pp1/none",
            "demo/tiny-gpt/tp2pp1->tp1pp1/int4_awq",
        ]
    )


def test_typo_in_top_level_key(write_suite) -> None:
    path = write_suite(GOOD.replace("matrix:", "matrix:", 1) + "tolerence: {}\n")
    assert problems(path) == [
        f"{path}:10: tolerence: unknown key; a suite takes suite, check, description, markers, platforms, slow, "
        "timeout_s, seed, params, models, matrix, exclude, tolerances, budgets, overrides, known_defects"
    ]


def test_every_problem_of_a_suite_in_one_run(write_suite) -> None:
    """A duplicate key, a top-level typo, an unknown `when:` key and an impossible layout: four stages
    of validation, one report."""
    text = GOOD.replace(
        "check: ckpt_roundtrip\n", "check: ckpt_roundtrip\ntimeout_s: 60\ntimeout_s: 90\ntolerence: {}\n"
    )
    text = text.replace("    - {tp: 2, pp: 1}\n", "    - {tp: 1, pp: 3}\n")
    text += "overrides:\n  - when: {optimisation: int4_awq}\n    tolerances: {max_abs_logit_diff: {abs: 1.0}}\n"
    path = write_suite(text)
    found = [line.removeprefix(f"{path}:") for line in problems(path, Resources(cpu_ranks=4, gpus=0))]
    assert found == [
        "4: timeout_s: duplicate key",
        "5: tolerence: unknown key; a suite takes suite, check, description, markers, platforms, slow, timeout_s, "
        "seed, params, models, "
        "matrix, exclude, tolerances, budgets, overrides, known_defects",
        "14: overrides[0].when.optimisation: unknown key; keys are model, layout, optimization, dtype, platform or "
        "params of ckpt_roundtrip",
        "10: matrix.layout[1]: num_layers 4 of model tiny-gpt is not divisible by pp=3",
    ]


def test_typo_in_matrix_axis(write_suite) -> None:
    path = write_suite(GOOD.replace("reload_layout:", "reload_layuot:"))
    [line] = problems(path)
    assert line.startswith(f"{path}:9: matrix.reload_layuot: unknown key")


def test_unknown_model(write_suite) -> None:
    path = write_suite(GOOD.replace("[tiny-gpt]", "[tiny-gtp]"))
    [line] = problems(path)
    assert line.startswith(f"{path}:4: matrix.model[0]: unknown model 'tiny-gtp'")


def test_heads_not_divisible_by_tp(write_suite) -> None:
    path = write_suite(GOOD.replace("{tp: 2, pp: 1}\n  opt", "{tp: 3, pp: 1}\n  opt"))
    found = problems(path, Resources(cpu_ranks=8, gpus=0))
    assert f"{path}:7: matrix.layout[1]: num_attention_heads 8 of model tiny-gpt is not divisible by tp=3" in found
    assert all(line.startswith(f"{path}:7: matrix.layout[1]: ") for line in found)


def test_reload_layout_is_validated_too(write_suite) -> None:
    path = write_suite(GOOD.replace("reload_layout: [same, {tp: 1, pp: 1}]", "reload_layout: [same, {tp: 1, pp: 3}]"))
    found = problems(path, Resources(cpu_ranks=8, gpus=0))
    assert f"{path}:9: matrix.reload_layout[1]: num_layers 4 of model tiny-gpt is not divisible by pp=3" in found


def test_more_ranks_than_the_machine_has(write_suite) -> None:
    path = write_suite(GOOD.replace("{tp: 2, pp: 1}\n  opt", "{tp: 2, pp: 2}\n  opt"))
    [line] = problems(path)
    assert line == f"{path}:7: matrix.layout[1]: needs 4 ranks but this machine offers 2 cpu ranks"


def test_gpu_cases_without_gpus_are_not_rejected(write_suite) -> None:
    path = write_suite("platforms: [gpu]\n" + GOOD.replace("{tp: 2, pp: 1}\n  opt", "{tp: 2, pp: 4}\n  opt"))
    assert len(expand(load_suites([path]), TWO_RANKS)) == 6


def test_a_one_gpu_machine_skips_the_cases_that_need_more_gpus(write_suite) -> None:
    from harness.schedule import schedule

    one_gpu = Resources(cpu_ranks=2, gpus=1, gpu_name="NVIDIA H100 80GB HBM3")
    path = write_suite("platforms: [gpu]\n" + GOOD)
    plan = schedule(expand(load_suites([path]), one_gpu), one_gpu)  # every suite has tp2 layouts: not a suite error
    skips = {item.case.id: item.skip for item in plan}
    assert skips["demo/tiny-gpt/tp1pp1/none"] is None
    assert skips["demo/tiny-gpt/tp2pp1/none"] == "needs 2 GPUs, this machine has 1"
    assert skips["demo/tiny-gpt/tp2pp1->tp1pp1/int4_awq"] == "needs 2 GPUs, this machine has 1"


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (
            lambda t: t.replace("[none, int4_awq]", "[none, int3_awq]"),
            ":8: matrix.optimization[1]: unknown optimization 'int3_awq'",
        ),
        (
            lambda t: t.replace("check: ckpt_roundtrip", "check: ckpt_rondtrip"),
            ":2: check: unknown check 'ckpt_rondtrip'",
        ),
        (
            lambda t: t + "tolerances:\n  max_abs_logit_dif: {abs: 0}\n",
            ":11: tolerances.max_abs_logit_dif: unknown metric",
        ),
        (
            lambda t: t + "tolerances:\n  max_abs_logit_diff: {abs: -1}\n",
            ":11: tolerances.max_abs_logit_diff.abs: Input should be greater",
        ),
        (lambda t: t + "exclude:\n  - {layuot: {tp: 2}}\n", ":11: exclude[0].layuot: unknown key"),
        (lambda t: t + "params: {decode_tokens: 0}\n", ":10: params.decode_tokens: Input should be greater than 0"),
        (lambda t: t + "params: {reload_layout: same}\n", ":10: params.reload_layout: also a matrix axis"),
        (
            lambda t: t + "overrides:\n  - when: {optimization: none}\n    params: {reload_layout: same}\n",
            ":12: overrides[0].params.reload_layout: also a matrix axis",
        ),
        (
            lambda t: t + "overrides:\n  - when: {optimization: none}\n    params: {decode_tokns: 4}\n",
            ":12: overrides[0].params.decode_tokns: unknown key",
        ),
        (
            lambda t: t + "overrides:\n  - when: {optimization: none}\n    params: {decode_tokens: 0}\n",
            ":12: overrides[0].params.decode_tokens: Input should be greater than 0",
        ),
        (
            lambda t: t.replace("{tp: 1, pp: 1}\n    - {tp: 2", "{tp: 1, pp: 1, dp: 2}\n    - {tp: 2"),
            ":6: matrix.layout[0].dp: Extra inputs",
        ),
        (lambda t: t + "suite: again\n", ":10: suite: duplicate key"),
        (lambda t: t.replace("  model: [tiny-gpt]", "  model: [tiny-gpt"), ":5: <yaml>:"),
    ],
)
def test_one_line_errors(write_suite, edit, expected: str) -> None:
    path = write_suite(edit(GOOD))
    found = problems(path)
    assert any(line.startswith(f"{path}{expected}") for line in found), found


def test_an_override_sets_params_of_the_cases_it_names_and_no_id_changes(write_suite) -> None:
    plain = {c.id: c for c in expand(load_suites([write_suite(GOOD)]), TWO_RANKS)}
    path = write_suite(
        GOOD
        + "overrides:\n  - when: {optimization: int4_awq, layout: {tp: 2, pp: 1}}\n    params: {decode_tokens: 3}\n"
    )
    cases = {c.id: c for c in expand(load_suites([path]), TWO_RANKS)}
    assert cases.keys() == plain.keys()
    changed = {case_id for case_id, case in cases.items() if case.params != plain[case_id].params}
    assert changed == {"demo/tiny-gpt/tp2pp1/int4_awq", "demo/tiny-gpt/tp2pp1->tp1pp1/int4_awq"}
    assert all(cases[case_id].params["decode_tokens"] == 3 for case_id in changed)


def test_real_suites_are_valid() -> None:
    cases = expand(load_suites(sorted((ROOT / "suites").glob("*.yaml"))), TWO_RANKS)
    ckpt = [c for c in cases if c.suite == "ckpt" and c.platform == "cpu"]
    assert len(ckpt) >= 8
    tokens = {c.id.split("/")[2] for c in ckpt}
    assert {"tp1pp1", "tp2pp1", "tp1pp2", "tp2pp1->tp1pp1", "tp1pp1->tp2pp1", "tp1pp2->tp1pp1"} <= tokens
    assert len({c.optimization for c in ckpt} - {"none"}) >= 2


def test_cli_reports_suite_errors_without_traceback(write_suite, capsys) -> None:
    from harness.cli import EXIT_USAGE, main

    path = write_suite(textwrap.dedent(GOOD).replace("[tiny-gpt]", "[nope]"))
    assert main(["list", str(path)]) == EXIT_USAGE
    err = capsys.readouterr().err
    from harness.models.zoo import ZOO

    known = ", ".join(ZOO)  # every zoo model, in the zoo's order
    assert err.strip() == f"harness: {path}:4: matrix.model[0]: unknown model 'nope'; known: {known}"


def test_quant_suite_covers_formats_and_layouts() -> None:
    root = ROOT
    cases = expand(load_suites([root / "suites" / "quant.yaml"]), TWO_RANKS)
    runnable = [c for c in cases if c.platform == "cpu" and c.optimization != "nvfp4"]
    assert len(runnable) >= 8
    assert {c.layout.tp for c in runnable} == {1, 2}
    assert {"fp8", "int8_sq", "int4_awq", "w4a8_awq"} <= {c.optimization for c in runnable}
    int8 = next(c for c in cases if c.optimization == "int8_sq")
    assert int8.budgets["accuracy_delta_pts"].min == -0.5  # the suite's absolute budget, via an override


def test_an_override_may_name_the_platform(write_suite) -> None:
    """One suite, two platforms, a budget per platform (spec.yaml's speedup interval: +-5% CPU, +-2% GPU)."""
    text = GOOD.replace("check: ckpt_roundtrip\n", "check: ckpt_roundtrip\nplatforms: [cpu, gpu]\n")
    text += "overrides:\n  - when: {platform: gpu}\n    budgets: {max_abs_logit_diff: {max: 0.5}}\n"
    cases = expand(load_suites([write_suite(text)]), TWO_RANKS)
    limits = {
        platform: {
            (b.max if (b := c.budgets.get("max_abs_logit_diff")) else None) for c in cases if c.platform == platform
        }
        for platform in ("cpu", "gpu")
    }
    assert limits["gpu"] == {0.5} and 0.5 not in limits["cpu"]  # every GPU case, no CPU case
    bad = write_suite(text.replace("{platform: gpu}", "{platform: tpu}"))
    [line] = problems(bad)
    assert line == f"{bad}:12: overrides[0].when.platform: Input should be 'cpu' or 'gpu'"


def test_yaml_merge_keys_share_matrix_parts(write_suite) -> None:
    """``<<: *one`` works as in ``yaml.safe_load``; a stated key overrides a merged one without being a duplicate."""
    shared = GOOD.replace("- {tp: 1, pp: 1}\n    - {tp: 2, pp: 1}", "- &one {tp: 1, pp: 1}\n    - {<<: *one, tp: 2}")
    shared = shared.replace("[same, {tp: 1, pp: 1}]", "[same, *one]")
    assert "<<: *one" in shared
    plain = expand(load_suites([write_suite(GOOD)]), TWO_RANKS)
    assert expand(load_suites([write_suite(shared)]), TWO_RANKS) == plain


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("suite: demo\nmatrix: &m\n  model: *m\n", ":2: <yaml>: an alias refers to a node that contains it"),
        ("suite: demo\n? [a, b]\n: 1\n", ":2: <top>: a key must be a plain value, not a sequence"),
        ("suite: demo\nmatrix:\n  <<: 3\n", ":3: matrix: expected a mapping or list of mappings for merging"),
        (
            "a: &a [x, x, x, x, x, x, x, x, x, x]\n"
            + "".join(f"{n}: &{n} [{', '.join([f'*{p}'] * 10)}]\n" for p, n in zip("abcdefgh", "bcdefghi", strict=True))
            + "suite: demo\n",
            "<yaml>: aliases expand this document past 100000 values",
        ),
    ],
)
def test_yaml_that_safe_load_refuses_or_explodes_is_one_line(write_suite, text: str, expected: str) -> None:
    path = write_suite(text)
    found = problems(path)
    assert any(line.startswith(str(path)) and expected in line for line in found), found


def test_a_quoted_number_is_refused_not_coerced(write_suite) -> None:
    path = write_suite(GOOD.replace("- {tp: 2, pp: 1}", '- {tp: "2", pp: 1}') + 'tolerances:\n  x: {abs: "0.1"}\n')
    found = problems(path)
    assert f"{path}:7: matrix.layout[1].tp: Value error, a number, not the string '2' (quoted in the YAML?)" in found


def test_a_bad_matrix_entry_does_not_hide_the_files_other_problems(write_suite) -> None:
    """A required key with one bad entry used to stop validation there: every other problem came one run later."""
    text = GOOD.replace("- {tp: 2, pp: 1}", '- {tp: "2", pp: 1}').replace("int4_awq]", "int3_awq]")
    path = write_suite(text + "tolerances:\n  max_abs_logit_dif: {abs: 0}\n")
    found = [line.split(": ")[1] for line in problems(path)]
    assert found == ["matrix.layout[1].tp", "matrix.optimization[1]", "tolerances.max_abs_logit_dif"], found


@pytest.mark.parametrize("command", ["run", "list", "report", "history", "baselines", "noise", "sensitivity", "models"])
def test_every_subcommand_help_says_what_its_exit_status_means(command: str, capsys) -> None:
    from harness.cli import main

    with pytest.raises(SystemExit):
        main([command, "--help"])
    assert "exit codes: 0 passed" in " ".join(capsys.readouterr().out.split())


def test_block_quant_reshards_that_cannot_load_are_refused_before_start(write_suite) -> None:
    """INT4 AWQ keeps an amax per 128-wide block of each rank's shard; where two layouts cut a row-parallel input
    into different block counts the load fails (measured: 'Global shape mismatch for loaded (256, 2) and expected
    (256, 4) ... linear_proj.weight_quantizer._amax' for tiny-llama-ffn688 TP1 -> TP4). Equal counts load."""
    from harness.optimizations.quantize import _blocks

    assert [_blocks(688, tp, 128) for tp in (1, 2, 4)] == [6, 6, 8]
    assert [_blocks(256, tp, 128) for tp in (1, 2, 4)] == [2, 2, 4]
    text = (
        "suite: demo\ncheck: ckpt_roundtrip\nmatrix:\n  model: [tiny-llama-ffn688]\n  layout: [{tp: 1, pp: 1}]\n"
        "  optimization: [int4_awq, w4a8_awq, fp8]\n  reload_layout: [{tp: 2, pp: 1}, {tp: 4, pp: 1}]\n"
    )
    found = problems(write_suite(text), Resources(cpu_ranks=4, gpus=0))
    assert len(found) == 2, found  # linear_proj and linear_fc2, TP1 -> TP4 only (int4_awq's and w4a8_awq's: one line)
    assert found[0].endswith(
        ":7: matrix.reload_layout[1]: tp1pp1 -> tp4pp1 cannot load: linear_proj's input 256 is 256 per rank at "
        "tp=1 (2 blocks of 128 in all) and 64 at tp=4 (4): the global amax shapes of its weight quantizer differ "
        "(dist_checkpointing: Global shape mismatch)"
    )
    assert "linear_fc2's input 688 is 688 per rank at tp=1 (6 blocks of 128 in all) and 172 at tp=4 (8)" in found[1]
    fine = text.replace(", {tp: 4, pp: 1}", "")
    cases = expand(load_suites([write_suite(fine)]), Resources(cpu_ranks=4, gpus=0))
    assert sorted(c.id for c in cases) == [
        f"demo/tiny-llama-ffn688/tp1pp1->tp2pp1/{o}" for o in ("fp8", "int4_awq", "w4a8_awq")
    ]


def test_kv_cache_quantization_cannot_vanish_unnoticed_on_gpu() -> None:
    cases = expand(load_suites([ROOT / "suites" / "quant.yaml"]), TWO_RANKS)
    kv = [c for c in cases if c.optimization == "fp8+fp8_kv"]
    assert {c.platform for c in kv} == {"cpu", "gpu"}
    for case in kv:
        budget = case.budgets.get("kv_quantizers_enabled")
        assert (budget is not None and budget.min == 1) is (case.platform == "gpu"), case.id


def test_mamba_gpu_cases_skip_with_the_reason_where_its_kernel_packages_are_missing() -> None:
    from harness.schedule import schedule

    one_gpu = Resources(cpu_ranks=2, gpus=2, gpu_name="NVIDIA H100 80GB HBM3", mamba_missing=("mamba_ssm",))
    plan = schedule(expand(load_suites([ROOT / "suites" / "ckpt_mamba.yaml"]), one_gpu), one_gpu)
    gpu = [item for item in plan if item.case.platform == "gpu"]
    assert gpu and all(item.skip is not None and "from mamba_ssm: not importable here" in item.skip for item in gpu)
    with_kernels = Resources(cpu_ranks=2, gpus=2, gpu_name="NVIDIA H100 80GB HBM3")
    assert all(item.skip is None for item in schedule([item.case for item in gpu], with_kernels))


def test_a_users_own_reshard_suite_gets_the_checks_invariants_without_overrides(write_suite) -> None:
    """The reshard invariants live in the check (parity bound, decisive flips), not in suites/ckpt.yaml: a user's
    INT8-SQ or bf16 reshard suite is judged by the same budgets, and none asks for 0 free-running mismatches."""
    text = (
        "suite: mine\ncheck: ckpt_roundtrip\nmatrix:\n  model: [tiny-gpt]\n  layout: [{tp: 2, pp: 1}]\n"
        "  optimization: [int8_sq]\n  dtype: [fp32, bf16]\n  reload_layout: [{tp: 1, pp: 1}]\n"
    )
    for case in expand(load_suites([write_suite(text)]), TWO_RANKS):
        assert case.budgets["logit_error_to_bound"].max == 1.0 and case.budgets["logit_control_to_bound"].min == 1.0
        assert case.budgets["greedy_decisive_flips"].max == 0.0 and "greedy_token_mismatches" not in case.budgets
    assert "greedy_token_mismatches" not in (ROOT / "suites" / "ckpt.yaml").read_text()
