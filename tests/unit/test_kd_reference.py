"""KD losses: properties of the harness's reference and of modelopt's own loss modules (called
directly at TP1, in this process), their agreement on random logits, and KD suites that are
rejected before any worker starts."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from harness.checks import get_check
from harness.evals import kd_reference as ref
from harness.models.zoo import ZOO
from harness.suites.expand import Resources, expand
from harness.suites.load import load_suite
from harness.suites.yaml_lines import SuiteError


def _logits(seed: int, scale: float, vocab: int = 32, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    return (torch.randn(2, 3, vocab, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * scale).to(
        dtype
    )


@pytest.fixture(scope="module")
def modelopt_losses():  # noqa: ANN201 - returns modelopt's loss classes bound to a TP1 config
    from megatron.core.transformer import TransformerConfig
    from modelopt.torch.distill.plugins.megatron import LogitsKLLoss, TopKLogitsKLLoss

    config = TransformerConfig(num_layers=1, hidden_size=8, num_attention_heads=1, use_cpu_initialization=True)

    def kl(student: torch.Tensor, teacher: torch.Tensor, temperature: float, top_k: int | None) -> float:
        loss = (
            LogitsKLLoss(config, temperature=temperature)
            if top_k is None
            else TopKLogitsKLLoss(config, temperature, top_k=top_k)
        )
        per_token, _, _ = loss(student.transpose(0, 1), teacher.transpose(0, 1))  # megatron's [s, b, v] in, [b, s] out
        return float(per_token.double().mean())

    return kl


seeds = st.integers(0, 10_000)
scales = st.floats(0.1, 8.0)
temperatures = st.floats(0.25, 4.0)


@settings(max_examples=30, deadline=None)
@given(seeds, scales, temperatures, st.sampled_from([None, 1, 5, 32]))
def test_kl_is_non_negative_and_zero_for_identical_logits(
    seed: int, scale: float, temperature: float, top_k: int | None
) -> None:
    student, teacher = _logits(seed, scale), _logits(seed + 1, scale)
    assert float(ref.logits_kl(student, teacher, temperature, top_k)) >= 0
    assert float(ref.logits_kl(teacher, teacher, temperature, top_k)) == pytest.approx(0, abs=1e-12)


@settings(max_examples=30, deadline=None)
@given(seeds, scales, temperatures, st.floats(-50, 50))
def test_kl_ignores_logit_shifts_and_temperature_divides_logits(
    seed: int, scale: float, temperature: float, shift: float
) -> None:
    student, teacher = _logits(seed, scale), _logits(seed + 1, scale)
    base = float(ref.logits_kl(student, teacher, temperature))
    assert float(ref.logits_kl(student + shift, teacher - shift, temperature)) == pytest.approx(
        base, rel=1e-9, abs=1e-12
    )
    assert float(ref.logits_kl(student / temperature, teacher / temperature)) == pytest.approx(
        base, rel=1e-9, abs=1e-12
    )
    # a hotter temperature flattens both distributions: the divergence shrinks toward 0
    assert float(ref.logits_kl(student, teacher, temperature * 4)) <= base + 1e-12


@settings(max_examples=30, deadline=None)
@given(seeds, scales, temperatures, st.sampled_from([None, 1, 5, 32]), st.floats(-50, 50))
def test_modelopt_kl_matches_the_reference_and_has_its_properties(
    modelopt_losses,
    seed: int,
    scale: float,
    temperature: float,
    top_k: int | None,
    shift: float,
) -> None:
    student, teacher = (
        _logits(seed, scale, dtype=torch.float32),
        _logits(seed + 1, scale, dtype=torch.float32),
    )  # as megatron's
    measured = modelopt_losses(student, teacher, temperature, top_k)
    assert measured == pytest.approx(float(ref.logits_kl(student, teacher, temperature, top_k)), rel=1e-5, abs=1e-6)
    assert measured >= -1e-6
    assert modelopt_losses(teacher, teacher, temperature, top_k) == pytest.approx(0, abs=1e-6)
    assert modelopt_losses(student + shift, teacher + shift, temperature, top_k) == pytest.approx(
        measured, rel=1e-4, abs=1e-5
    )


def test_reference_intermediate_losses_and_balancer() -> None:
    a = torch.tensor([[[1.0, 0.0], [0.0, 2.0]]])
    assert float(ref.cosine_loss(a, a * 3)) == pytest.approx(0)
    assert float(ref.cosine_loss(a, -a)) == pytest.approx(2)
    assert float(ref.mse_loss(a, a + 1)) == pytest.approx(1)
    assert float(ref.lm_loss(torch.zeros(1, 2, 4), torch.tensor([[0, 3]]))) == pytest.approx(math.log(4))
    only_logits = ref.balance(2.0, [], 3.0, skip_lm_loss=True, kd_loss_scale=0.5)
    assert (only_logits.kd_loss, only_logits.intermediate_loss) == (2.0, 0.0)
    # intermediates are rescaled to the logits loss; with the LM loss the KD part is rescaled to it
    assert ref.balance(2.0, [0.1, 0.3], 3.0, skip_lm_loss=True, kd_loss_scale=0.5).kd_loss == pytest.approx(4.0)
    with_lm = ref.balance(2.0, [0.1, 0.3], 3.0, skip_lm_loss=False, kd_loss_scale=0.5)
    assert (with_lm.kd_loss, with_lm.intermediate_loss) == (pytest.approx(4.5), pytest.approx(0.2))


KD = """\
suite: kdbad
check: kd_parity
params: {{teacher: {teacher}}}
matrix:
  model: [tiny-gpt-student]
  layout: [{layout}]
  kd:
    - {kd}
