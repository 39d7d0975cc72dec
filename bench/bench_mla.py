"""MLA benchmarks on a DeepSeek2 file (tools/make_dsv2lite_model.py): the mode-3 crossover and the PP/TG sweep.

`crossover`: time one ubatch of T tokens at depth N_KV with the absorbed FlashMLA path (-mla 1) and the
decompressing path (-mla 2 takes it for T >= PP_MIN_TOKENS; forced here for every T), to pick
pyrt.models.deepseek2.PP_MIN_TOKENS. `sweep`: sweep-bench rows (pyrt.bench.sweep) for pyrt -mla 3,
optionally -mla 0, and llama.cpp on the same file. Usage: `python bench/bench_mla.py crossover|sweep -m FILE`.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time

import numpy as np


def _load(path, mla, n_ctx, n_ubatch, threads, type_k="f16"):
    import pyrt
    return pyrt.load(path, n_ctx=n_ctx, n_batch=max(n_ubatch, 512), n_ubatch=n_ubatch, n_threads=threads, mla=mla,
                     type_k=type_k, warmup=False)


def crossover(a) -> int:
    from pyrt.models import deepseek2
    from pyrt.runtime.context import Batch
    rng = np.random.default_rng(0)
    sizes = [int(s) for s in a.tokens.split(",")]
    print(f"| N_KV | T | absorbed ms/tok | decompressed ms/tok | faster |")
    print("|---|---|---|---|---|")
    llm = _load(a.model, 2, a.n_kv + max(sizes) + 16, max(sizes), a.threads)
    n_vocab = llm.n_vocab
    # fill the cache once to depth n_kv
    fill = rng.integers(0, n_vocab, a.n_kv).tolist()
    for s in range(0, a.n_kv, 512):
        llm.ctx.decode(Batch.from_tokens(fill[s:s + 512], pos0=s, logits="none"))
    saved = deepseek2.PP_MIN_TOKENS
    try:
        for T in sizes:
            toks = rng.integers(0, n_vocab, T).tolist()
            res = {}
            for name, thr in (("absorbed", 1 << 30), ("decompressed", 1)):
                deepseek2.PP_MIN_TOKENS = thr
                best = 1e9
                for _ in range(a.reps + 1):  # first run warms the kernels for this shape
                    llm.ctx.seq_rm(0, a.n_kv, -1)
                    t0 = time.perf_counter()
                    llm.ctx.decode(Batch.from_tokens(toks, pos0=a.n_kv, logits="last"))
                    best = min(best, time.perf_counter() - t0)
                res[name] = best / T * 1e3
            fast = min(res, key=res.get)
            print(f"| {a.n_kv} | {T} | {res['absorbed']:.2f} | {res['decompressed']:.2f} | {fast} |", flush=True)
    finally:
        deepseek2.PP_MIN_TOKENS = saved
    return 0


def sweep(a) -> int:
    from pyrt.bench.sweep import sweep as run_sweep
    from pyrt.bench.engines import LlamaCppEngine, PyrtEngine
    engines = []
    for m in [int(x) for x in a.modes.split(",") if x != ""]:
        e = PyrtEngine(a.model, n_ctx=a.ctx, n_batch=a.ubatch, n_ubatch=a.ubatch, n_threads=a.threads, mla=m)
        e.name = f"pyrt-mla{m}"
        engines.append(e)
    if a.llama_cpp:
        engines.append(LlamaCppEngine(a.model, n_ctx=a.ctx, n_batch=a.ubatch, n_ubatch=a.ubatch, n_threads=a.threads))
    print(f"# {os.path.basename(a.model)}, threads {a.threads}, ubatch {a.ubatch}, tg {a.tg}, "
          f"load average {os.getloadavg()}, {platform.processor() or platform.machine()}", flush=True)
    rows = run_sweep(engines, n_tg=a.tg, n_kv_max=a.ctx, progress=lambda s: print("#", s, flush=True))
    for name, rs in rows.items():
        print(f"\n## {name}\n\n|    PP |     TG |   N_KV |   T_PP s | S_PP t/s |   T_TG s | S_TG t/s |")
        print("|-------|--------|--------|----------|----------|----------|----------|")
        for r in rs:
            print(f"|{r.pp:6d} | {r.tg:6d} | {r.n_kv:6d} | {r.t_pp:8.3f} | {r.speed_pp:8.2f} | {r.t_tg:8.3f} | "
                  f"{r.speed_tg:8.2f} |")
    print(f"\n# load average after: {os.getloadavg()}")
    return 0


def main(argv=None) -> int:
    here = os.path.dirname(os.path.abspath(__file__))
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    for name in ("crossover", "sweep"):
        p = sub.add_parser(name)
        p.add_argument("-m", "--model", default=os.path.join(here, "..", "models", "dsv2lite-q4_0.gguf"))
        p.add_argument("-t", "--threads", type=int, default=2)
    c = sub.choices["crossover"]
    c.add_argument("--n-kv", type=int, default=1024)
    c.add_argument("--tokens", default="1,4,8,16,32,64,128")
    c.add_argument("--reps", type=int, default=2)
    s = sub.choices["sweep"]
    s.add_argument("-c", "--ctx", type=int, default=8192 + 512)
    s.add_argument("-ub", "--ubatch", type=int, default=512)
    s.add_argument("--tg", type=int, default=128)
    s.add_argument("--modes", default="3", help="pyrt -mla modes, comma separated (default: 3)")
    s.add_argument("--llama-cpp", action="store_true", help="also run llama.cpp (llama-cpp-python)")
    a = ap.parse_args(argv)
    return crossover(a) if a.cmd == "crossover" else sweep(a)


if __name__ == "__main__":
    sys.exit(main())
