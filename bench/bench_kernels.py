"""Per-type matmul throughput through pyrt.ops.matmul: GB/s of weights at n_tok=1, GFLOP/s at n_tok=512.

Usage: python bench/bench_kernels.py [--threads 2] [--types q4_0,q8_0,...] [--shapes 2048x2048,...]
                                     [--cold-mb 768] [--pp 512] [--crossover [--tokens 1,2,...]]
Weights are realistic blocks (gguf-quantized random normals, tiled). 'hot' repeats one matrix (it may sit
in a big L3); 'cold' cycles through copies totalling --cold-mb so weights stream from DRAM as in generation.
--crossover times the 'dot' and 'blas' paths at each n_tok of --tokens (to set BLAS_MIN_TOKENS in
pyrt/ops/matmul.py): ms per call and GFLOP/s of each.
--decode times only the dot path on cold weights at n_tok 1 and 4 for the Q8_0-family decode shapes of Gemma 3
270M and the llama bench model (or --cases type:n_outxn_in,...): ms per call and GB/s, median of --reps.
"""

import argparse
import os
import platform
import subprocess
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import numba  # noqa: E402
import numpy as np  # noqa: E402
from gguf import GGMLQuantizationType as T  # noqa: E402
from gguf.quants import quantize  # noqa: E402

from pyrt._kernels import simd  # noqa: E402
from pyrt.formats.qtypes import get_qtype  # noqa: E402
from pyrt.ops.matmul import matmul  # noqa: E402

ALL = ["f32", "f16", "bf16", "q8_0", "q4_0", "q5_0", "q4_k", "q5_k", "q6_k"]
K_LAYOUT = {T.Q4_K: (256, 144, 0), T.Q5_K: (256, 176, 0), T.Q6_K: (256, 210, 208)}
SHAPES = "2048x2048,5632x2048,2048x5632,32000x2048"  # n_out x n_in
DECODE_CASES = "q8_0:262144x640,q5_0:2048x640,q5_0:1024x640,q5_0:256x640,q4_0:5632x2048,q4_0:2048x5632"


