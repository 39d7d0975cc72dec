"""Sampling chain: greedy, filters, penalties, reproducibility."""

import numpy as np
import pytest

from pyrt.errors import InvalidArgumentError
from pyrt.runtime.sampling import Sampler, SamplingParams


def _logits(n=100, seed=0):
    return np.random.default_rng(seed).standard_normal(n).astype(np.float32) * 3


def test_greedy_is_argmax():
    lg = _logits()
    s = Sampler(SamplingParams(temperature=0.0), 512)
    assert s.sample(lg) == int(np.argmax(lg))


def test_seeded_reproducible_and_seed_matters():
    lg = _logits()
    a = [Sampler(SamplingParams(temperature=1.0, seed=42), 512).sample(lg) for _ in range(3)]
    assert len(set(a)) == 1
    s1 = Sampler(SamplingParams(temperature=1.5, top_k=0, top_p=1.0, min_p=0.0, seed=1), 512)
    s2 = Sampler(SamplingParams(temperature=1.5, top_k=0, top_p=1.0, min_p=0.0, seed=2), 512)
    assert [s1.sample(lg) for _ in range(20)] != [s2.sample(lg) for _ in range(20)]


def test_top_k_one_is_greedy_and_top_k_limits():
    lg = _logits()
    s = Sampler(SamplingParams(temperature=5.0, top_k=1, seed=0), 512)
    assert all(s.sample(lg) == int(np.argmax(lg)) for _ in range(20))
    top3 = set(np.argsort(-lg)[:3].tolist())
    s = Sampler(SamplingParams(temperature=5.0, top_k=3, top_p=1.0, min_p=0.0, seed=0), 512)
    assert {s.sample(lg) for _ in range(200)} <= top3


def test_top_p_and_min_p():
    lg = np.log(np.array([0.5, 0.3, 0.15, 0.05], dtype=np.float32))
    s = Sampler(SamplingParams(temperature=1.0, top_k=0, top_p=0.7, min_p=0.0, seed=0), 512)
    assert {s.sample(lg) for _ in range(300)} == {0, 1}
    s = Sampler(SamplingParams(temperature=1.0, top_k=0, top_p=1.0, min_p=0.35, seed=0), 512)
    assert {s.sample(lg) for _ in range(300)} == {0, 1}


def test_repeat_penalty():
    lg = np.array([2.0, 1.9, -1.0, -1.1], dtype=np.float32)
    s = Sampler(SamplingParams(temperature=0.0, repeat_penalty=1.5, repeat_last_n=64), 512)
    assert s.sample(lg, [0]) == 1  # 2.0/1.5 < 1.9
    out = s.apply_penalty(lg, [2])
    assert out[2] == pytest.approx(-1.5) and out[0] == 2.0
    s = Sampler(SamplingParams(temperature=0.0, repeat_penalty=1.5, repeat_last_n=1), 512)
    assert s.sample(lg, [0, 1]) == 0  # only the last token is penalised


def test_invalid_params():
    for kw in ({"top_p": 1.5}, {"min_p": -0.1}, {"top_k": -1}, {"repeat_penalty": 0.0}, {"temperature": float("nan")}):
        with pytest.raises(InvalidArgumentError):
            Sampler(SamplingParams(**kw), 512)
