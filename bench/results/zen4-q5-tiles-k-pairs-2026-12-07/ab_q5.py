"""ab_q5.py [T]: rows8/gemm Q5_0 tile, per-row unpack + _transpose8 ("old") vs _tile_q5_0 ("new"), one thread,
one process, alternating; 2048 x 640 weights hot in L2; ns per 8-row block (per token)."""
import sys, time, numpy as np
from numba import njit
from numba.extending import intrinsic
from gguf import GGMLQuantizationType as T
from gguf.quants import quantize
from pyrt._kernels import dots_q8_0 as D
from pyrt._kernels import matmul_q8_0 as ql
TT = int(sys.argv[1]) if len(sys.argv) > 1 else 1
old = intrinsic(D._make_tile(lambda b, wb: D._unpack_q5_0(b, wb), 22, D.DOT_MODE, TT))
new = intrinsic(D._make_tile(D._unpack_q5_0, 22, D.DOT_MODE, TT))
@njit(nogil=True)
def run_old(wp, ws, xp, xs, cp, cs, nb, dp, ds, nrows, reps):
    for _ in range(reps):
        for r in range(0, nrows, 8):
            old(wp + r * ws, ws, xp, xs, cp, cs, nb, dp + r * 4, ds, np.int64(16384))
@njit(nogil=True)
def run_new(wp, ws, xp, xs, cp, cs, nb, dp, ds, nrows, reps):
    for _ in range(reps):
        for r in range(0, nrows, 8):
            new(wp + r * ws, ws, xp, xs, cp, cs, nb, dp + r * 4, ds, np.int64(16384))
rng = np.random.default_rng(0)
n_out, n_in = int(sys.argv[2]) if len(sys.argv) > 2 else 2048, 640
w = quantize(rng.standard_normal((n_out, n_in)).astype(np.float32), T.Q5_0).view(np.uint8).reshape(n_out, -1)
xq = np.empty((TT, n_in // 32 * 34), np.uint8); ql.quantize_rows_q8_0(xq, rng.standard_normal((TT, n_in)).astype(np.float32))
xc = np.empty((TT, n_in // 32, 2), np.int32); ql.x_aux_q8_0(xc, xq, np.int32(16))
d1 = np.zeros((TT, n_out), np.float32); d2 = np.zeros((TT, n_out), np.float32)
args = lambda d: (np.int64(w.ctypes.data), np.int64(w.strides[0]), np.int64(xq.ctypes.data), np.int64(xq.strides[0]),
                  np.int64(xc.ctypes.data), np.int64(xc.strides[0]), np.int64(n_in // 32), np.int64(d.ctypes.data),
                  np.int64(n_out), np.int64(n_out))
run_old(*args(d1), 1); run_new(*args(d2), 1)
assert np.array_equal(d1.view(np.uint32), d2.view(np.uint32))
reps = 200
res = {"old": [], "new": []}
for k in range(10):
    for name, f, d in (("old", run_old, d1), ("new", run_new, d2)):
        t0 = time.perf_counter(); f(*args(d), reps); dt = time.perf_counter() - t0
        res[name].append(dt / reps / (n_out // 8) / TT * 1e9)
for name in res:
    a = np.array(res[name]); print(f"T={TT} {name}: ns per 8-row block per token: min {a.min():.2f} median {np.median(a):.2f}")
