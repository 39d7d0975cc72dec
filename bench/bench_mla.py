"""MLA benchmarks on a DeepSeek2 file (tools/make_dsv2lite_model.py): the mode-3 crossover and the PP/TG sweep.

`memory`: RSS (file-backed and anonymous) and peak RSS through a long prompt and generation. `kernel`: the
absorbed attention of one decoded token over L layers' caches of N cells each (DeepSeek-V2-Lite shapes, no
model file), with the AMX-BF16 items and with the f32 items, the caches cold (read from memory as in a model).
`crossover`: time one ubatch of T tokens at depth N_KV with the absorbed FlashMLA path (-mla 1) and the
decompressing path (-mla 2 takes it for T >= mla_decompress_min_tokens; forced here for every T), to pick
pyrt.ops.paths.Paths.mla_decompress_min_tokens. `sweep`: sweep-bench rows (pyrt.bench.sweep) for pyrt -mla 3,
optionally -mla 0, and llama.cpp on the same file. `heads`: the decompressed prompt attention alone (16 heads of
192/128 values, T tokens at depth N_KV) on the AMX-BF16 tiles and through BLAS. Usage: `python
bench/bench_mla.py crossover|sweep|memory -m FILE`, `python bench/bench_mla.py kernel|heads`.
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
    from pyrt.ops import paths
    from pyrt.runtime.context import Batch
    rng = np.random.default_rng(0)
    sizes = [int(s) for s in a.tokens.split(",")]
    print("| N_KV | T | absorbed ms/tok | decompressed ms/tok | faster |")
    print("|---|---|---|---|---|")
    llm = _load(a.model, 2, a.n_kv + max(sizes) + 16, max(sizes), a.threads)
    n_vocab = llm.n_vocab
    # fill the cache once to depth n_kv
    fill = rng.integers(0, n_vocab, a.n_kv).tolist()
    for s in range(0, a.n_kv, 512):
        llm.ctx.decode(Batch.from_tokens(fill[s:s + 512], pos0=s, logits="none"))
    for T in sizes:
        toks = rng.integers(0, n_vocab, T).tolist()
        res = {}
        for name, thr in (("absorbed", 1 << 30), ("decompressed", 1)):
            best = 1e9
            with paths.using(mla_decompress_min_tokens=thr, mla_amx_min_cells=1 if thr > 1 else 1 << 30):
                for _ in range(a.reps + 1):  # first run warms the kernels for this shape
                    llm.ctx.seq_rm(0, a.n_kv, -1)
                    t0 = time.perf_counter()
                    llm.ctx.decode(Batch.from_tokens(toks, pos0=a.n_kv, logits="last"))
                    best = min(best, time.perf_counter() - t0)
            res[name] = best / T * 1e3
        fast = min(res, key=res.get)
        print(f"| {a.n_kv} | {T} | {res['absorbed']:.2f} | {res['decompressed']:.2f} | {fast} |", flush=True)
    return 0


def sweep(a) -> int:
    from pyrt.bench.sweep import sweep as run_sweep
    from pyrt.bench.engines import LlamaCppEngine, PyrtEngine
    engines = []
    if a.cold:  # the load's prefetch then reads the file back in 2 MiB folios (pyrt.io.mapping)
        from pyrt.io.mapping import drop_from_page_cache
        drop_from_page_cache(a.model)
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


def memory(a) -> int:
    """Peak RSS through a long generation: the K-only cache at n_ctx, weights mapped, split file/anon."""
    from pyrt.bench.facts import _status_mib
    from pyrt.runtime.context import Batch

    def line(what):
        f = {k: _status_mib(k) for k in ("VmRSS", "VmHWM", "RssFile", "RssAnon")}
        print(f"| {what} | {f['VmRSS']:.0f} | {f['RssFile']:.0f} | {f['RssAnon']:.0f} | {f['VmHWM']:.0f} |",
              flush=True)
    llm = _load(a.model, a.mla, a.ctx, 512, a.threads, a.type_k)
    print(llm.ctx.memory_report())
    print(f"\nfile {os.path.getsize(a.model) / 2**20:.0f} MiB, n_ctx {a.ctx}, -mla {a.mla}, prompt {a.prompt}, "
          f"generated {a.gen}\n\n| after | RSS MiB | file-backed | anonymous | peak RSS |\n|---|---|---|---|---|")
    line("load")
    rng = np.random.default_rng(0)
    toks = rng.integers(0, llm.n_vocab, a.prompt).tolist()
    t0 = time.perf_counter()
    for s in range(0, a.prompt, 512):
        llm.ctx.decode(Batch.from_tokens(toks[s:s + 512], pos0=s, logits="last"))
    t_pp = time.perf_counter() - t0
    line(f"prompt of {a.prompt} ({a.prompt / t_pp:.1f} t/s)")
    t0 = time.perf_counter()
    tok = 1
    for i in range(a.gen):
        lg = llm.ctx.decode(Batch.from_tokens([tok], pos0=a.prompt + i, logits="last"))
        tok = int(np.argmax(lg[-1]))
    t_tg = time.perf_counter() - t0
    line(f"{a.gen} generated ({a.gen / t_tg:.2f} t/s)")
    return 0


def kernel(a) -> int:
    from pyrt.ops import mla, paths
    H, C, R = a.heads, 512, 64
    rng = np.random.default_rng(0)
    q = rng.standard_normal((1, H, R + C)).astype(np.float32)
    print(f"| cells | items | ms/token ({a.layers} layers) | us/cell/layer |\n|---|---|---|---|")
    for n in (int(s) for s in a.cells.split(",")):
        ks = [(0.5 * rng.standard_normal((n, R + C))).astype(np.float16) for _ in range(a.layers)]
        pos = np.arange(n, dtype=np.int32)
        args = (pos, np.ones(n, np.uint64), pos.copy(), np.array([n], np.int32), np.zeros(1, np.int32), 0.1, R)
        for items, amx in (("AMX-BF16", True), ("f32", False)):
            with paths.using(amx=amx):
                if amx and mla.amx_config().size == 0:
                    continue
                best = 1e9
                for _ in range(a.reps + 1):  # the first warms the kernels
                    t0 = time.perf_counter()
                    for k in ks:  # each layer's cache is out of cache again when its turn comes
                        mla.flash_mla(q, k, "f16", *args)
                    best = min(best, time.perf_counter() - t0)
            print(f"| {n} | {items} | {best * 1e3:.2f} | {best / a.layers / n * 1e6:.3f} |", flush=True)
    return 0


def heads(a) -> int:
    """The decompressed prompt attention alone: T tokens of 16 heads (192/128 values) over N_KV + T cells, causal,
    on the AMX-BF16 tiles and as per-head BLAS products (ops.attention.attention_matrix)."""
    from pyrt.ops import mla
    from pyrt.ops.attention import attention_matrix
    H, dk, dv, T = a.heads, 192, 128, a.tokens
    rng = np.random.default_rng(0)
    print(f"| N_KV | T | AMX-BF16 ms | BLAS ms |\n|---|---|---|---|")
    for n_kv in (int(s) for s in a.n_kv.split(",")):
        n = n_kv + T
        rows = rng.standard_normal((n, H, dk + dv)).astype(np.float32)
        q = rng.standard_normal((T, H, dk)).astype(np.float32)
        cp = np.arange(n, dtype=np.int32)
        cs = np.ones(n, np.uint64)
        qp = np.arange(n_kv, n, dtype=np.int32)
        qs = np.zeros(T, np.int32)
        k = np.ascontiguousarray(rows[:, :, :dk]).reshape(n, H * dk)
        v = np.ascontiguousarray(rows[:, :, dk:]).reshape(n, H * dv)
        runs = {"BLAS": lambda: attention_matrix(q, k, v, cp, cs, qp, qs, 0.07, H, dv)}
        if mla.heads_amx_takes(dk, dv, "f16"):
            runs["AMX"] = lambda: mla.heads_attention_amx(q, rows, dv, cp, cs, qp, qs, 0.07)
        res = {}
        for name, fn in runs.items():
            best = 1e9
            for _ in range(a.reps + 1):  # the first warms the kernels
                t0 = time.perf_counter()
                fn()
                best = min(best, time.perf_counter() - t0)
            res[name] = f"{best * 1e3:.2f}"
        print(f"| {n_kv} | {T} | {res.get('AMX', '-')} | {res['BLAS']} |", flush=True)
    return 0


def main(argv=None) -> int:
    here = os.path.dirname(os.path.abspath(__file__))
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    for name in ("crossover", "sweep", "memory"):
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
    s.add_argument("--cold", action="store_true",
                   help="drop the file from the page cache first, so that pyrt's load reads it back in 2 MiB "
                        "folios (on hosts that split cached huge folios over time)")
    mem = sub.choices["memory"]
    mem.add_argument("-c", "--ctx", type=int, default=32768)
    mem.add_argument("--prompt", type=int, default=4096)
    mem.add_argument("--gen", type=int, default=256)
    mem.add_argument("--mla", type=int, default=3)
    mem.add_argument("-ctk", "--type-k", default="f16")
    kn = sub.add_parser("kernel")
    kn.add_argument("--cells", default="1024,4096,8192")
    kn.add_argument("--layers", type=int, default=27)
    kn.add_argument("--heads", type=int, default=16)
    kn.add_argument("--reps", type=int, default=3)
    hd = sub.add_parser("heads")
    hd.add_argument("--n-kv", default="0,1024,4096,8192")
    hd.add_argument("--tokens", type=int, default=512)
    hd.add_argument("--heads", type=int, default=16)
    hd.add_argument("--reps", type=int, default=3)
    a = ap.parse_args(argv)
    return {"crossover": crossover, "sweep": sweep, "memory": memory, "kernel": kernel, "heads": heads}[a.cmd](a)


if __name__ == "__main__":
    sys.exit(main())
