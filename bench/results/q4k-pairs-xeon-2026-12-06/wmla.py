"""wmla.py uk|uv NAME...: one layer's W_UK (16 heads x 512 rows x 128 Q5_0, matmul_q8_0._rows_q) or W_UV (16 heads x
128 rows x 512 Q4_K, rows.rows_any) of kernel copies, one thread, weights from DRAM (a ~1 GB pool) and warm."""
import sys, os, time, importlib
sys.path.insert(0, os.environ.get("KV", "/tmp/kv"))
import numpy as np, numba
from numba import njit
from pyrt._kernels import codes
part, names = sys.argv[1], sys.argv[2:]
rng = np.random.default_rng(0)
H = 16
if part == "uk":  # rows of 128 values, 512 a head; Q5_0 blocks of 22 bytes, d first
    rows, n_in, blk, bb, scale = 512, 128, 32, 22, [0.01]
else:  # rows of 512 values, 128 a head; Q4_K blocks of 144 bytes, d and dmin first
    rows, n_in, blk, bb, scale = 128, 512, 256, 144, [0.01, 0.02]
rb = n_in // blk * bb
nmat = int(1.0e9 / (H * rows * rb))
pool = rng.integers(0, 256, (nmat, H * rows, rb), dtype=np.uint8)
for b in range(0, rb, bb):
    pool[:, :, b:b + 2 * len(scale)] = np.frombuffer(np.float16(scale).tobytes(), np.uint8)


def make(n):
    if part == "uk":
        mq = importlib.import_module(n + ".matmul_q8_0")
        rq, qz, aux, qb = mq._rows_q, mq.quantize_rows_q8_0, mq.x_aux_q8_0, mq._q_bias

        @njit(nogil=True)
        def f(pool, x, out, m0, m1, warm):
            kind = np.int64(codes.Q5_0)
            nb = n_in // 32
            qq = np.empty((H, nb * 34), np.uint8)
            qz(qq, x)
            qc = np.empty((H, nb, 2), np.int32)
            aux(qc, qq, qb(kind))
            ws = np.int64(pool.strides[1])
            for m in range(m0, m1):
                base = np.int64(pool[m0 if warm else m].ctypes.data)
                for h in range(H):
                    rq(kind, base + h * rows * ws, ws, 0, rows, np.int64(qq.ctypes.data) + h * nb * 34,
                       np.int64(qc.ctypes.data) + h * nb * 8, np.int64(nb), out[h], np.int64(16384))
        return f
    ra = importlib.import_module(n + ".rows")
    rows_any, q8k = ra.rows_any, ra.q8_k_rows

    @njit(nogil=True)
    def f(pool, x, out, m0, m1, warm):
        kind = np.int64(codes.Q4_K)
        xk, nbk = q8k(x, True)
        for m in range(m0, m1):
            w = pool[m0 if warm else m]
            for h in range(H):
                rows_any(kind, w, h * rows, 0, rows, np.int64(0), np.int64(0), np.int64(0), xk[h], nbk, out[h],
                         np.int64(16384))
    return f


fns = {n: make(n) for n in names}
numba.set_num_threads(1)
x = rng.standard_normal((H, n_in)).astype(np.float32)
outs = {n: np.empty((H, rows), np.float32) for n in names}
for n in names:
    fns[n](pool, x, outs[n], 0, 1, False)
print("equal", all(np.array_equal(outs[n], outs[names[0]]) for n in names))
res = {(n, w): [] for n in names for w in (0, 1)}
k = min(200, nmat // 2)
for r in range(4):
    for n in names:
        for w in (0, 1):
            m0 = (r * 300) % (nmat - k)
            t0 = time.perf_counter()
            fns[n](pool, x, outs[n], m0, m0 + k, w)
            res[(n, w)].append((time.perf_counter() - t0) / k * 1e6)
for (n, w), v in res.items():
    print(n, "warm" if w else "DRAM", f"{min(v):.1f} us/layer ({H * rows * rb / min(v) / 1e3:.1f} GB/s)")
