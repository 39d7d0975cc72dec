"""Cold regions of Q4_K rows (512 values) of a given size per thread, after a 1 GiB read: the fixed cost of a
short parallel region against its bytes, with and without a prefetch of its first 16 KiB."""
import time, numpy as np
from numba import njit, prange
from pyrt._kernels import codes
from pyrt._kernels.quants_k import rows_k1, quantize_rows_q8_k
from pyrt._kernels.ir_k import BLOCK_BYTES_Q8_K
from pyrt._kernels.simd import prefetch

@njit(parallel=True)
def run(kind, w, starts, n_per, xk, nb, dst, pre):
    # region per start: thread t streams rows [s + t*n_per, s + (t+1)*n_per)
    rb = w.shape[1]
    for s in starts:
        for t in prange(2):
            r0 = s + t * n_per
            if pre > 0:
                a0 = np.int64(w.ctypes.data) + r0 * rb
                for o in range(0, pre, 64):
                    prefetch(a0 + o)
            rows_k1(kind, w, 0, r0, r0 + n_per, xk, 0, nb, dst)

n_in = 512; nb = 2; rb = 288
GB = 1 << 30
n_rows = GB // rb
w = np.zeros((n_rows, rb), np.uint8)
w.reshape(n_rows, nb, 144)[:, :, 0:4] = np.frombuffer(np.array([0.01, 0.001], np.float16).tobytes(), np.uint8)
x = np.random.default_rng(0).standard_normal((1, n_in)).astype(np.float32)
xk = np.empty((1, nb * BLOCK_BYTES_Q8_K), np.uint8); quantize_rows_q8_k(xk, x)
dst = np.empty(n_rows, np.float32)
flush = np.ones(1 << 28, np.float32)
for kb in (16, 64, 147, 512, 2048):
    n_per = kb * 1024 // rb
    span = 2 * n_per * rb
    k = min(200, GB // (span * 2))
    starts = (np.arange(k) * (n_rows // k)).astype(np.int64)
    run(codes.Q4_K, w, starts[:1], n_per, xk[0], nb, dst, 0)
    for pre in (0, 16384):
        best = 1e9
        for rep in range(3):
            flush.sum()
            t = time.perf_counter(); run(codes.Q4_K, w, starts, n_per, xk[0], nb, dst, pre); dt = time.perf_counter() - t
            best = min(best, dt)
        print(f"{kb} KB/thread regions, pre {pre}: {best/k*1e6:.1f} us/region, {span*k/best/1e9:.1f} GB/s", flush=True)
