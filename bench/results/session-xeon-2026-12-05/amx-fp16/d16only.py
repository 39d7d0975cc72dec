import sys, time
import numpy as np
from pyrt.ops import mla
import numba
numba.set_num_threads(int(sys.argv[2]))
N = int(sys.argv[1]); mode = sys.argv[3]
H, R, C, L = 16, 64, 512, 27
rng = np.random.default_rng(0)
import os, sys; sys.path.insert(0, os.path.dirname(__file__)); from al import aligned
caches = [rng.standard_normal((N + 16, R + C)).astype(np.float16) for _ in range(1 if os.environ.get("ONE") else L)] * (L if os.environ.get("ONE") else 1)
cp = np.arange(N + 16, dtype=np.int32); cs = np.ones(N + 16, np.uint64)
kv_idx = np.arange(N + 1, dtype=np.int32)
q = rng.standard_normal((1, H, R + C)).astype(np.float32)
qp, qs = np.array([N], np.int32), np.zeros(1, np.int32)
base = mla.amx_config()[:64].copy()
mla._AMX_CFG[:] = [np.concatenate([base, np.ones(1, np.uint8)]) if mode == "fp16" else base]
if os.environ.get("AL"): caches = [aligned(k) for k in caches]
print("align", caches[0].ctypes.data % 64)
for k in caches: mla.flash_mla(q, k, "f16", cp, cs, kv_idx, qp, qs, 0.1, R)
t0 = time.perf_counter()
for i in range(int(sys.argv[4])):
    for k in caches: mla.flash_mla(q, k, "f16", cp, cs, kv_idx, qp, qs, 0.1, R)
print(mode, (time.perf_counter() - t0) / int(sys.argv[4]) * 1e3, "ms")
