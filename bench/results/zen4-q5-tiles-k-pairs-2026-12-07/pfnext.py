"""pfnext.py: Q5_0 2048x640 matvecs over 160 MB of consecutive copies (cold), each prefetching PF bytes ahead
(16 KiB: its own stream; the copy stride: the next copy's same rows), 2 threads."""
import time, numpy as np
from numba import njit, prange
from gguf import GGMLQuantizationType as T
from gguf.quants import quantize
from pyrt._kernels import matmul_q8_0 as ql
from pyrt._kernels.matmul_q8_0 import _rows_q, KIND_Q5_0, ROW_TILE
@njit(nogil=True, parallel=True)
def mv(w, xq, xc, dst, pf):
    n_out = w.shape[0]; nb = np.int64(xc.shape[1])
    for it in prange((n_out + ROW_TILE - 1) // ROW_TILE):
        r0 = it * ROW_TILE
        _rows_q(KIND_Q5_0, np.int64(w.ctypes.data), np.int64(w.strides[0]), r0, min(r0 + ROW_TILE, n_out),
                np.int64(xq.ctypes.data), np.int64(xc.ctypes.data), nb, dst, pf)
@njit(nogil=True)
def loop(ws, xq, xc, dst, pf, spin):
    for i in range(ws.shape[0]):
        p = pf if pf >= 0 else np.int64(ws[0].nbytes)
        if i == ws.shape[0] - 1:
            p = np.int64(16384)
        mv(ws[i], xq, xc, dst, p)
        s = 0.0
        for k in range(spin):  # compute-only gap (the attention of a layer)
            s += k * 1e-9
        dst[0] += s * 0.0
rng = np.random.default_rng(0)
w0 = quantize(rng.standard_normal((2048, 640)).astype(np.float32), T.Q5_0).view(np.uint8).reshape(2048, -1)
n = 160_000_000 // w0.nbytes
ws = np.stack([w0] * n)
xq = np.empty((1, 20 * 34), np.uint8); ql.quantize_rows_q8_0(xq, rng.standard_normal((1, 640)).astype(np.float32))
xc = np.empty((1, 20, 2), np.int32); ql.x_aux_q8_0(xc, xq, np.int32(16))
dst = np.zeros(2048, np.float32)
loop(ws[:2], xq, xc, dst, np.int64(16384), 0); loop(ws[:2], xq, xc, dst, np.int64(-1), 0)
for spin in (0, 20000):
    res = {16384: [], -1: []}
    for k in range(5):
        for pf in (16384, -1):
            t0 = time.perf_counter(); loop(ws, xq, xc, dst, np.int64(pf), spin); res[pf].append((time.perf_counter() - t0) / n * 1e6)
    for pf in res:
        print(f"spin {spin} pf {'own 16K' if pf > 0 else 'next copy'}: us per matvec min {min(res[pf]):.1f} median {np.median(res[pf]):.1f}")
