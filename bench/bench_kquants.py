"""GB/s of weight bytes (and GOP/s) of the k-quant matmuls in pyrt._kernels.quants_k.

Usage: PYTHONPATH=. python bench/bench_kquants.py [--threads 2] [--n-out 4096] [--n-in 4096] [--n-tok 1,4,16]
'hot' repeats one matrix (it may sit in a large L3); 'cold' cycles through --cold-mb of distinct matrices so that
weights stream from DRAM, as in generation. Hot times are the minimum over repetitions, cold ones the median call
(the machine may be shared).
"""

import argparse
import platform
import time

import numba
import numpy as np

from pyrt._kernels import quants_k as qk

TYPES = {
    "q4_k": (qk.BLOCK_BYTES_Q4_K, qk.matmul_q4_k, 0),
    "q5_k": (qk.BLOCK_BYTES_Q5_K, qk.matmul_q5_k, 0),
    "q6_k": (qk.BLOCK_BYTES_Q6_K, qk.matmul_q6_k, 208),
}


def rand_weights(rng, n_out, n_in, bb, d_off, n_mats=1):
    """[n_mats, n_out, n_in/256*bb] uint8 random blocks with small positive f16 scales at d_off (2 of them if 0)."""
    nb = n_in // qk.QK_K
    w = rng.integers(0, 256, (n_mats, n_out, nb, bb), dtype=np.uint8)
    n_d = 2 if d_off == 0 else 1
    d = rng.uniform(1e-3, 1e-2, (n_mats, n_out, nb, n_d)).astype(np.float16).view(np.uint8)
    w[..., d_off : d_off + 2 * n_d] = d
    return w.reshape(n_mats, n_out, nb * bb)


def timeit(fn, reps):
    best = np.inf
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--n-out", type=int, default=4096)
    ap.add_argument("--n-in", type=int, default=4096)
    ap.add_argument("--n-tok", default="1,4,16")
    ap.add_argument("--cold-mb", type=int, default=1024)
    ap.add_argument("--types", default="q4_k,q5_k,q6_k")
    a = ap.parse_args()
    numba.set_num_threads(a.threads)
    rng = np.random.default_rng(0)
    print(
        f"cpu={platform.processor() or platform.machine()} avx2={qk.HAS_AVX2} threads={a.threads} "
        f"numba={numba.__version__} n_out={a.n_out} n_in={a.n_in}"
    )
    x = rng.standard_normal((512, a.n_in)).astype(np.float32)
    xq = np.empty((512, a.n_in // qk.QK_K * qk.BLOCK_BYTES_Q8_K), np.uint8)
    qk.quantize_rows_q8_k(xq, x)
    t = timeit(lambda: qk.quantize_rows_q8_k(xq, x), 10)
    print(f"quantize_rows_q8_k (serial) [512, {a.n_in}]: {t * 1e3:.2f} ms = {x.size / t / 1e9:.2f} Gelem/s")
    for name in a.types.split(","):
        bb, fn, d_off = TYPES[name]
        w = rand_weights(rng, a.n_out, a.n_in, bb, d_off)[0]
        for n_tok in [int(v) for v in a.n_tok.split(",")]:
            x = rng.standard_normal((n_tok, a.n_in)).astype(np.float32)
            xq = np.empty((n_tok, a.n_in // qk.QK_K * qk.BLOCK_BYTES_Q8_K), np.uint8)
            qk.quantize_rows_q8_k(xq, x)
            dst = np.empty((n_tok, a.n_out), np.float32)
            t0 = time.perf_counter()
            fn(dst, w, xq)
            t_first = time.perf_counter() - t0
            t = timeit(lambda: fn(dst, w, xq), max(5, 200 // n_tok))
            gop = 2 * a.n_out * a.n_in * n_tok / t / 1e9
            print(
                f"{name} n_tok={n_tok:3d}: hot {t * 1e3:7.3f} ms = {w.nbytes / t / 1e9:5.1f} GB/s, {gop:6.1f} GOP/s"
                f"  (first call {t_first:.2f} s)"
            )
        deq = getattr(qk, f"dequant_rows_{name}")
        rows = np.empty((256, a.n_in), np.float32)
        deq(rows, w[:256])
        t = timeit(lambda: deq(rows, w[:256]), 20)
        print(f"{name} dequant_rows (serial): {rows.size / t / 1e9:.2f} Gelem/s")
        n_mats = max(2, a.cold_mb * 2**20 // w.nbytes)
        ws = rand_weights(rng, a.n_out, a.n_in, bb, d_off, n_mats)
        xq = np.empty((1, a.n_in // qk.QK_K * qk.BLOCK_BYTES_Q8_K), np.uint8)
        qk.quantize_rows_q8_k(xq, rng.standard_normal((1, a.n_in)).astype(np.float32))
        dst = np.empty((1, a.n_out), np.float32)

        per_call = []
        for rep in range(4):
            for m in ws:
                t0 = time.perf_counter()
                fn(dst, m, xq)
                if rep:  # the first sweep only faults the pages in
                    per_call.append(time.perf_counter() - t0)
        t = float(np.median(per_call))
        print(
            f"{name} n_tok=  1: cold {t * 1e3:7.3f} ms = {w.nbytes / t / 1e9:5.1f} GB/s (median call; best "
            f"{w.nbytes / min(per_call) / 1e9:.1f} GB/s; {n_mats} matrices, {ws.nbytes >> 20} MiB)"
        )


if __name__ == "__main__":
    main()
