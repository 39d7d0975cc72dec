"""ab_k.py: K-quant one-token rows, one row a call (_vdot1) vs two (_vdot1x2), one thread, hot, in one process."""
import sys, time, numpy as np
from numba import njit
from gguf import GGMLQuantizationType as T
import os
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
from bench_kernels import weights  # noqa: E402
from pyrt._kernels import quants_k as K
@njit(nogil=True)
def one(w, xk, nbk, dst, reps, kind):
    wb = w.shape[1]
    for _ in range(reps):
        for r in range(w.shape[0]):
            if kind == 0:
                dst[r] = K._vdot1_q4_k(w, r * wb, xk, 0, 0, nbk)
            else:
                dst[r] = K._vdot1_q6_k(w, r * wb, xk, 0, 0, nbk)
@njit(nogil=True)
def two(w, xk, nbk, dst, reps, kind):
    wb = w.shape[1]
    for _ in range(reps):
        for r in range(0, w.shape[0], 2):
            if kind == 0:
                a, b = K._vdot1x2_q4_k(w, r * wb, xk, 0, wb, nbk)
            else:
                a, b = K._vdot1x2_q6_k(w, r * wb, xk, 0, wb, nbk)
            dst[r] = a; dst[r + 1] = b
rng = np.random.default_rng(0)
for name, kind, n_out, n_in in (("Q4_K", 0, 640, 1024), ("Q4_K", 0, 1408, 2048), ("Q6_K", 1, 640, 2048)):
    w = weights(rng, T[name], n_out, n_in)
    xk = np.empty((1, n_in // 256 * 292), np.uint8); K.quantize_rows_q8_k(xk, rng.standard_normal((1, n_in)).astype(np.float32))
    xk = xk[0]; nbk = n_in // 256
    d1 = np.zeros(n_out, np.float32); d2 = np.zeros(n_out, np.float32)
    one(w, xk, nbk, d1, 1, kind); two(w, xk, nbk, d2, 1, kind)
    assert np.array_equal(d1.view(np.uint32), d2.view(np.uint32)), name
    reps = max(1, 2_000_000 // w.nbytes)
    res = {"one": [], "two": []}
    for k in range(7):
        for nm, f, d in (("one", one, d1), ("two", two, d2)):
            t0 = time.perf_counter(); f(w, xk, nbk, d, reps, kind); dt = time.perf_counter() - t0
            res[nm].append(w.nbytes * reps / dt / 1e9)
    print(name, n_out, "x", n_in, " | ".join(f"{nm}: {max(v):.1f} GB/s (median {np.median(v):.1f})" for nm, v in res.items()), flush=True)
