"""The speculative-decoding pieces that need no megatron: MT-Bench prompt files (real files), the
bootstrap interval, and the decoding bookkeeping driven by a real (tiny, plain torch) language model
and a draft function whose errors are planted where the test wants them."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from harness.data.corpus import MarkovCorpus
from harness.data.text import TextSourceError
from harness.data.tokenizer import WordTokenizer
from harness.evals.mtbench import prompts, read_questions
from harness.evals.timing import median_ci
from harness.runtime.drafts import DraftAlgorithm
from harness.runtime.speculative import greedy, measure_acceptance, speculative


def write_questions(path: Path, rows: list[object]) -> Path:
    path.write_text("\n".join(row if isinstance(row, str) else json.dumps(row) for row in rows) + "\n")
    return path


def test_mtbench_scores_every_question_first_turn_only(tmp_path: Path) -> None:
    path = write_questions(
        tmp_path / "question.jsonl",
        [
            {"question_id": 81, "category": "writing", "turns": ["w12 w7 w3", "second turn"]},
            {"question_id": 82, "category": "writing", "turns": ["w1"]},
            {"question_id": 101, "category": "reasoning", "turns": ["w5 w6"]},
            "",
        ],
    )
    tokenizer = WordTokenizer(1024)
    # every question (not one per category, not a prefix of the file), first turns only
    assert prompts(str(path), tokenizer, MarkovCorpus(992, 0), 1, 16) == [[12, 7, 3], [1], [5, 6]]
    corpus_prompts = prompts("corpus", tokenizer, MarkovCorpus(992, 0), 3, 16)
    assert len(corpus_prompts) == 3 and all(len(p) == 16 for p in corpus_prompts)
    assert corpus_prompts == prompts("corpus", tokenizer, MarkovCorpus(992, 0), 3, 16)  # deterministic


def test_mtbench_goes_through_the_chat_template_of_a_tokenizer_that_has_one(tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    from tests.support.hf_fixtures import write_tiny_llama

    tokenizer = AutoTokenizer.from_pretrained(write_tiny_llama(tmp_path / "llama"))
    path = write_questions(tmp_path / "question.jsonl", [{"question_id": 1, "category": "math", "turns": ["w5 w6"]}])
    plain = prompts(str(path), tokenizer, MarkovCorpus(992, 0), 1, 16)
    assert plain == [tokenizer.encode("w5 w6")]
    tokenizer.chat_template = (
        "{% for m in messages %}<s> {{ m['content'] }} </s>{% endfor %}{% if add_generation_prompt %} w9{% endif %}"
    )
    (templated,) = prompts(str(path), tokenizer, MarkovCorpus(992, 0), 1, 16)
    assert templated == tokenizer.encode("<s> w5 w6 </s> w9", add_special_tokens=False) and templated != plain[0]


def test_a_prompt_of_mostly_unknown_tokens_is_reported_not_scored(tmp_path: Path) -> None:
    path = write_questions(
        tmp_path / "question.jsonl",
        [
            {"question_id": 7, "category": "writing", "turns": ["w1 w2 w3"]},
            {"question_id": 8, "category": "coding", "turns": ["Write a C++ program w4"]},  # 4 of 5 words unknown
        ],
    )
    with pytest.raises(TextSourceError, match=r"1 of 2 prompts .* question 8 \(coding\): 80% unknown tokens"):
        prompts(str(path), WordTokenizer(1024), MarkovCorpus(992, 0), 1, 16)


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        (["{not json"], ":1: not JSON"),
        (["[1, 2]"], ":1: expected a JSON object"),
        ([{"question_id": 1, "category": "x", "turns": []}], ':1: expected an object with a string "category"'),
        (["", {"question_id": 1, "turns": ["a"]}], ":2: expected an object"),
        ([""], ": no questions"),
    ],
)
def test_bad_question_files_name_the_line(tmp_path: Path, rows: list[object], message: str) -> None:
    with pytest.raises(TextSourceError, match=message):
        read_questions(write_questions(tmp_path / "question.jsonl", rows))
    with pytest.raises(TextSourceError, match="no such file"):
        read_questions(tmp_path / "missing.jsonl")


@settings(max_examples=40, deadline=None)
@given(st.lists(st.floats(0.1, 10.0), min_size=1, max_size=12), st.integers(0, 10_000))
def test_the_bootstrap_interval_holds_the_median_and_repeats(values: list[float], seed: int) -> None:
    median, low, high = median_ci(values, seed=seed, resamples=400)
    assert min(values) <= low <= median <= high <= max(values)
    assert median_ci(values, seed=seed, resamples=400) == (median, low, high)


def test_noise_widens_the_interval() -> None:
    rng = random.Random(0)
    quiet = [1.0 + rng.gauss(0, 0.01) for _ in range(9)]
    noisy = [1.0 + rng.gauss(0, 0.3) for _ in range(9)]
    _, ql, qh = median_ci(quiet, seed=1)
    _, nl, nh = median_ci(noisy, seed=1)
    assert qh - ql < nh - nl


class Bigram(torch.nn.Module):
    """A real (if tiny) language model with megatron's call signature: next token = (token * 3 + 1) % V."""

    def __init__(self, vocab: int = 11) -> None:
        super().__init__()
        self.vocab = vocab

    def forward(self, tokens: torch.Tensor, positions: torch.Tensor, mask: None) -> torch.Tensor:
        return torch.nn.functional.one_hot((tokens * 3 + 1) % self.vocab, self.vocab).float()


