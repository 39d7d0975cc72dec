"""Hot one-thread Q4_K row dots (quants_k.rows_k1) on rows of 512 and 2048 values: the cost of a row."""
import time, numpy as np
from numba import njit
from pyrt._kernels import codes
from pyrt._kernels.quants_k import rows_k1, quantize_rows_q8_k
from pyrt._kernels.ir_k import BLOCK_BYTES_Q8_K

@njit
def run(kind, w, xk, nb, dst, reps):
    for _ in range(reps):
        rows_k1(kind, w, 0, 0, w.shape[0], xk, 0, nb, dst)

rng = np.random.default_rng(0)
for n_in, n_rows in [(512, 2048), (2048, 512), (512, 8192)]:
    nb = n_in // 256
    w = rng.integers(0, 256, (n_rows, nb * 144), dtype=np.uint8)
    # sane fp16 scales d, dmin
    w.reshape(n_rows, nb, 144)[:, :, 0:4] = np.frombuffer(np.array([0.01, 0.001], np.float16).tobytes(), np.uint8)
    x = rng.standard_normal((1, n_in)).astype(np.float32)
    xk = np.empty((1, nb * BLOCK_BYTES_Q8_K), np.uint8); quantize_rows_q8_k(xk, x)
    dst = np.empty(n_rows, np.float32)
    run(codes.Q4_K, w, xk[0], nb, dst, 1)
    reps = 200
    t = time.perf_counter(); run(codes.Q4_K, w, xk[0], nb, dst, reps); dt = (time.perf_counter() - t) / reps
    print(f"Q4_K n_in {n_in} rows {n_rows}: {dt*1e6:.1f} us, {dt/n_rows*1e9:.1f} ns/row, {w.nbytes/dt/1e9:.1f} GB/s")
