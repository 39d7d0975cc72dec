"""pyrt.bench and `pyrt bench`: sweep rows and N_KV steps, the cache a sweep leaves, the output formats,
--compare without llama-cpp-python, -mla on a non-MLA file, the roofline accounting and membw.

One tiny synthetic llama (Q8_0) model; each engine opened once per module.
"""

from __future__ import annotations

import csv
import io
import json
import re
import sys

import numpy as np
import pytest

import synthetic

N_CTX, N_UB, N_TG = 72, 16, 4  # rows at N_KV 0, 16, 32, 48; 64 cells used after the sweep, 8 free


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    p = tmp_path_factory.mktemp("bench") / "llama-q8_0.gguf"
    synthetic.write_model(p, "llama", "Q8_0")
    return str(p)


@pytest.fixture(scope="module")
def engine(model_path):
    from pyrt.bench.engines import PyrtEngine
    return PyrtEngine(model_path, n_ctx=N_CTX, n_batch=N_CTX, n_ubatch=N_UB, n_threads=2)


@pytest.fixture(scope="module")
def swept(engine):
    from pyrt.bench.roofline import ModelCosts
    from pyrt.bench.sweep import sweep
    costs = ModelCosts.from_llm(engine.llm)
    msgs = []
    res = sweep([engine], n_tg=N_TG, seed=7, memory=True, costs=costs, membw_gbps=10.0, progress=msgs.append)
    return res, msgs


def test_sweep_steps():
    from pyrt.bench.sweep import sweep_steps
    assert sweep_steps(2048, 512, 128) == [0, 512, 1024, 1536]
    assert sweep_steps(4096, 512, 128)[-1] == 3584
    assert sweep_steps(100, 32, 8) == [0, 32, 64]        # 96 + 32 > 100
    assert sweep_steps(64, 16, 32) == [0, 16, 32]        # the TG run must fit too
    assert sweep_steps(8, 16, 4) == []


def test_sweep_rows(swept):
    res, msgs = swept
    rows = res["pyrt"]
    assert [r.n_kv for r in rows] == [0, 16, 32, 48]
    assert all(r.pp == N_UB and r.tg == N_TG for r in rows)
    for r in rows:
        assert r.t_pp > 0 and r.t_tg > 0
        assert r.speed_pp == pytest.approx(r.pp / r.t_pp) and r.speed_tg == pytest.approx(r.tg / r.t_tg)
        assert r.rss_hwm_mib > 0 and r.tg_gbps > 0 and r.pp_gflops > 0
        assert r.tg_bw_frac == pytest.approx(r.tg_gbps / 10.0)
    assert len(msgs) == 4 and "N_KV     48 (4/4)" in msgs[-1]


def test_tg_default_is_quarter_ubatch(engine):
    from pyrt.bench.sweep import sweep
    rows = sweep([engine], n_tg=0, n_kv_max=32)["pyrt"]
    assert [(r.n_kv, r.pp, r.tg) for r in rows] == [(0, 16, 4), (16, 16, 4)]


class _Recorder:
    """A stand-in engine that logs (engine, kind, tokens, first position) for every decode."""

    def __init__(self, name, log):
        self.name, self.log = name, log
        self.n_ctx, self.n_ubatch, self.n_batch, self.n_vocab = 64, 16, 16, 100

    def clear(self):
        self.log.append((self.name, "clear", 0, 0))

    def seq_rm(self, p0):
        self.log.append((self.name, "rm", 0, p0))

    def decode(self, toks, pos0, logits_last=True):
        self.log.append((self.name, "tg" if len(toks) == 1 else "pp", len(toks), pos0))