def planted_drafts(wrong_at: set[int]) -> DraftAlgorithm:
    """Drafts the model's true continuation, except at absolute positions in ``wrong_at``."""

    def draft(model: torch.nn.Module, prefix: torch.Tensor, steps: int) -> tuple[torch.Tensor, torch.Tensor]:
        truth = greedy(model, prefix, steps + 1)[0, prefix.shape[1] :]
        drafts = [
            int(t) if prefix.shape[1] + 1 + j not in wrong_at else (int(t) + 1) % 11 for j, t in enumerate(truth[1:])
        ]
        return truth[:1].view(1, 1), torch.tensor([drafts])

    return DraftAlgorithm("planted", "planted_heads", lambda steps, base: [], draft)


def test_acceptance_counts_like_megatron_and_decoding_stays_lossless() -> None:
    model, prompt = Bigram(), torch.tensor([[2, 7]])
    truth = greedy(model, prompt, 10)  # positions 2..11 are generated
    perfect = measure_acceptance(model, planted_drafts(set()), [truth], [2], steps=3)
    # steps from 2, 6, 10 (base + 3 drafts each; the last step only has 1 position left to check)
    assert (perfect.steps, perfect.generated, perfect.length) == (3, 10, 10 / 3)
    assert perfect.attempted == [3, 2, 2] and perfect.accepted == [3, 2, 2] and perfect.base_mismatches == 0
    flawed = measure_acceptance(model, planted_drafts({4}), [truth], [2], steps=3)
    # from 2: base 2, draft 3 ok, draft 4 wrong -> 2 tokens; from 4: base 4, drafts 5 6 7 -> 4; from 8: 8, 9 10 11 -> 4
    assert (flawed.steps, flawed.generated) == (3, 10)
    assert flawed.attempted == [3, 3, 2] and flawed.accepted == [3, 2, 2]
    assert flawed.rate(1) == pytest.approx(2 / 3)
    for wrong in (set(), {4}, {3, 4, 5, 6, 7, 8, 9, 10, 11}):
        assert torch.equal(speculative(model, planted_drafts(wrong), prompt, 10, steps=3), truth)


def test_pipeline_layouts_are_rejected_and_eagle_skips_on_cpu_only_with_a_reason(write_suite, monkeypatch) -> None:
    from harness.schedule import skip_reason
    from harness.suites.expand import Resources, expand
    from harness.suites.load import load_suite
    from harness.suites.yaml_lines import SuiteError

    text = (
        "suite: sp\ncheck: spec_decode\nmatrix:\n  model: [tiny-gpt]\n"
        "  layout: [{layout}]\n  algorithm: [medusa, eagle3]\n"
    )
    with pytest.raises(SuiteError, match="speculative decoding runs without pipeline parallelism"):
        expand(
            [load_suite(write_suite(text.format(layout="{tp: 1, pp: 2}"), "pp.yaml"))], Resources(cpu_ranks=2, gpus=0)
        )
    cases = expand(
        [load_suite(write_suite(text.format(layout="{tp: 1, pp: 1}"), "tp.yaml"))], Resources(cpu_ranks=2, gpus=0)
    )
    reasons = {c.id: skip_reason(c, Resources(cpu_ranks=2, gpus=0)) for c in cases}
    assert reasons == {"sp/tiny-gpt/tp1pp1/medusa-k3-t150/none": None, "sp/tiny-gpt/tp1pp1/eagle3-k3-t150/none": None}
    monkeypatch.setattr(
        "harness.runtime.drafts.version", lambda package: "0.46.1"
    )  # a modelopt the stand-ins were not verified on
    eagle = skip_reason(cases[1], Resources(cpu_ranks=2, gpus=0))
    assert eagle is not None and eagle.startswith(
        "GPU only: eagle3: modelopt's Megatron EAGLE module is built from Transformer Engine"
    )


def test_mtbench_can_be_cut_to_the_first_questions_of_each_category(tmp_path: Path) -> None:
    rows = [
        {"question_id": i, "category": category, "turns": [f"w{i}"]}
        for i, category in enumerate(["writing", "writing", "math", "writing", "math", "coding"], start=1)
    ]
    path = write_questions(tmp_path / "question.jsonl", rows)
    tokenizer = WordTokenizer(1024)
    assert prompts(str(path), tokenizer, MarkovCorpus(992, 0), 1, 16, per_category=1) == [[1], [3], [6]]
    assert prompts(str(path), tokenizer, MarkovCorpus(992, 0), 1, 16, per_category=2) == [[1], [2], [3], [5], [6]]
    assert len(prompts(str(path), tokenizer, MarkovCorpus(992, 0), 1, 16)) == 6


def test_heads_can_learn_real_text_and_a_bad_text_file_is_refused_before_start(tmp_path: Path, write_suite) -> None:
    from harness.checks.spec_decode import SpecParams, heads_subject
    from harness.suites.expand import Resources, expand
    from harness.suites.load import load_suites
    from harness.suites.yaml_lines import SuiteError

    shipped = {"algorithm": "medusa", "draft_steps": 2, "train_steps": 150}
    assert heads_subject("tiny-gpt-trained", SpecParams(**shipped)) is not None
    # heads trained on other text are not the shipped ones: the case trains its own
    assert heads_subject("tiny-gpt-trained", SpecParams(**shipped, train_text=str(tmp_path / "t.txt"))) is None
    text = tmp_path / "t.txt"
    text.write_bytes(b"caf\xe9\n")
    suite = write_suite(
        f"suite: s\ncheck: spec_decode\nparams: {{train_text: {text}, train_steps: 20}}\nmatrix:\n"
        "  model: [tiny-gpt-trained]\n",
        "s.yaml",
    )
    with pytest.raises(SuiteError, match=rf"s.yaml:3: params.train_text: {text}:1: not UTF-8"):
        expand(load_suites([suite]), Resources(cpu_ranks=2, gpus=0))
