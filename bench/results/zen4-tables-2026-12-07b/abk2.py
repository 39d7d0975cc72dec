"""abk2.py: K-quant one-token row pairs (the _vdot1x2 intrinsics themselves), quants_k_old vs quants_k (tree), one thread, hot. First: git show REV:pyrt/_kernels/quants_k.py > pyrt/_kernels/quants_k_old.py and the same for ir_k.py (ir_k_old.py, with the old quants_k importing from .ir_k_old), removed afterwards."""
import sys, time, numpy as np
from numba import njit
from gguf import GGMLQuantizationType as T
import os; sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
from bench_kernels import weights
from pyrt._kernels import quants_k as N, quants_k_old as O
def mk(f):
    @njit(nogil=True)
    def two(w, xk, nbk, dst, reps):
        wb = w.shape[1]
        for _ in range(reps):
            for r in range(0, w.shape[0], 2):
                a, b = f(w, r * wb, xk, 0, wb, nbk)
                dst[r] = a; dst[r + 1] = b
    return two
rng = np.random.default_rng(0)
for name, n_out, n_in in (("Q4_K", 256, 2048), ("Q5_K", 256, 2048), ("Q6_K", 256, 2048)):
    k = name.lower()
    fo, fn = mk(getattr(O, f"_vdot1x2_{k}")), mk(getattr(N, f"_vdot1x2_{k}"))
    w = weights(rng, T[name], n_out, n_in)
    xk = np.empty((1, n_in // 256 * 292), np.uint8); N.quantize_rows_q8_k(xk, rng.standard_normal((1, n_in)).astype(np.float32))
    xk = xk[0]; nbk = n_in // 256
    d1 = np.zeros(n_out, np.float32); d2 = np.zeros(n_out, np.float32)
    fo(w, xk, nbk, d1, 1); fn(w, xk, nbk, d2, 1)
    same = np.array_equal(d1.view(np.uint32), d2.view(np.uint32))
    reps = max(1, 20_000_000 // w.nbytes)
    res = {"old": [], "new": []}
    for _ in range(9):
        for nm, f, d in (("old", fo, d1), ("new", fn, d2)):
            t0 = time.perf_counter(); f(w, xk, nbk, d, reps); dt = time.perf_counter() - t0
            res[nm].append(w.nbytes * reps / dt / 1e9)
    print(name, n_out, "x", n_in, "same bits" if same else "DIFFERENT BITS", " | ".join(f"{nm}: {max(v):.1f} GB/s (median {np.median(v):.1f})" for nm, v in res.items()), flush=True)