def test_sweep_tg_rounds_take_turns():
    """--tg-rounds: the engines take turns on chunks of each row's TG tokens (who starts alternates), every
    engine decodes every TG position once, then each runs its PP chunk from the same n_kv."""
    from pyrt.bench.sweep import sweep
    log = []
    a, b = _Recorder("a", log), _Recorder("b", log)
    rows = sweep([a, b], n_tg=6, n_kv_max=32, tg_rounds=3)
    assert [r.n_kv for r in rows["a"]] == [0, 16] and all(r.t_tg > 0 for r in rows["a"] + rows["b"])
    row0 = log[2:log.index(("a", "pp", 16, 0)) + 1]   # after the two clears, up to a's first PP chunk
    turns = [(n, p) for n, k, _, p in row0 if k == "tg"]
    assert turns == [("a", 0), ("a", 1), ("b", 0), ("b", 1), ("b", 2), ("b", 3), ("a", 2), ("a", 3),
                     ("a", 4), ("a", 5), ("b", 4), ("b", 5)]
    assert row0[-2:] == [("a", "rm", 0, 0), ("a", "pp", 16, 0)]
    row1 = [(n, p) for n, k, _, p in log[log.index(("b", "pp", 16, 0)) + 1:] if k == "tg"]
    assert row1[:3] == [("b", 16), ("b", 17), ("a", 16)]  # the second row starts with the other engine
    with pytest.raises(Exception, match="tg_rounds"):
        sweep([a], n_tg=6, n_kv_max=32, tg_rounds=0)


def test_cache_after_sweep(engine):
    """The sweep leaves exactly the PP chunks (positions 0..63), TG tokens removed: decoding one more token
    gives the same logits as a fresh context fed the same PP tokens."""
    from pyrt.bench.sweep import sweep
    from pyrt.runtime.context import Batch
    sweep([engine], n_tg=N_TG, seed=11)
    cells, ctx = engine.ctx.cells, engine.ctx
    n = 4 * N_UB
    assert cells.used == n and cells.seq_pos_max(0) == n - 1 and cells.seq_pos_min(0) == 0
    assert sorted(cells.pos_array()[:cells.n_kv()].tolist()) == list(range(n))
    rng = np.random.default_rng(11)  # the sweep draws TG tokens, then PP tokens, per row
    pp = []
    for _ in range(4):
        rng.integers(0, engine.n_vocab, N_TG)
        pp += rng.integers(0, engine.n_vocab, N_UB).tolist()
    got = ctx.decode(Batch.from_tokens([5], pos0=n))[-1]
    ctx.clear()
    for s in range(0, n, N_UB):
        ctx.decode(Batch.from_tokens(pp[s:s + N_UB], pos0=s, logits="none"))
    want = ctx.decode(Batch.from_tokens([5], pos0=n))[-1]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    ctx.clear()


def _params(e):
    return {"n_kv_max": e.n_ctx, "n_batch": e.n_batch, "n_ubatch": e.n_ubatch, "flash_attn": 1,
            "n_threads": e.n_threads}


def test_markdown_format(swept, engine):
    from pyrt.bench import report
    res, _ = swept
    txt = report.sweep_md(res, _params(engine), {"cpu": "x", "membw_gbps": 10.0}, memory=True)
    lines = txt.splitlines()
    head = next(i for i, s in enumerate(lines) if s.startswith("|    PP |"))
    assert lines[head] == ("|    PP |     TG |   N_KV |   T_PP s | S_PP t/s |   T_TG s | S_TG t/s |"
                           "   RSS HWM |")
    assert lines[head + 1].startswith("|-------|--------|--------|----------|----------|----------|----------|")
    body = lines[head + 2:head + 6]
    pat = re.compile(r"^\|\s+16 \|\s+4 \|\s+(\d+) \| +\d+\.\d{3} \| +\d+\.\d{2} \| +\d+\.\d{3} \| +\d+\.\d{2} \|"
                     r" +\d+\.\d \|$")
    assert [int(pat.match(s).group(1)) for s in body] == [0, 16, 32, 48]
    assert lines[head + 6] == ""
    assert "main: n_kv_max = 72, n_batch = 72, n_ubatch = 16, flash_attn = 1" in txt
    assert "roofline" in txt
    plain = report.sweep_table_md(res["pyrt"])  # without --sweep-memory: exactly the seeds' columns
    assert plain.splitlines()[0] == report.SWEEP_HEADER and all(s.count("|") == 8 for s in plain.splitlines())


