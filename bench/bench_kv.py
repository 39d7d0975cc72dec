"""KV cache benchmark (not a test): state save/restore throughput in MB/s, defrag and K-shift times.

Synthetic rows in a KVCache shaped like a real model (default: Llama-3.2-1B, 16 layers x 8 kv heads x
64). Usage: python bench/bench_kv.py [--tokens 4096] [--types f16,q8_0,q8_KV] [--layers 16] [--kv 512]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time

import numba
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from pyrt.kv import state  # noqa: E402
from pyrt.kv.cache import KVCache  # noqa: E402


def best(fn, reps):
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return min(ts)


def fill(cache, n, rng):
    cells = cache.cells.find_slot(np.arange(n), np.zeros(n))
    for il in range(cache.n_layer):
        for s in range(0, n, 512):
            k = rng.standard_normal((min(512, n - s), cache.n_embd_k[il])).astype(np.float32)
            v = rng.standard_normal((min(512, n - s), cache.n_embd_v[il])).astype(np.float32)
            cache.store(il, cells[s:s + 512], k, v)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=4096)
    ap.add_argument("--types", default="f16,q8_0,q8_KV")
    ap.add_argument("--layers", type=int, default=16)
    ap.add_argument("--kv", type=int, default=512, help="n_embd_k_gqa = n_embd_v_gqa")
    ap.add_argument("--head-dim", type=int, default=64)
    ap.add_argument("--reps", type=int, default=3)
    a = ap.parse_args()
    n = a.tokens
    print(f"# bench_kv: {platform.processor() or platform.machine()}, {numba.get_num_threads()} threads, "
          f"numba {numba.__version__}, {a.layers} layers x {a.kv} K/V values, {n} tokens")
    print(f"| {'type':6} | {'state MiB':>9} | {'save MB/s':>9} | {'load MB/s':>9} | {'file save MB/s':>14} | "
          f"{'file load MB/s':>14} | {'defrag ms':>9} | {'rows moved':>10} | {'k-shift ms':>10} |")
    print("|" + "|".join("-" * w for w in (8, 11, 11, 11, 16, 16, 11, 12, 12)) + "|")
    rng = np.random.default_rng(0)
    for t in a.types.split(","):
        mk = lambda: KVCache(a.layers, n + 64, [a.kv] * a.layers, [a.kv] * a.layers, t, t,  # noqa: E731
                             head_dim_k=a.head_dim, head_dim_v=a.head_dim)
        src = mk()
        fill(src, n, rng)
        tokens = list(range(n))
        state.load_state(mk(), state.save_state(src, tokens), -1)  # compile / warm up
        data = state.save_state(src, tokens)
        mb = len(data) / 1e6
        t_save = best(lambda: state.save_state(src, tokens), a.reps)
        dst = mk()
        t_load = best(lambda: state.load_state(dst, data), a.reps)
        with tempfile.TemporaryDirectory() as d:
            p = os.path.join(d, "s.bin")
            t_fsave = best(lambda: state.save_file(p, src, tokens), a.reps)
            t_fload = best(lambda: state.load_file(p, dst), a.reps)
        # defrag: free every other run of 64 cells, then compact (half the cells move)
        frag = mk()
        fill(frag, n, rng)
        for p0 in range(0, n, 128):
            frag.cells.seq_rm(0, p0, p0 + 64)
        t0 = time.perf_counter()
        moved = frag.defrag()
        t_defrag = time.perf_counter() - t0
        # K-shift: every cell's position moves (a context shift of the whole window), rope on 64 dims
        frag.cells.seq_add(0, 0, -1, -7)
        rope = [(a.head_dim, 500000.0, 1.0, None, 0)] * a.layers
        t0 = time.perf_counter()
        frag.k_shift(rope)
        t_shift = time.perf_counter() - t0
        print(f"| {t:6} | {len(data) / 2**20:9.1f} | {mb / t_save:9.0f} | {mb / t_load:9.0f} | {mb / t_fsave:14.0f} | "
              f"{mb / t_fload:14.0f} | {t_defrag * 1e3:9.1f} | {moved:10d} | {t_shift * 1e3:10.1f} |")


if __name__ == "__main__":
    main()
