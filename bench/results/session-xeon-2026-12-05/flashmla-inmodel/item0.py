"""Whole mla_item_amx16 items of 0, 32, 64 and 2048 cells over an L3-resident cache, one thread (KM: a kernel copy);
and tile_config + tile_release alone."""
import sys, time, os, importlib
import numpy as np
from numba import njit
from pyrt.ops import mla
sys.path.insert(0, os.environ.get("KV", "/tmp/kv"))
KM = os.environ.get("KM", "pyrt._kernels")
_a16 = importlib.import_module(KM + ".attention_mla_amx16")
mla_item_amx16, pack_q16, query_scale = _a16.mla_item_amx16, _a16.pack_q16, _a16.query_scale
_amx = importlib.import_module(KM + ".amx"); tile_config, tile_release = _amx.tile_config, _amx.tile_release
zeros_lined = importlib.import_module(KM + ".simd").zeros_lined
H, R, C = 16, 64, 512
N = 2048
rng = np.random.default_rng(0)
k = zeros_lined((N + 16) * (R + C), np.uint16).reshape(N + 16, R + C)
k[:] = rng.standard_normal((N + 16, R + C)).astype(np.float16).view(np.uint16)
cp = np.arange(N + 16, dtype=np.int32); cs = np.ones(N + 16, np.uint64)
kv_idx = np.arange(N, dtype=np.int32)
q = rng.standard_normal((1, H, R + C)).astype(np.float32)
qpos, qseq = np.array([N], np.int32), np.zeros(1, np.int32)
cfg = mla.amx_config(); cfgp = np.int64(cfg.ctypes.data)
s16 = query_scale(q); qp = pack_q16(q, s16)

@njit(nogil=True)
def loop(n_it, ncell, qp, k, cp, cs, kv_idx, qpos, qseq, cfgp):
    acc = np.empty((H, C), np.float32); m = np.empty(H, np.float32); l = np.empty(H, np.float32)
    tot = 0
    for it in range(n_it):
        c0 = (it * ncell) % N
        tot += mla_item_amx16(acc, m, l, qp, H, k, 1, R, cp, cs, kv_idx, qpos, qseq, np.float32(0.1), 0, 1, c0, c0 + ncell, 0, cfgp)
    return tot

@njit(nogil=True)
def cfgloop(n_it, cfgp):
    for it in range(n_it):
        tile_config(cfgp)
        tile_release()

for ncell in (0, 32, 64, 2048):
    n_it = max(16, 65536 // max(ncell, 32))
    loop(2, ncell, qp, k, cp, cs, kv_idx, qpos, qseq, cfgp)
    best = 1e9
    for r in range(5):
        t0 = time.perf_counter(); loop(n_it, ncell, qp, k, cp, cs, kv_idx, qpos, qseq, cfgp); best = min(best, (time.perf_counter() - t0) / n_it)
    print(f"cells {ncell:5d}: {best*1e6:8.2f} us/item", flush=True)
cfgloop(2, cfgp)
t0 = time.perf_counter(); cfgloop(10000, cfgp); print(f"tile_config+release {(time.perf_counter()-t0)/10000*1e6:.3f} us")
