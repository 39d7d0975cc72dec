"""mla_decode at few cells outside the model: each layer's W_UK / W_UV, timed hot (the same layer again) and after a
parallel 600 MB read (which also leaves the code, TLBs and allocator cold: not a model of a token). md1.py FILE NCELLS ROUNDS [mods]"""
import sys, time, os, importlib
sys.path.insert(0, os.environ.get("KV", "/tmp/kv"))
import numpy as np
from pyrt.bench.engines import PyrtEngine
from pyrt.ops import mla as om
path, ncell, rounds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
names = sys.argv[4:] or ["pyrt._kernels"]
mods = {n: importlib.import_module(n + ".fused_mla") for n in names}
e = PyrtEngine(path, n_ctx=512, n_ubatch=512, n_threads=2, mla=3)
ds = [ly.attn.decode for ly in e.llm.model.layers]
rng = np.random.default_rng(0)
H, C, dn, dv = ds[0].n_head, ds[0].C, ds[0].dn, ds[0].dv
k = rng.standard_normal((max(ncell, 1), 64 + C)).astype(np.float16)
cp = np.arange(k.shape[0], dtype=np.int32); cs = np.ones(k.shape[0], np.uint64)
kv = np.arange(ncell, dtype=np.int32)
qn = rng.standard_normal((H, dn)).astype(np.float32); qe = rng.standard_normal((H, 64)).astype(np.float32)
qp = np.array([ncell], np.int32); qs = np.zeros(1, np.int32)
k_, kind, cp_, cs_, kv_, qp_, qs_ = om._flash_args(1, H, 64 + C, k, "f16", cp, cs, kv, qp, qs, 0.1, 64)
_, kv_tile, n_split = om.choose_tiles(1, H, kv_.shape[0])
cfg = om.amx_config()
big = np.ones(600 << 20 >> 3, np.float64)
from numba import njit, prange
@njit(parallel=True)
def flush(b):
    t = 0.0
    for i in prange(b.shape[0] // 8):
        t += b[i * 8]
    return t
flush(big)
out = np.empty((H, dv), np.float32)
res = {(n, m): [] for n in names for m in ("dram", "hot")}
def call(f, d):
    f.mla_decode(out, qn, qe, d.k_b, d.kb_kind, d.v_b, d.v_row0, d.vb_kind, k_, kind, cp_, cs_, kv_, qp_, qs_,
                 np.float32(0.1), kv_tile, n_split, cfg)
for n in names:
    call(mods[n], ds[0])
for r in range(rounds):
    for n in (names if r % 2 == 0 else names[::-1]):
        f = mods[n]
        for li in range(1, len(ds), 3):
            d = ds[li]
            flush(big)
            t0 = time.perf_counter(); call(f, d); res[(n, "dram")].append((time.perf_counter() - t0) * 1e6)
            call(f, d)
            t0 = time.perf_counter(); call(f, d); res[(n, "hot")].append((time.perf_counter() - t0) * 1e6)
for key, v in res.items():
    v = sorted(v); print(key, f"median {v[len(v)//2]:.1f} us, q1 {v[len(v)//4]:.1f}")