"""


@pytest.mark.parametrize(
    ("teacher", "layout", "kd", "message"),
    [
        (
            "tiny-gpt-trained",
            "{tp: 1, pp: 1}",
            "{name: deep, intermediate: [[decoder.layers.2.input_layernorm, decoder.final_layernorm]]}",
            r"suite.yaml:8: matrix.kd\[0\]: intermediate: decoder.layers.2.input_layernorm: the student "
            r"tiny-gpt-student has 2 layers",
        ),
        (
            "tiny-gpt-trained",
            "{tp: 1, pp: 2}",
            "{name: early, intermediate: [[decoder.final_layernorm, decoder.layers.0.input_layernorm]]}",
            r"suite.yaml:8: matrix.kd\[0\]: intermediate: decoder.layers.0.input_layernorm: layer 0 of the teacher is "
            r"on pipeline stage 0 of 2",
        ),
        ("giant", "{tp: 1, pp: 1}", "{name: logits}", r"suite.yaml:3: params.teacher: unknown teacher 'giant'"),
        (
            "tiny-gpt-trained",
            "{tp: 1, pp: 1}",
            "{name: wide, top_k: 4096}",
            r"matrix.kd\[0\]: top_k 4096 exceeds the vocabulary \(1024\)",
        ),
        (
            "tiny-gpt-trained",
            "{tp: 1, pp: 1}",
            "{name: Bad Name}",
            r"suite.yaml:8: matrix.kd\[0\].name: String should match pattern",
        ),
    ],
)
def test_bad_kd_configs_are_rejected_before_any_worker(
    write_suite,
    teacher: str,
    layout: str,
    kd: str,
    message: str,
) -> None:
    with pytest.raises(SuiteError, match=message):
        expand(
            [load_suite(write_suite(KD.format(teacher=teacher, layout=layout, kd=kd)))], Resources(cpu_ranks=2, gpus=0)
        )


def test_teacher_and_student_vocabularies_must_match(write_suite, monkeypatch) -> None:
    from dataclasses import replace

    monkeypatch.setitem(ZOO, "wide-teacher", replace(ZOO["tiny-gpt"], name="wide-teacher", vocab_size=2048))
    suite = load_suite(write_suite(KD.format(teacher="wide-teacher", layout="{tp: 1, pp: 1}", kd="{name: logits}")))
    with pytest.raises(
        SuiteError, match=r"params.teacher: teacher wide-teacher has vocabulary 2048, student tiny-gpt-student 1024"
    ):
        expand([suite], Resources(cpu_ranks=2, gpus=0))


def test_known_defect_entries_are_validated(write_suite) -> None:
    text = KD.format(teacher="tiny-gpt-trained", layout="{tp: 1, pp: 1}", kd="{name: logits}")
    entry = (
        "known_defects:\n  - id: {id}\n    when: {{kdd: 1}}\n    defect: an upstream bug that we track\n"
        "    symptom: {{logits_gap: {{min: 1}}}}\n    affects: [nothing_like_it]\n    versions: {{megatron-core: "
        "'{versions}'}}\n"
    )
    with pytest.raises(SuiteError) as err:  # the entry's own form first
        load_suite(write_suite(text + entry.format(id="Bad Id", versions="about 0.16")))
    assert [line.split("suite.yaml:")[1] for line in err.value.problems] == [
        "10: known_defects[0].id: String should match pattern '^[a-z0-9][a-z0-9_.-]*$'",
        "15: known_defects[0].versions: Value error, megatron-core: 'about 0.16' is not a version specifier like "
        "'>=0.16,<0.20'",
    ]
    with pytest.raises(SuiteError) as err:  # then what it names
        load_suite(write_suite(text + entry.format(id="upstream-1", versions="<0.20")))
    emits = ", ".join(get_check("kd_parity").metrics)
    assert [line.split("suite.yaml:")[1] for line in err.value.problems] == [
        "11: known_defects[0].when.kdd: unknown key; keys are model, layout, optimization, dtype, platform or params "
        "of kd_parity",
        f"13: known_defects[0].symptom.logits_gap: unknown metric; kd_parity emits {emits}",
        f"14: known_defects[0].affects.nothing_like_it: unknown metric; kd_parity emits {emits}",
    ]


def test_a_known_defect_applies_only_to_the_installed_versions_it_names(write_suite) -> None:
    import importlib.metadata

    mcore = importlib.metadata.version("megatron-core")
    text = KD.format(teacher="tiny-gpt-trained", layout="{tp: 1, pp: 1}", kd="{name: logits}")
    entry = (
        "known_defects:\n  - id: upstream-1\n    when: {{model: tiny-gpt-student}}\n    defect: an upstream bug that "
        "we track\n"
        "    symptom: {{logits_loss_rel_gap: {{min: 1}}}}\n    versions: {{{versions}}}\n"
    )
    marked = {}
    for label, versions in (
        ("this one", f"megatron-core: '=={mcore}'"),
        ("an older one", "megatron-core: '<0.10'"),
        ("both pinned", "megatron-core: '>=0.16', nvidia-modelopt: '>=0.40'"),
        ("not installed", "transformer-engine: '>=1.0'"),
    ):
        path = write_suite(text + entry.format(versions=versions), f"{label.replace(' ', '_')}.yaml")
        (case,) = [c for c in expand([load_suite(path)], Resources(cpu_ranks=2, gpus=0)) if c.platform == "cpu"]
        marked[label] = case.known_defect is not None
    assert marked == {"this one": True, "an older one": False, "both pinned": True, "not installed": False}