def weights(rng, t, n_out, n_in):
    """[n_out, row_bytes] uint8 of real blocks: 64 quantized random rows, tiled."""
    n0 = min(64, n_out)
    if t in K_LAYOUT:  # gguf cannot quantize k-quants: random blocks with f16 d/dmin in [1e-3, 1e-2]
        bs, ts, d_off = K_LAYOUT[t]
        base = rng.integers(0, 256, (n0, n_in // bs, ts), dtype=np.uint8)
        d = rng.uniform(1e-3, 1e-2, (n0, n_in // bs, 2)).astype(np.float16).view(np.uint8)
        base[..., d_off:d_off + d.shape[-1]] = d[..., : ts - d_off]
        base = base.reshape(n0, -1)
    else:
        base = quantize(rng.standard_normal((n0, n_in)).astype(np.float32) * 0.02, t)
        base = base.view(np.uint8).reshape(n0, -1)
    return np.ascontiguousarray(np.tile(base, (-(-n_out // base.shape[0]), 1))[:n_out])


def timeit(fn, reps, min_time=0.2):
    fn()
    best, total, n = 1e9, 0.0, 0
    while n < reps or total < min_time:
        t0 = time.perf_counter()
        fn()
        dt = time.perf_counter() - t0
        best, total, n = min(best, dt), total + dt, n + 1
    return best


def decode_bench(rng, cases, cold_mb, reps):
    """Dot path only, cold weights: median ms per call and weight GB/s at n_tok 1 and 4."""
    for case in cases.split(","):
        name, shape = case.split(":")
        t = T[name.upper()]
        n_out, n_in = (int(v) for v in shape.split("x"))
        w = weights(rng, t, n_out, n_in)
        n_copies = max(2, (cold_mb << 20) // w.nbytes)
        ws = [w] + [w.copy() for _ in range(n_copies - 1)]
        cols = []
        for n_tok in (1, 4):
            x = rng.standard_normal((n_tok, n_in)).astype(np.float32)
            for m in ws[:2]:
                matmul(x, m, t, path="dot")
            times = []
            for _ in range(reps):
                t0 = time.perf_counter()
                for m in ws:
                    matmul(x, m, t, path="dot")
                times.append((time.perf_counter() - t0) / n_copies)
            med = float(np.median(times))
            cols.append(f"n_tok {n_tok}: {med * 1e3:7.3f} ms {w.nbytes / med / 1e9:6.1f} GB/s")
        print(f"{name:5s} {n_out:6d}x{n_in:<5d} {w.nbytes / 2**20:7.1f} MiB x{n_copies:<4d} " + "  ".join(cols),
              flush=True)
        del ws


def header(threads):
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                cwd=os.path.dirname(os.path.abspath(__file__))).stdout.strip() or "uncommitted"
    except OSError:
        commit = "?"
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    print(f"# commit {commit}  numba {numba.__version__}  numpy {np.__version__}  threading {numba.threading_layer()}"
          f"  threads {threads}  cpu {cpu}  avx2 {simd.HAS_AVX2}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--types", default=",".join(ALL))
    ap.add_argument("--shapes", default=SHAPES)
    ap.add_argument("--cold-mb", type=int, default=768)
    ap.add_argument("--pp", type=int, default=512)
    ap.add_argument("--crossover", action="store_true")
    ap.add_argument("--tokens", default="1,2,4,8,16,24,32,48,64,96,128")
    ap.add_argument("--decode", action="store_true")
    ap.add_argument("--cases", default=DECODE_CASES)
    ap.add_argument("--reps", type=int, default=7)
    a = ap.parse_args()
    numba.set_num_threads(a.threads)
    rng = np.random.default_rng(0)
    shapes = [tuple(int(v) for v in s.split("x")) for s in a.shapes.split(",")]
    matmul(np.ones((1, 32), np.float32), np.zeros((1, 128), np.uint8), int(T.F32))  # start the thread pool
    header(a.threads)
    if a.decode:
        decode_bench(rng, a.cases, a.cold_mb, a.reps)
        return
    for name in a.types.split(","):
        t = T[name.upper()]
        try:
            get_qtype(t).kernel("matmul")
        except Exception as e:  # k-quant kernels may be missing
            print(f"{name}: skipped ({e})")
            continue
        for n_out, n_in in shapes:
            w = weights(rng, t, n_out, n_in)
            x1 = rng.standard_normal((1, n_in)).astype(np.float32)
            t0 = time.perf_counter()
            matmul(x1, w, t)
            first = time.perf_counter() - t0
            hot = timeit(lambda: matmul(x1, w, t), 20)
            n_copies = max(2, (a.cold_mb << 20) // w.nbytes)
            ws = [w] + [w.copy() for _ in range(n_copies - 1)]

            def cold_pass():
                for m in ws:
                    matmul(x1, m, t)
            cold = timeit(cold_pass, 2, 0.5) / n_copies
            del ws
            xp = rng.standard_normal((a.pp, n_in)).astype(np.float32)
            flop = 2.0 * a.pp * n_out * n_in
            pp = timeit(lambda: matmul(xp, w, t), 2, 0.5)
            print(f"{name:5s} {n_out:6d}x{n_in:<5d} {w.nbytes / 2**20:7.1f} MiB  first {first:6.2f}s  "
                  f"tg hot {w.nbytes / hot / 1e9:6.1f} GB/s  cold {w.nbytes / cold / 1e9:6.1f} GB/s  "
                  f"pp{a.pp} {flop / pp / 1e9:6.1f} GFLOP/s", flush=True)
            if a.crossover:
                row, gf = [], []
                for nt in (int(v) for v in a.tokens.split(",")):
                    xn = rng.standard_normal((nt, n_in)).astype(np.float32)
                    td = timeit(lambda: matmul(xn, w, t, path="dot"), 3, 0.1)
                    tb = timeit(lambda: matmul(xn, w, t, path="blas"), 3, 0.1)
                    row.append(f"{nt}:{td * 1e3:.2f}/{tb * 1e3:.2f}")
                    fl = 2e-9 * nt * n_out * n_in
                    gf.append(f"{nt}:{fl / td:.0f}/{fl / tb:.0f}")
                print("      crossover n_tok:dot_ms/blas_ms  " + "  ".join(row), flush=True)
                print("      crossover n_tok:dot/blas GFLOP/s  " + "  ".join(gf), flush=True)


if __name__ == "__main__":
    main()
