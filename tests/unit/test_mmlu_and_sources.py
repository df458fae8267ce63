"""The MMLU-layout loader and prompt, evaluation text files, and suites that declare models by
checkpoint path: real files written here, bad ones rejected with the file and line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from harness.data.corpus import MarkovCorpus
from harness.data.multiple_choice import LETTERS, McItem
from harness.data.text import TextSourceError, read_documents, token_rows
from harness.data.tokenizer import WordTokenizer
from harness.evals.mmlu import McScores, MmluError, format_prompt, letter_ids, load_mmlu, load_with_shots, write_mmlu
from harness.records import Layout
from harness.schedule import skip_reason
from harness.suites.expand import Resources, expand
from harness.suites.load import load_suite
from harness.suites.yaml_lines import SuiteError

TOKENIZER = WordTokenizer(1024)
CORPUS = MarkovCorpus(TOKENIZER.n_words, rare_words=100)


def test_corpus_questions_round_trip_through_the_mmlu_layout(tmp_path: Path) -> None:
    items = CORPUS.multiple_choice(12, stream_seed=4)
    write_mmlu(tmp_path, "test", items)
    assert (tmp_path / "test" / "markov_test.csv").is_file()
    assert load_mmlu(tmp_path, "test") == items
    assert load_mmlu(tmp_path, "test", limit=5) == items[:5]
    # the right option is the likeliest successor of the question's last word, the others never follow it
    for item in items:
        last = int(item.question.split()[-1][1:])
        right = int(item.choices[LETTERS.index(item.answer)][1:])
        others = {int(choice[1:]) for choice in item.choices} - {right}
        assert right == CORPUS.successors[last, 0]
        assert not others & set(CORPUS.successors[last].tolist())
        assert sum(other >= CORPUS.text_words for other in others) == 2  # two words that never occur in text
    assert {item.answer for item in CORPUS.multiple_choice(200, stream_seed=4)} == set(LETTERS)


def test_several_subjects_and_a_subject_filter(tmp_path: Path) -> None:
    algebra = [McItem("abstract_algebra", "1+1?", ("1", "2", "3", "4"), "B")]
    law = [
        McItem("law", "Is it?", ("yes", "no", "maybe", "never"), "A"),
        McItem("law", "Q, with comma", ("a", "b", "c", "d"), "D"),
    ]
    write_mmlu(tmp_path, "dev", algebra + law)
    assert load_mmlu(tmp_path, "dev") == algebra + law
    assert load_mmlu(tmp_path, "dev", subjects=["law"]) == law
    with pytest.raises(MmluError, match="no file for subject"):
        load_mmlu(tmp_path, "dev", subjects=["physics"])


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ("q,a,b,c,d\n", r"law_test.csv:2: expected 6 columns"),
        ("q,a,b,c,d,E\n", r"law_test.csv:2: answer 'E' is not one of"),
    ],
)
def test_malformed_rows_name_file_and_line(tmp_path: Path, row: str, message: str) -> None:
    (tmp_path / "test").mkdir()
    (tmp_path / "test" / "law_test.csv").write_text("q,a,b,c,d,A\n" + row)
    with pytest.raises(MmluError, match=message):
        load_mmlu(tmp_path)


def test_missing_layout_is_named(tmp_path: Path) -> None:
    with pytest.raises(MmluError, match=r"no such directory \(expected the MMLU layout"):
        load_mmlu(tmp_path / "nowhere")


def test_prompt_follows_the_mmlu_template() -> None:
    item = McItem("high_school_physics", "What falls?", ("apples", "rain", "both", "none"), "C")
    shot = McItem("high_school_physics", "What rises?", ("smoke", "rocks", "lead", "water"), "A")
    prompt = format_prompt(item, [shot])
    assert prompt == (
        "The following are multiple choice questions (with answers) about high school physics.\n\n"
        "What rises?\nA. smoke\nB. rocks\nC. lead\nD. water\nAnswer: A\n\n"
        "What falls?\nA. apples\nB. rain\nC. both\nD. none\nAnswer:"
    )
    # the harness tokenizer knows every template word, and the four letters are four tokens
    assert TOKENIZER.vocab["<unk>"] not in TOKENIZER.encode(format_prompt(CORPUS.multiple_choice(1, 0)[0]))
    assert len(set(letter_ids(TOKENIZER))) == 4


def test_text_sources(tmp_path: Path) -> None:
    rows = token_rows("corpus", TOKENIZER, CORPUS, 3, 10, stream=2)
    np.testing.assert_array_equal(rows, CORPUS.sample(3, 10, stream_seed=2))  # corpus words read back as themselves
    jsonl = tmp_path / "eval.jsonl"
    jsonl.write_text(json.dumps({"text": "w1 w2 w3"}) + "\n\n" + json.dumps({"text": "w4 w5 w6 w7"}) + "\n")
    assert token_rows(str(jsonl), TOKENIZER, CORPUS, 2, 3, stream=0).tolist() == [[1, 2, 3], [4, 5, 6]]
    with pytest.raises(TextSourceError, match=r"eval.jsonl: 7 tokens, the case needs 2 rows x 4 = 8"):
        token_rows(str(jsonl), TOKENIZER, CORPUS, 2, 4, stream=0)
    jsonl.write_text('{"text": "ok"}\n{"txt": "bad"}\n')
    with pytest.raises(TextSourceError, match=r"eval.jsonl:2: expected an object with a string \"text\" field"):
        read_documents(jsonl)
    with pytest.raises(TextSourceError, match="no such file"):
        read_documents(tmp_path / "missing.txt")


SOURCES = """\
suite: real
check: quant_accuracy
models:
{models}
matrix:
  model: [{model}]
  layout: [{{tp: 2, pp: 1}}]
  optimization: [fp8]
