"""rate.py NAME...: one-thread Q4_K one-token row-dot rate of kernel copies in L2 (0.5 MB) and L3 (16 MB), alternating."""
import sys, os, time, importlib
sys.path.insert(0, os.environ.get("KV", "/tmp/kv"))
import numpy as np
from numba import njit
names = sys.argv[1:]
rng = np.random.default_rng(0)
nb = 8
def mkw(rows):
    w = rng.integers(0, 256, (rows, nb, 144), dtype=np.uint8)
    w[:, :, 0:2] = np.frombuffer(np.float16(0.01).tobytes(), np.uint8); w[:, :, 2:4] = np.frombuffer(np.float16(0.02).tobytes(), np.uint8)
    return w.reshape(rows, nb * 144)
x = rng.integers(-127, 128, (1, nb, 292)).astype(np.int8).view(np.uint8)
x[:, :, :4] = np.frombuffer(np.float32(0.5).tobytes(), np.uint8)
x = np.ascontiguousarray(x.reshape(1, nb * 292))
fns = {}
for n in names:
    v1 = importlib.import_module(n + ".quants_k")._vdot1_q4_k
    def mk(v1):
        @njit(nogil=True)
        def f(dst, w, x, reps):
            rb = w.shape[1]
            for r in range(reps):
                for i in range(w.shape[0]):
                    dst[i] = v1(w, i * rb, x, 0, 0, nb)
        return f
    fns[n] = mk(v1)
for mb in (0.5, 16):
    rows = int(mb * 1e6 / (nb * 144))
    w = mkw(rows).reshape(1, -1); dst = np.empty(rows, np.float32); w2 = w.reshape(rows, nb * 144)
    ref = None
    for n in names:
        fns[n](dst, w2, x, 1)
        if ref is None: ref = dst.copy()
        print(n, "equal:", np.array_equal(ref, dst))
    reps = max(1, int(400e6 / w.nbytes))
    res = {n: [] for n in names}
    for r in range(5):
        for n in names:
            t0 = time.perf_counter(); fns[n](dst, w2, x, reps); res[n].append(w.nbytes * reps / (time.perf_counter() - t0) / 1e9)
    print(mb, "MB:", {n: round(max(v), 2) for n, v in res.items()}, flush=True)
