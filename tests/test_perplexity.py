"""Perplexity (llama-perplexity's method) on a synthetic model: formula, chunking, BOS handling, CLI output.

The real-model value against llama.cpp is checked in tests/test_gemma.py.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pytest

import synthetic

import pyrt
from pyrt import cli
from pyrt.errors import ContextOverflowError, InvalidArgumentError
from pyrt.runtime.perplexity import final_estimate, perplexity, token_nll

TEXT = (Path(__file__).parent / "data" / "ppl" / "pride_and_prejudice_ch1.txt").read_text(encoding="utf-8")
N_CTX = 32


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    p = tmp_path_factory.mktemp("ppl") / "llama-q8_0.gguf"
    synthetic.write_model(p, "llama", "Q8_0")
    return str(p)


@pytest.fixture(scope="module")
def llm(model_path):
    return pyrt.load(model_path, n_ctx=64, n_threads=1)


def _log_softmax64(row: np.ndarray) -> np.ndarray:
    r = row.astype(np.float64)
    m = r.max()
    return r - m - math.log(np.exp(r - m).sum())


def test_token_nll_and_final_estimate():
    rng = np.random.default_rng(7)
    logits = (rng.standard_normal((9, 300)) * 4).astype(np.float32)
    tgt = rng.integers(0, 300, 9)
    want = np.array([-_log_softmax64(logits[i])[tgt[i]] for i in range(9)])
    np.testing.assert_allclose(token_nll(logits, tgt), want, rtol=1e-6, atol=1e-6)
    v = rng.random(50) * 3
    ppl, err = final_estimate(float(v.sum()), float((v * v).sum()), 50)
    assert ppl == pytest.approx(math.exp(v.mean()), rel=1e-12)
    assert err == pytest.approx(math.sqrt(v.var() / 49) * ppl, rel=1e-9)
    with pytest.raises(InvalidArgumentError):
        final_estimate(1.0, 1.0, 1)


def test_perplexity_matches_independent_computation(llm):
    tok = llm.tokenizer
    tokens = tok.tokenize(TEXT, add_special=True, parse_special=False)
    assert tokens[0] == tok.bos_id
    n_chunks = 3
    first = N_CTX // 2
    nlls, running = [], []
    for i in range(n_chunks):
        chunk = list(tokens[i * N_CTX:(i + 1) * N_CTX])
        inp = [tok.bos_id] + chunk[1:]  # BOS replaces the first token of every chunk
        logits = llm.eval_logits(inp)
        for j in range(first, N_CTX - 1):
            nlls.append(-_log_softmax64(logits[j])[chunk[j + 1]])
        running.append(math.exp(np.mean(nlls)))
    seen = []
    res = perplexity(llm, TEXT, n_ctx=N_CTX, n_chunks=n_chunks, callback=lambda i, p: seen.append((i, p)))
    nlls = np.array(nlls)
    assert res.count == n_chunks * (N_CTX - first - 1) == len(nlls)
    assert res.n_chunks == n_chunks and res.n_tokens == len(tokens)
    assert res.ppl == pytest.approx(math.exp(nlls.mean()), rel=1e-5)
    assert res.ppl_err == pytest.approx(math.sqrt(nlls.var() / (len(nlls) - 1)) * res.ppl, rel=1e-4)
    np.testing.assert_allclose(res.running, running, rtol=1e-5)
    assert [i for i, _ in seen] == [1, 2, 3] and [p for _, p in seen] == res.running
    assert llm._tokens == []  # the cache was cleared, not left half-used
    # physical batches smaller than the chunk give the same value
    res2 = perplexity(llm, TEXT, n_ctx=N_CTX, n_chunks=n_chunks, n_batch=10)
    assert res2.ppl == pytest.approx(res.ppl, rel=1e-5)
    # all chunks by default
    res3 = perplexity(llm, TEXT, n_ctx=N_CTX, n_chunks=-1)
    assert res3.n_chunks == len(tokens) // N_CTX and res3.running[:3] == pytest.approx(res.running, rel=1e-5)


def test_perplexity_errors(llm):
    with pytest.raises(InvalidArgumentError, match="at least 64 tokens"):
        perplexity(llm, "a short text", n_ctx=N_CTX)
    with pytest.raises(ContextOverflowError):
        perplexity(llm, TEXT, n_ctx=128)


def test_cli_perplexity_output(model_path, capsys):
    rc = cli.main(["perplexity", "-m", model_path, "-f", str(Path(__file__).parent / "data" / "ppl" /
                                                                "pride_and_prejudice_ch1.txt"),
                   "-c", str(N_CTX), "--chunks", "2", "-t", "1"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    m = re.search(r"^\[1\](\d+\.\d{4}),\[2\](\d+\.\d{4}),\nFinal estimate: PPL = (\d+\.\d{4}) \+/- (\d+\.\d{5})$",
                  out.strip(), re.M)
    assert m, out
    llm = pyrt.load(model_path, n_ctx=N_CTX, n_threads=1, warmup=False)
    res = perplexity(llm, TEXT, n_ctx=N_CTX, n_chunks=2)
    assert float(m.group(3)) == pytest.approx(res.ppl, abs=1e-4)
    assert float(m.group(4)) == pytest.approx(res.ppl_err, abs=1e-5)
    assert float(m.group(2)) == float(m.group(3))
    rc = cli.main(["perplexity", "-m", model_path, "-f", "/nonexistent.txt"])
    assert rc == 2 and "cannot read" in capsys.readouterr().err
