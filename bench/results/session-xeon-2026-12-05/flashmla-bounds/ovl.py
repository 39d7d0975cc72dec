"""FlashMLA over 27 DRAM caches, each followed by a 2-thread read of W MB of 'weights': plain vs the weights
prefetched by the attention items (a copy with patch_xpf.py: ./mk.sh kxpf patch_xpf.py). ovl.py N W_MB rounds"""
import sys, time, os, importlib, mmap
sys.path.insert(0, os.environ.get("KV", "/tmp/kv"))
import numpy as np, numba
from numba import njit, prange
from pyrt.ops import mla
numba.set_num_threads(2)
N = int(sys.argv[1]); WMB = float(sys.argv[2]); rounds = int(sys.argv[3])
mod = importlib.import_module("kxpf.attention_mla")
H, R, C, L = 16, 64, 512, 27
rng = np.random.default_rng(0)
def hp_array(nb):
    mm = mmap.mmap(-1, nb + (2 << 20), flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    mm.madvise(mmap.MADV_HUGEPAGE)
    w = np.frombuffer(mm, np.uint8); st = -w.ctypes.data % (2 << 20)
    return w[st:st + nb]
caches = []
for _ in range(L):
    k = hp_array((N + 16) * (R + C) * 2).view(np.uint16).reshape(N + 16, R + C)
    k[:] = rng.standard_normal((N + 16, R + C)).astype(np.float16).view(np.uint16)
    caches.append(k)
wn = int(WMB * 1e6) // 4096 * 4096
ws = [hp_array(wn).view(np.int64) for _ in range(L)]
for w in ws: w[:] = 1
@njit(parallel=True, fastmath=True)
def rd(w):
    n = w.shape[0]; s = 0
    for t in prange(2):
        a = 0
        for i in range(t * n // 2, (t + 1) * n // 2):
            a += w[i]
        s += a
    return s
cp = np.arange(N + 16, dtype=np.int32); cs = np.ones(N + 16, np.uint64)
kv_idx = np.arange(N + 1, dtype=np.int32)
q = rng.standard_normal((1, H, R + C)).astype(np.float32)
qpos, qseq = np.array([N], np.int32), np.zeros(1, np.int32)
cfg = mla.amx_config()
dst = np.empty((1, H, C), np.float32)
f = mod.flash_attn_mla
def run(mode):
    ta = tw = 0.0
    for k, w in zip(caches, ws):
        t0 = time.perf_counter()
        if mode == "flash+pf":
            f(dst, q, k, 1, R, cp, cs, kv_idx, qpos, qseq, np.float32(0.1), 1, 32, 16, cfg, np.int64(w.ctypes.data), np.int64(w.nbytes))
        elif mode in ("flash", "flash+read"):
            f(dst, q, k, 1, R, cp, cs, kv_idx, qpos, qseq, np.float32(0.1), 1, 32, 16, cfg, np.int64(0), np.int64(0))
        t1 = time.perf_counter()
        if mode != "flash":
            rd(w)
        t2 = time.perf_counter()
        ta += t1 - t0; tw += t2 - t1
    return ta * 1e3, tw * 1e3
modes = ["flash", "flash+read", "flash+pf", "read"]
for m in modes: run(m)
res = {m: [] for m in modes}
for r in range(rounds):
    for m in modes:
        res[m].append(run(m))
for m in modes:
    v = sorted(res[m], key=sum)[len(res[m]) // 2]
    print(f"{m:11s} attn {v[0]:6.2f} ms  read {v[1]:6.2f} ms  total {sum(v):6.2f} ms  (read {L*wn/1e6/max(v[1],1e-9):.1f} GB/s)")
