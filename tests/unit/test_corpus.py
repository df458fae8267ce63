"""The synthetic Markov corpus: deterministic per seed and stream, with the transition statistics it declares."""

from __future__ import annotations

import math

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from harness.data.corpus import MarkovCorpus


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
