"""wuv.py NAME...: W_UV of one layer (16 heads x 128 rows x 512 Q4_K) with rows_any, one thread, DRAM pool and warm."""
import sys, os, time, importlib
sys.path.insert(0, os.environ.get("KV", "/tmp/kv"))
import numpy as np, numba
from numba import njit
from pyrt._kernels import codes
names = sys.argv[1:]
rng = np.random.default_rng(0)
H, C, dv = 16, 512, 128
rb = C // 256 * 144
nmat = 1600
pool = rng.integers(0, 256, (nmat, H * dv, rb), dtype=np.uint8)
for b in range(0, rb, 144):
    pool[:, :, b:b + 4] = np.frombuffer(np.float16([0.01, 0.02]).tobytes(), np.uint8)
fns = {}
for n in names:
    ra = importlib.import_module(n + ".rows")
    def mk(rows_any, q8k):
        @njit(nogil=True)
        def f(pool, o, out, m0, m1, warm):
            kind = np.int64(codes.Q4_K)
            ok, nbok = q8k(o, True)
            for m in range(m0, m1):
                w = pool[m0 if warm else m]
                for h in range(H):
                    rows_any(kind, w, h * dv, 0, dv, np.int64(0), np.int64(0), np.int64(0), ok[h], nbok, out[h], np.int64(16384))
        return f
    fns[n] = mk(ra.rows_any, ra.q8_k_rows)
numba.set_num_threads(1)
o = rng.standard_normal((H, C)).astype(np.float32)
outs = {n: np.empty((H, dv), np.float32) for n in names}
for n in names: fns[n](pool, o, outs[n], 0, 1, False)
print("equal", all(np.array_equal(outs[n], outs[names[0]]) for n in names))
res = {(n, w): [] for n in names for w in (0, 1)}
for r in range(4):
    for n in names:
        for w in (0, 1):
            k = 200
            m0 = (r * 300) % (nmat - k)
            t0 = time.perf_counter(); fns[n](pool, o, outs[n], m0, m0 + k, w); dt = (time.perf_counter() - t0) / k
            res[(n, w)].append(dt * 1e6)
for (n, w), v in res.items():
    print(n, "warm" if w else "DRAM", f"{min(v):.1f} us/layer ({H*dv*rb/min(v)/1e3:.1f} GB/s)")
