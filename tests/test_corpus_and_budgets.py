"""The synthetic corpus is deterministic with a known ceiling; budgets and composed KV formats."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from harness.baselines import BaselineStore, compare
from harness.data.corpus import MarkovCorpus
from harness.optimizations import get_optimization
from harness.records import Budget, CaseOutcome, Verdict
from tests.test_baselines_and_select import make_case


@settings(max_examples=20, deadline=None)
@given(vocab=st.integers(8, 64), seed=st.integers(0, 2**16), stream=st.integers(0, 5))
def test_corpus_is_deterministic_and_follows_its_chain(vocab: int, seed: int, stream: int) -> None:
    corpus = MarkovCorpus(vocab, seed)
    a = corpus.sample(4, 32, stream)
    assert np.array_equal(a, MarkovCorpus(vocab, seed).sample(4, 32, stream))
    assert not np.array_equal(a, corpus.sample(4, 32, stream + 1))
    for prev, nxt in zip(a[:, :-1].ravel(), a[:, 1:].ravel(), strict=True):
        assert nxt in corpus.successors[prev]


def test_corpus_statistics_match_the_declared_probabilities() -> None:
    corpus = MarkovCorpus(64, seed=3)
    sample = corpus.sample(64, 257, stream_seed=9)
    prev, nxt = sample[:, :-1].ravel(), sample[:, 1:].ravel()
    top = (nxt == corpus.successors[prev, 0]).mean()
    assert abs(top - corpus.best_accuracy) < 0.02  # 16k transitions: stderr ~0.004
    assert math.isclose(corpus.entropy_nats, -sum(p * math.log(p) for p in corpus.probs))


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


def test_kv_cache_formats_compose_with_quantization_formats() -> None:
    assert get_optimization("fp8+fp8_kv").description == "modelopt PTQ with mtq.FP8_DEFAULT_CFG + KV cache mtq.FP8_KV_CFG"
    assert get_optimization("nvfp4+nvfp4_kv").gpu_only is not None
    for bad in ("fp8+int8_kv", "none+fp8_kv", "fp9"):
        with pytest.raises(KeyError):
            get_optimization(bad)
