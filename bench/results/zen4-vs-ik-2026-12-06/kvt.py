"""kvt.py CELLS TILES...: bench_mla kernel (f32 items, f16 cache, 27 layers, one token) with ops.mla.KV_TILE set."""
import sys, time
import numpy as np
from pyrt.ops import mla, paths
H, C, R, L = 16, 512, 64, 27
n = int(sys.argv[1])
rng = np.random.default_rng(0)
q = rng.standard_normal((1, H, R + C)).astype(np.float32)
ks = [(0.5 * rng.standard_normal((n, R + C))).astype(np.float16) for _ in range(L)]
pos = np.arange(n, dtype=np.int32)
args = (pos, np.ones(n, np.uint64), pos.copy(), np.array([n], np.int32), np.zeros(1, np.int32), 0.1, R)
res = {}
ref = None
for rnd in range(3):
    for t in (int(s) for s in sys.argv[2:]):
        mla.KV_TILE = t
        with paths.using(amx=False):
            best = 1e9
            for _ in range(4):
                t0 = time.perf_counter()
                for k in ks:
                    out = mla.flash_mla(q, k, "f16", *args)
                best = min(best, time.perf_counter() - t0)
        res.setdefault(t, []).append(round(best * 1e3, 2))
print(res)
