"""Time one decode item (mla_item_amx16) on an L2/L3-resident f16 cache for several item lengths, 1 thread."""
import sys, time
import numpy as np
from numba import njit
from pyrt.ops import mla
from pyrt._kernels.attention_mla_amx16 import mla_item_amx16, pack_q16, query_scale
from pyrt._kernels.simd import zeros_lined, empty_lined
from pyrt._kernels.kv import KIND_F16
from pyrt._kernels.softmax import work_item, finish_item, split_partials
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
def loop(n_it, ncell, qp, k, cp, cs, kv_idx, qpos, qseq, cfgp, full):
    dst = np.empty((1, H, C), np.float32)
    n_split = N // ncell
    split_len, pm, pl, pacc = split_partials(N, n_split, 32, 1, H, C)
    tot = 0
    for it in range(n_it):
        sp = it % n_split
        if full:
            _, sp, t0, t1, c0, c1, acc, m, l = work_item(sp, n_split, 1, 1, 1, split_len, N, C, H)
        else:
            acc = np.empty((H, C), np.float32); m = np.empty(H, np.float32); l = np.empty(H, np.float32)
            c0 = sp * ncell; c1 = c0 + ncell; t0 = 0; t1 = 1
        tot += mla_item_amx16(acc, m, l, qp, H, k, 1, R, cp, cs, kv_idx, qpos, qseq, np.float32(0.1), 0, 1, c0, c1, 0, cfgp)
        if full:
            finish_item(dst, pm, pl, pacc, acc, m, l, t0, 0, H, sp, n_split)
    return tot

for ncell in (32, 64, 128, 256, 512, 1024, 2048):
    for full in (0, 1):
        n_it = max(16, 65536 // ncell)
        loop(2, ncell, qp, k, cp, cs, kv_idx, qpos, qseq, cfgp, full)
        best = 1e9
        for r in range(5):
            t0 = time.perf_counter(); loop(n_it, ncell, qp, k, cp, cs, kv_idx, qpos, qseq, cfgp, full); best = min(best, (time.perf_counter() - t0) / n_it)
        print(f"cells {ncell:5d} full {full}: {best*1e6:8.2f} us/item  {best*1e6/(ncell/32):6.2f} us/tile")