def test_jsonl_and_csv(swept, engine):
    from pyrt.bench import report
    res, _ = swept
    recs = [json.loads(s) for s in report.sweep_jsonl(res, _params(engine), {"cpu": "x"}).splitlines()]
    assert recs[0]["record"] == "meta" and recs[0]["cpu"] == "x"
    rows = recs[1:]
    assert [r["n_kv"] for r in rows] == [0, 16, 32, 48]
    for r in rows:
        for k in ("n_kv_max", "n_batch", "n_ubatch", "flash_attn", "n_gpu_layers", "n_threads", "n_threads_batch",
                  "pp", "tg", "n_kv", "t_pp", "speed_pp", "t_tg", "speed_tg", "rss_hwm_mib", "engine"):
            assert k in r
        assert r["speed_tg"] == pytest.approx(r["tg"] / r["t_tg"])
    text = report.sweep_csv(res, _params(engine), {"cpu": "x"})
    data = [s for s in text.splitlines() if not s.startswith("#")]
    got = list(csv.DictReader(io.StringIO("\n".join(data))))
    assert [int(r["n_kv"]) for r in got] == [0, 16, 32, 48]
    assert float(got[2]["speed_pp"]) == pytest.approx(res["pyrt"][2].speed_pp)
    assert text.startswith("# cpu: x\n")


def test_compare_without_llama_cpp(model_path, monkeypatch):
    from pyrt.bench import engines as E
    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # makes `import llama_cpp` raise ImportError
    msgs = []
    got = E.open_engines(model_path, compare="llama.cpp", n_ctx=32, n_ubatch=16, n_threads=2, warmup=False,
                         log=msgs.append)
    assert [e.name for e in got] == ["pyrt"]
    assert len(msgs) == 1 and "llama-cpp-python is not installed" in msgs[0]
    assert E.llama_cpp_version() is None


def test_cli_sweep_jsonl_compare_missing(model_path, monkeypatch, capsys):
    from pyrt.cli import main
    monkeypatch.setitem(sys.modules, "llama_cpp", None)
    rc = main(["bench", "sweep", "-m", model_path, "-c", "48", "-ub", "16", "-n", "2", "-t", "2", "--membw", "0",
               "-o", "jsonl", "--compare", "llama.cpp"])
    out, err = capsys.readouterr()
    assert rc == 0
    assert "llama-cpp-python is not installed" in err and "sweep: N_KV" in err
    recs = [json.loads(s) for s in out.splitlines()]
    assert recs[0]["record"] == "meta" and "Q8_0" in recs[0]["model"] and recs[0]["n_kv_max"] == 48
    assert [(r["engine"], r["n_kv"], r["tg"]) for r in recs[1:]] == [("pyrt", 0, 2), ("pyrt", 16, 2), ("pyrt", 32, 2)]


