"""kvkind.py CELLS: FlashMLA 27 layers, one token, f16 vs bf16 vs f32 caches (same values), 2 threads."""
import sys, time
import numpy as np
from pyrt.ops import mla, paths
H, C, R, L = 16, 512, 64, 27
n = int(sys.argv[1])
rng = np.random.default_rng(0)
q = rng.standard_normal((1, H, R + C)).astype(np.float32)
base = (0.5 * rng.standard_normal((min(n, 2048), R + C))).astype(np.float16)
f16 = [np.ascontiguousarray(np.tile(base, (-(-n // base.shape[0]), 1))[:n]) for _ in range(L)]
caches = {"f16": [a.view(np.uint16) for a in f16],
          "bf16": [(a.astype(np.float32).view(np.uint32) >> 16).astype(np.uint16) for a in f16],
          "f32": [a.astype(np.float32) for a in f16]}
pos = np.arange(n, dtype=np.int32)
args = (pos, np.ones(n, np.uint64), pos.copy(), np.arange(n - 1, n, dtype=np.int32), np.zeros(1, np.int32), 0.1, R)
res = {}
with paths.using(amx=False):
    for rnd in range(4):
        for kind, ks in caches.items():
            best = 1e9
            for _ in range(3):
                t0 = time.perf_counter()
                for k in ks:
                    mla.flash_mla(q, k, kind, *args)
                best = min(best, time.perf_counter() - t0)
            res.setdefault(kind, []).append(round(best * 1e3, 2))
print(n, {k: min(v) for k, v in res.items()}, "GFMA/s:", {k: round(L * n * H * (R + C + C) / min(v) / 1e6, 1) for k, v in res.items()})
