"""wuk.py NAME...: W_UK of one layer (16 heads x 512 rows x 128 Q5_0) with _rows_q, one thread, weights from DRAM (a 1 GB pool) and warm."""
import sys, os, time, importlib
sys.path.insert(0, os.environ.get("KV", "/tmp/kv"))
import numpy as np, numba
from numba import njit
from pyrt._kernels import codes
names = sys.argv[1:]
rng = np.random.default_rng(0)
H, C, dn = 16, 512, 128
rb = dn // 32 * 22
nmat = 1400
pool = rng.integers(0, 256, (nmat, H * C, rb), dtype=np.uint8)
for b in range(0, rb, 22):
    pool[:, :, b:b + 2] = np.frombuffer(np.float16(0.01).tobytes(), np.uint8)
fns = {}
for n in names:
    mq = importlib.import_module(n + ".matmul_q8_0")
    rq, qz, aux, qb = mq._rows_q, mq.quantize_rows_q8_0, mq.x_aux_q8_0, mq._q_bias
    def mk(rq, qz, aux, qb):
        @njit(nogil=True)
        def f(pool, q_nope, out, m0, m1, warm):
            kind = np.int64(codes.Q5_0)
            qq = np.empty((H, 4 * 34), np.uint8); qz(qq, q_nope)
            qc = np.empty((H, 4, 2), np.int32); aux(qc, qq, qb(kind))
            kbs = np.int64(pool.strides[1])
            for m in range(m0, m1):
                mm = m0 if warm else m
                base = np.int64(pool[mm].ctypes.data)
                for h in range(H):
                    rq(kind, base + h * C * kbs, kbs, 0, C, np.int64(qq.ctypes.data) + h * 136,
                       np.int64(qc.ctypes.data) + h * 32, np.int64(4), out[h], np.int64(16384))
        return f
    fns[n] = mk(rq, qz, aux, qb)
numba.set_num_threads(1)
q = rng.standard_normal((H, dn)).astype(np.float32)
outs = {n: np.empty((H, C), np.float32) for n in names}
for n in names: fns[n](pool, q, outs[n], 0, 1, False)
print("equal", all(np.array_equal(outs[n], outs[names[0]]) for n in names))
res = {(n, w): [] for n in names for w in (0, 1)}
for r in range(4):
    for n in names:
        for w in (0, 1):
            k = 200
            t0 = time.perf_counter(); fns[n](pool, q, outs[n], (r * 300) % (nmat - k), (r * 300) % (nmat - k) + k, w); dt = (time.perf_counter() - t0) / k
            res[(n, w)].append(dt * 1e6)
for (n, w), v in res.items():
    print(n, "warm" if w else "DRAM", f"{min(v):.1f} us/layer ({H*C*rb/min(v)/1e3:.1f} GB/s)")