"""


@pytest.mark.parametrize(
    ("models", "message"),
    [
        ("  m: {hf: /x, torch_dist: /y}", r"suite.yaml:4: models.m: Value error, give exactly one of hf"),
        ("  m: {torch_dist: /y}", r"suite.yaml:4: models.m: Value error, torch_dist needs like"),
        ("  m: {torch_dist: /y, like: giant}", r"suite.yaml:4: models.m.like: unknown zoo model 'giant'"),
        ("  tiny-gpt: {hf: /x}", r"suite.yaml:4: models.tiny-gpt: 'tiny-gpt' is a zoo model"),
    ],
)
def test_bad_model_declarations_name_the_line(write_suite, models: str, message: str) -> None:
    with pytest.raises(SuiteError, match=message):
        load_suite(write_suite(SOURCES.format(models=models, model="m")))


def test_a_checkpoint_that_is_not_here_skips_its_cases_with_the_reason(
    write_suite,
    tmp_path: Path,
    monkeypatch,
) -> None:
    monkeypatch.setenv("MODEL_STORE", str(tmp_path))
    suite = load_suite(write_suite(SOURCES.format(models='  m: {hf: "${MODEL_STORE}/Llama-3.1-8B"}', model="m")))
    (case,) = expand([suite], Resources(cpu_ranks=2, gpus=0))
    reason = skip_reason(case, Resources(cpu_ranks=2, gpus=0))
    assert reason == f"model m: no Hugging Face checkpoint at {tmp_path}/Llama-3.1-8B (config.json not found)"


def test_hf_config_gives_the_architecture_and_layouts_are_judged(write_suite, tmp_path: Path) -> None:
    config = {
        "architectures": ["LlamaForCausalLM"],
        "hidden_size": 96,
        "num_hidden_layers": 2,
        "num_attention_heads": 3,
        "num_key_value_heads": 3,
        "intermediate_size": 128,
        "vocab_size": 1000,
        "rope_theta": 500000.0,
    }
    (tmp_path / "config.json").write_text(json.dumps(config))
    # no tokenizer beside the config: one line before start, no spurious "unknown model" after it
    with pytest.raises(
        SuiteError, match=r"suite.yaml:4: models.m: cannot read the checkpoint: .*no tokenizer"
    ) as refused:
        load_suite(write_suite(SOURCES.format(models=f"  m: {{hf: {tmp_path}}}", model="m")))
    assert len(refused.value.problems) == 1
    (tmp_path / "tokenizer.json").write_text("{}")
    with pytest.raises(
        SuiteError, match=r"suite.yaml:7: matrix.layout\[0\]: num_attention_heads 3 of model m is not divisible by tp=2"
    ):
        expand(
            [load_suite(write_suite(SOURCES.format(models=f"  m: {{hf: {tmp_path}}}", model="m")))],
            Resources(cpu_ranks=2, gpus=0),
        )
    config |= {"rope_scaling": {"rope_type": "yarn", "factor": 4.0}}
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(
        SuiteError, match=r"suite.yaml:4: models.m: cannot read the checkpoint: .*rope_scaling type 'yarn'"
    ):
        load_suite(write_suite(SOURCES.format(models=f"  m: {{hf: {tmp_path}}}", model="m")))
    (tmp_path / "config.json").write_text(json.dumps(config | {"architectures": ["MixtralForCausalLM"]}))
    with pytest.raises(SuiteError, match=r"architecture MixtralForCausalLM") as refused:
        load_suite(write_suite(SOURCES.format(models=f"  m: {{hf: {tmp_path}}}", model="m")))
    assert len(refused.value.problems) == 1 and "unknown model" not in str(refused.value)


def test_a_qwen3_moe_config_gives_the_experts_and_mixed_dense_layers_are_refused(tmp_path: Path) -> None:
    from harness.models.sources import ModelSourceError, hf_spec

    config = {
        "architectures": ["Qwen3MoeForCausalLM"],
        "hidden_size": 2048,
        "num_hidden_layers": 48,
        "num_attention_heads": 32,
        "num_key_value_heads": 4,
        "head_dim": 128,
        "intermediate_size": 6144,
        "moe_intermediate_size": 768,
        "num_experts": 128,
        "num_experts_per_tok": 8,
        "norm_topk_prob": True,
        "vocab_size": 151936,
        "rope_theta": 1000000.0,
    }
    (tmp_path / "config.json").write_text(json.dumps(config))
    (tmp_path / "tokenizer.json").write_text("{}")
    spec = hf_spec("qwen3-30b-a3b", str(tmp_path))
    assert (spec.num_moe_experts, spec.moe_router_topk, spec.ffn_hidden_size, spec.moe_router_pre_softmax) == (
        128,
        8,
        768,
        False,
    )
    assert spec.qk_layernorm and spec.kv_channels == 128
    assert hf_spec("m", str(tmp_path)).layout_errors(Layout(1, 1, ep=3)) == [
        "num_moe_experts 128 of model m is not divisible by ep=3"
    ]
    (tmp_path / "config.json").write_text(json.dumps(config | {"norm_topk_prob": False}))
    assert hf_spec("m", str(tmp_path)).moe_router_pre_softmax
    (tmp_path / "config.json").write_text(json.dumps(config | {"mlp_only_layers": [0]}))
    with pytest.raises(ModelSourceError, match="dense layers between the MoE layers"):
        hf_spec("m", str(tmp_path))


def test_mmlu_files_as_users_have_them(tmp_path: Path) -> None:
    """A byte-order mark, a question with a newline inside quotes, a non-UTF-8 byte, an empty subject."""
    (tmp_path / "test").mkdir()
    law = tmp_path / "test" / "law_test.csv"
    law.write_bytes(
        '\ufeff"Is it, really?",yes,no,maybe,never,A\n"Two\nlines",a,b,c,d,B\n\n"third",a,b,c,d,X\n'.encode()
    )
    with pytest.raises(MmluError, match=r"law_test.csv:5: answer 'X'"):  # the file line, not the record number (4)
        load_mmlu(tmp_path)
    law.write_bytes('\ufeff"Is it, really?",yes,no,maybe,never,A\n"Two\nlines",a,b,c,d,B\n'.encode())
    first, second = load_mmlu(tmp_path)
    assert first.question == "Is it, really?" and first.answer == "A"  # the BOM is gone, the quoting intact
    assert second.question == "Two\nlines"
    (tmp_path / "test" / "art_test.csv").write_bytes(
        b"q,a,b,c,d,A\nq\xe9,a,b,c,d,B\n"
    )  # Latin-1, as old exports write it
    with pytest.raises(MmluError, match=r"art_test.csv:2: not UTF-8 \(byte 0xe9\)"):
        load_mmlu(tmp_path)
    (tmp_path / "test" / "art_test.csv").write_text("")
    with pytest.raises(MmluError, match=r"art_test.csv:1: no questions"):
        load_mmlu(tmp_path)


def test_shots_come_from_dev_and_a_short_dev_split_is_an_error(tmp_path: Path) -> None:
    law = [McItem("law", f"q{i}", ("a", "b", "c", "d"), "A") for i in range(3)]
    write_mmlu(tmp_path, "test", law)
    write_mmlu(tmp_path, "dev", law[:2])
    items, shots = load_with_shots(tmp_path, "test", 2)
    assert items == law and shots == {"law": law[:2]}
    with pytest.raises(MmluError, match=r"law_dev.csv:1: 2 dev question\(s\), mmlu_shots asks 5"):
        load_with_shots(tmp_path, "test", 5)
    write_mmlu(tmp_path, "test", [McItem("art", "q", ("a", "b", "c", "d"), "A")])
    with pytest.raises(MmluError, match=r"no art_dev.csv for the 2-shot prompts of art"):
        load_with_shots(tmp_path, "test", 2)


def test_scores_per_subject_micro_and_macro() -> None:
    scores = McScores(accuracy=0.7, items=10, by_subject={"law": (1, 2), "art": (6, 8)})
    assert scores.subject_accuracy("law") == 0.5 and scores.subject_accuracy("art") == 0.75
    assert scores.macro_accuracy == pytest.approx(
        0.625
    )  # every subject weighs the same; micro (0.7) weighs every question


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        ({"architectures": ["FooForCausalLM"]}, "architecture FooForCausalLM"),
        ({"architectures": ["LlamaForCausalLM"], "num_attention_heads": 4}, "no tokenizer"),
    ],
)
def test_a_declared_model_that_cannot_be_read_is_one_line_from_list_and_run(
    write_suite, tmp_path: Path, capsys, files: dict, expected: str
) -> None:
    """Not a ``KeyError`` from the expansion: the loader's own reason, its file and line, exit 2."""
    from harness.cli import EXIT_USAGE, main

    (tmp_path / "config.json").write_text(json.dumps(files))
    path = write_suite(SOURCES.format(models=f"  m: {{hf: {tmp_path}}}", model="m"))
    for command in (["list"], ["run", "--artifacts", str(tmp_path / "artifacts")]):
        assert main([*command, str(path)]) == EXIT_USAGE
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(f"harness: {path}:4: models.m: cannot read the checkpoint"), err
        assert expected in err[0]
