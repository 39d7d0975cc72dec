"""ab5.py KIND: the one-token 8-row tiles (rows8_KIND_q8_0) of dots_q8_0_old (another commit: git show REV:pyrt/_kernels/dots_q8_0.py > pyrt/_kernels/dots_q8_0_old.py, removed afterwards) vs dots_q8_0 (tree), in one process, alternating; outputs compared bit for bit."""
import sys, time, numpy as np
from numba import njit, prange
from gguf import GGMLQuantizationType as T
import os; sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
from bench_kernels import weights
from pyrt._kernels import dots_q8_0 as N, dots_q8_0_old as O
from pyrt._kernels.matmul_q8_0 import quantize_rows_q8_0, x_aux_q8_0
kind = sys.argv[1]
bias = {"q4_0": 8, "q5_0": 16, "q8_0": 0}[kind]
def mk(f):
    @njit(nogil=True, parallel=True)
    def run(w, x, c, d, nb, reps):
        ws = np.int64(w.shape[1])
        for _ in range(reps):
            for g in prange(w.shape[0] // 8):
                f(w.ctypes.data + g * 8 * ws, ws, x.ctypes.data, np.int64(0), c.ctypes.data, np.int64(0), nb, d.ctypes.data + g * 32, np.int64(0), np.int64(512))
    return run
fo, fn = mk(getattr(O, f"rows8_{kind}_q8_0")), mk(getattr(N, f"rows8_{kind}_q8_0"))
rng = np.random.default_rng(0)
import numba
for n_out, n_in, nt in ((1024, 640, 1), (2048, 2048, 1), (65536, 640, 2), (16384, 2048, 2)):
    numba.set_num_threads(nt)
    w = weights(rng, T[kind.upper()], n_out, n_in)
    nb = np.int64(n_in // 32)
    xf = rng.standard_normal((1, n_in)).astype(np.float32)
    x = np.empty((1, nb * 34), np.uint8); quantize_rows_q8_0(x, xf)
    c = np.empty((1, nb, 2), np.int32); x_aux_q8_0(c, x, bias)
    d1 = np.zeros(n_out, np.float32); d2 = np.zeros(n_out, np.float32)
    fo(w, x, c, d1, nb, 1); fn(w, x, c, d2, nb, 1)
    assert np.array_equal(d1.view(np.uint32), d2.view(np.uint32))
    reps = max(1, 20_000_000 // w.nbytes)
    res = {"old": [], "new": []}
    for k in range(9):
        for nm, f, d in (("old", fo, d1), ("new", fn, d2)):
            t0 = time.perf_counter(); f(w, x, c, d, nb, reps); dt = time.perf_counter() - t0
            res[nm].append(w.nbytes * reps / dt / 1e9)
    print(kind, n_out, "x", n_in, f"{nt} thr", " | ".join(f"{nm}: {max(v):.1f} GB/s (median {np.median(v):.1f})" for nm, v in res.items()), flush=True)
