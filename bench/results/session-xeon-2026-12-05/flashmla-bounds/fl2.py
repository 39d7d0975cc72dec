"""Kernel-only FlashMLA decode, variants (copies of pyrt/_kernels under /tmp/kv) alternating in one process.
fl2.py N threads rounds n_split VARIANT... (ONE=1: one cache for all 27 layers, L3-resident). The caches are
2 MiB-aligned anonymous memory with MADV_HUGEPAGE, as numpy gives the KV cache."""
import sys, time, os, importlib, mmap
sys.path.insert(0, os.environ.get("KV", "/tmp/kv"))
import numpy as np, numba
from pyrt.ops import mla
numba.set_num_threads(int(sys.argv[2]))
N = int(sys.argv[1]); rounds = int(sys.argv[3]); ns = int(sys.argv[4]); names = sys.argv[5:]
mods = {n: importlib.import_module(n + ".attention_mla") for n in names}
H, R, C, L = 16, 64, 512, 27
rng = np.random.default_rng(0)
def hp_array(nb):
    mm = mmap.mmap(-1, nb + (2 << 20), flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    mm.madvise(mmap.MADV_HUGEPAGE)
    w = np.frombuffer(mm, np.uint8); st = -w.ctypes.data % (2 << 20)
    return w[st:st + nb]
caches = []
for _ in range(1 if os.environ.get('ONE') else L):
    k = hp_array((N + 16) * (R + C) * 2).view(np.uint16).reshape(N + 16, R + C)
    k[:] = rng.standard_normal((N + 16, R + C)).astype(np.float16).view(np.uint16)
    caches.append(k)
caches = caches * (L if os.environ.get('ONE') else 1)
cp = np.arange(N + 16, dtype=np.int32); cs = np.ones(N + 16, np.uint64)
kv_idx = np.arange(N + 1, dtype=np.int32)
q = rng.standard_normal((1, H, R + C)).astype(np.float32)
qpos, qseq = np.array([N], np.int32), np.zeros(1, np.int32)
cfg = mla.amx_config()
if os.environ.get("BF16"): cfg = cfg[:64].copy()  # the AMX-BF16 items
KIND_F16 = 1
out = {n: np.empty((1, H, C), np.float32) for n in names}
def run(n):
    f = mods[n].flash_attn_mla; dst = out[n]
    for k in caches:
        f(dst, q, k, KIND_F16, R, cp, cs, kv_idx, qpos, qseq, np.float32(0.1), 1, 32, ns, cfg)
for n in names: run(n)
ref = out[names[0]].copy()
for n in names: print(n, "max |diff| vs", names[0], float(np.abs(out[n] - ref).max()))
res = {n: [] for n in names}
for r in range(rounds):
    for n in (names if r % 2 == 0 else names[::-1]):
        t0 = time.perf_counter(); run(n); res[n].append((time.perf_counter() - t0) * 1e3)
for n in names:
    v = sorted(res[n]); print(f"{n:10s} min {v[0]:.2f} q1 {v[len(v)//4]:.2f} med {v[len(v)//2]:.2f} ms/27 layers")
