"""kvs.py CELLS: flash_mla decode (f16 cache, 27 layers, one token, 2 threads) at several MIN_ITEMS (n_split)."""
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
for rnd in range(4):
    for mi in (2, 4, 8, 16, 32):
        mla.MIN_ITEMS = mi
        with paths.using(amx=False):
            best = 1e9
            for _ in range(3):
                t0 = time.perf_counter()
                for k in ks:
                    out = mla.flash_mla(q, k, "f16", *args)
                best = min(best, time.perf_counter() - t0)
        res.setdefault(mi, []).append(round(best * 1e3, 2))
print({k: (min(v), max(v)) for k, v in res.items()})
