"""Per-tile times inside mla_item_amx16 items of NCELL cells, one thread, over a cache of NTOT cells (NTOT 2048: L3;
65536: 75 MB, partly L3 on this CPU). KM: a copy of pyrt/_kernels with patch_tprof.py (default ktprof).
titem.py NCELL NTOT"""
import sys, time, os
sys.path.insert(0, os.environ.get("KV", "/tmp/kv"))
import importlib
KM = os.environ.get("KM", "ktprof")
import numpy as np
from numba import njit
from pyrt.ops import mla
_a = importlib.import_module(KM + '.attention_mla_amx16'); mla_item_amx16, pack_q16, query_scale = _a.mla_item_amx16, _a.pack_q16, _a.query_scale
zeros_lined = importlib.import_module(KM + '.simd').zeros_lined
H, R, C = 16, 64, 512
ncell, N = int(sys.argv[1]), int(sys.argv[2])
rng = np.random.default_rng(0)
k = zeros_lined((N + 64) * (R + C), np.uint16).reshape(N + 64, R + C)
k[:] = (rng.standard_normal((N + 64, R + C)).astype(np.float16)).view(np.uint16)
cp = np.arange(N + 64, dtype=np.int32); cs = np.ones(N + 64, np.uint64)
kv_idx = np.arange(N + 64, dtype=np.int32)
q = rng.standard_normal((1, H, R + C)).astype(np.float32)
qpos, qseq = np.array([N + 64], np.int32), np.zeros(1, np.int32)
cfg = mla.amx_config(); cfgp = np.int64(cfg.ctypes.data)
s16 = query_scale(q); qp = pack_q16(q, s16)
prof = np.zeros(66, np.int64)
@njit(nogil=True)
def loop(n_it, ncell, qp, k, cp, cs, kv_idx, qpos, qseq, cfgp, prof):
    acc = np.empty((H, C), np.float32); m = np.empty(H, np.float32); l = np.empty(H, np.float32)
    tot = 0
    for it in range(n_it):
        c0 = (it * ncell) % N
        tot += mla_item_amx16(acc, m, l, qp, H, k, 1, R, cp, cs, kv_idx, qpos, qseq, np.float32(0.1), 0, 1, c0, c0 + ncell, 0, cfgp, prof)
    return tot
loop(2, ncell, qp, k, cp, cs, kv_idx, qpos, qseq, cfgp, prof)
prof[:] = 0
loop(max(64, 4 * N // ncell), ncell, qp, k, cp, cs, kv_idx, qpos, qseq, cfgp, prof)
n = prof[65]; nt = ncell // 32
st = prof[1:nt + 1] / n / 2600
print(f"item {prof[0]/n/2600:.2f} us; tile starts:", np.round(st, 2).tolist())
print("per-tile:", np.round(np.diff(np.append(st, prof[0] / n / 2600)), 2).tolist())