def test_cli_run_and_mla(model_path, capsys):
    from pyrt.cli import main
    rc = main(["bench", "run", "-m", model_path, "-p", "16", "-n", "4", "-r", "2", "-t", "2", "--membw", "0"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert re.search(r"\| pyrt +\|.*\|\s+pp16 \| +\d+\.\d\d ± +\d+\.\d\d \|", out)
    assert re.search(r"\|\s+tg4 \|", out)
    assert re.search(r"pyrt: load \d+ ms, compile/warm-up \d+ ms", out)
    rc = main(["bench", "run", "-m", model_path, "-p", "0", "-n", "0", "-gp", "40,4", "-r", "2", "-t", "2",
               "--membw", "0"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert re.search(r"\|\s+tg4@pp40 \| +\d+\.\d\d ± +\d+\.\d\d \|", out) and "pp16" not in out
    for bad in ("40", "40,x", "4,4,4"):
        assert main(["bench", "run", "-m", model_path, "-gp", bad]) == 2
        err = capsys.readouterr()[1]
        assert err.count("\n") == 1 and err.startswith("error:") and "PP,TG" in err
    rc = main(["bench", "sweep", "-m", model_path, "-c", "32", "-ub", "16", "-mla", "3", "--membw", "0"])
    _, err = capsys.readouterr()
    assert rc == 1 and "-mla 3" in err and "llama" in err


def test_run_tests(engine):
    from pyrt.bench.run import run_tests
    res = run_tests([engine], n_prompt=16, n_gen=4, reps=3, seed=1)
    assert [r.test for r in res] == ["pp16", "tg4"]
    assert all(len(r.samples_ts) == 3 and r.avg_ts > 0 and r.stddev_ts >= 0 for r in res)
    assert engine.n_cached() == 0


def test_run_gp_decodes_after_the_prompt():
    """-gp P,G: each engine's cache filled with P prompt tokens once (chunks of n_batch), then every repetition
    removes the cells past P and decodes G tokens from position P, the engines taking turns; the pp/tg tests
    run first and start from an empty cache."""
    from pyrt.bench.run import run_tests
    log = []
    a, b = _Recorder("a", log), _Recorder("b", log)
    res = run_tests([a, b], n_prompt=0, n_gen=2, reps=2, seed=1, gp=[(40, 3)])
    assert [(r.engine, r.test, r.n_prompt, r.n_gen, len(r.samples_ts)) for r in res] == [
        ("a", "tg2", 0, 2, 2), ("b", "tg2", 0, 2, 2), ("a", "tg3@pp40", 40, 3, 2), ("b", "tg3@pp40", 40, 3, 2)]
    gp = log[log.index(("a", "pp", 16, 0)) - 1:]
    fill = [("a", "clear", 0, 0), ("a", "pp", 16, 0), ("a", "pp", 16, 16), ("a", "pp", 8, 32)]
    assert gp[:4] == fill and gp[4:8] == [(("b",) + x[1:]) for x in fill]
    rep = [("rm", 0, 40), ("tg", 1, 40), ("tg", 1, 41), ("tg", 1, 42)]
    assert gp[8:16] == [("a",) + x for x in rep] + [("b",) + x for x in rep]
    assert gp[16:24] == [("b",) + x for x in rep] + [("a",) + x for x in rep]  # the other engine starts
    assert gp[24:] == [("a", "clear", 0, 0), ("b", "clear", 0, 0)]
    for kw, msg in (({"gp": [(8, 0)]}, "-gp"), ({"gp": [(-1, 2)]}, "-gp"), ({"n_gen": 0}, "-gp"),
                    ({"gp": [(60, 5)]}, "65 cells")):
        with pytest.raises(Exception, match=msg):
            run_tests([a], **{"n_prompt": 0, "n_gen": 2, "reps": 1, **kw})


def test_roofline_accounting(engine):
    from pyrt.bench.roofline import ModelCosts
    c = ModelCosts.from_llm(engine.llm)
    t = engine.llm.file.tensors
    emb = t["token_embd.weight"]
    assert c.weight_bytes_per_token == sum(w.nbytes for w in t.values()) - emb.nbytes + emb.nbytes // emb.shape[0]
    hp = engine.llm.model.hp
    assert c.output_params == hp.n_vocab * hp.n_embd
    assert c.kv_row_bytes == [2 * 2 * hp.n_embd_k_gqa] * hp.n_layer  # f16 K + V
    # closed-form key counts against brute force, with and without a sliding window
    for n_swa in (0, 5, 40):
        c.n_swa = [n_swa] * hp.n_layer
        for pos0, n in ((0, 1), (0, 16), (3, 9), (30, 20), (60, 7)):
            brute = sum(min(p + 1, n_swa) if n_swa else p + 1 for p in range(pos0, pos0 + n))
            assert c._keys_sum(0, pos0, n) == brute
    c.n_swa = [0] * hp.n_layer
    assert c.tg_bytes(10, 2) == 2 * c.weight_bytes_per_token + sum(c.kv_row_bytes) * (11 + 12)
    pair = 2 * hp.n_head * (hp.n_embd_head_k + hp.n_embd_head_v)
    assert c.pp_flops(0, 4) == 2 * c.matmul_params * 4 + 2 * c.output_params + pair * hp.n_layer * 10


def test_plot_missing_matplotlib(swept, monkeypatch, tmp_path):
    from pyrt.bench.plot import plot_sweep
    from pyrt.errors import UnsupportedError
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(UnsupportedError, match="matplotlib"):
        plot_sweep(swept[0], str(tmp_path / "x.png"))


def test_plot_writes_png(swept, tmp_path):
    pytest.importorskip("matplotlib")
    from pyrt.bench.plot import plot_sweep
    p = tmp_path / "sweep.png"
    plot_sweep(swept[0], str(p), "tiny")
    assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_membw_positive():
    from pyrt.bench.membw import measure_membw
    from pyrt.errors import InvalidArgumentError
    assert measure_membw(8, 1, 2) > 0
    with pytest.raises(InvalidArgumentError):
        measure_membw(0)


def test_llama_cpp_extra_bufts_probe(monkeypatch):
    """llama.cpp's extra buffer types: kept unprobed without AMX; with AMX a child decodes first, and only its
    death by a signal turns them off (memoized per file); the params patch is undone after the load."""
    import os
    import subprocess
    import types
    from pyrt.bench import engines as en
    calls = []
    rcs = {"a.gguf": -11, "b.gguf": 0, "c.gguf": 1}

    def run(cmd, **kw):
        calls.append(cmd[-1])
        return types.SimpleNamespace(returncode=rcs[os.path.basename(cmd[-1])])

    monkeypatch.setattr(subprocess, "run", run)
    monkeypatch.setattr(en, "_EXTRA_BUFTS_OK", {})
    monkeypatch.setattr(en, "_cpu_has_amx", lambda: False)
    assert en.llama_cpp_extra_bufts_work("a.gguf") == (True, "") and calls == []
    monkeypatch.setattr(en, "_cpu_has_amx", lambda: True)
    assert en.llama_cpp_extra_bufts_work("a.gguf") == (False, "its AMX buffers died by SIGSEGV in a probe")
    assert en.llama_cpp_extra_bufts_work("a.gguf")[0] is False and calls == ["a.gguf"]
    assert en.llama_cpp_extra_bufts_work("b.gguf") == (True, "")
    assert en.llama_cpp_extra_bufts_work("c.gguf") == (True, "")  # its own failure: the engine's load reports it

    def fail(cmd, **kw):
        raise subprocess.TimeoutExpired(cmd, 1)

    monkeypatch.setattr(subprocess, "run", fail)
    ok, why = en.llama_cpp_extra_bufts_work("d.gguf")
    assert ok is False and "could not run" in why
    # the scoped default-params patch
    p = types.SimpleNamespace(use_extra_bufts=True)
    C = types.SimpleNamespace(llama_model_default_params=lambda: p)
    L = types.SimpleNamespace(llama_cpp=C)
    orig = C.llama_model_default_params
    with en._model_params(L, False):
        assert C.llama_model_default_params().use_extra_bufts is False
    assert C.llama_model_default_params is orig
    with pytest.raises(RuntimeError), en._model_params(L, False):
        raise RuntimeError
    assert C.llama_model_default_params is orig


@pytest.mark.oracle
def test_compare_llama_cpp_interleaved(model_path):
    pytest.importorskip("llama_cpp")
    from pyrt.bench.engines import open_engines
    from pyrt.bench.sweep import sweep
    engines = open_engines(model_path, compare="llama.cpp", n_ctx=48, n_batch=48, n_ubatch=16, n_threads=2)
    assert [e.name for e in engines] == ["pyrt", "llama.cpp"]
    res = sweep(engines, n_tg=2, seed=3)
    assert [r.n_kv for r in res["llama.cpp"]] == [r.n_kv for r in res["pyrt"]] == [0, 16, 32]
    assert [e.n_cached() for e in engines] == [48, 48]
    engines[1].close()
