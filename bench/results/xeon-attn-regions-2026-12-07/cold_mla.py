"""Cold W_UK and W_UV (mla_pieces.py) over the 26 MoE layers' weights after a 1 GiB read: us per layer, and hot."""
import os, sys, time
import numpy as np
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import pyrt, mla_pieces as mp
llm = pyrt.load(sys.argv[1], n_ctx=256, n_threads=2, mla=3, progress=False)
Ds = [L.attn.block.decode for L in llm.model.layers[1:]]
d = Ds[0]; H = d.n_head
attn = np.empty((H, d.dv), np.float32)
ol = np.random.default_rng(0).standard_normal((H, d.C)).astype(np.float32)
qn = np.random.default_rng(1).standard_normal((H, d.dn)).astype(np.float32)
ql = np.empty((H, d.C), np.float32)
flush = np.ones(1 << 28, np.float32)  # 1 GiB
def cold(name, f):
    ts = []
    for rep in range(4):
        flush.sum()
        t = time.perf_counter()
        for D in Ds: f(D)
        ts.append((time.perf_counter() - t) / len(Ds) * 1e6)
    hot = []
    for rep in range(3):
        t = time.perf_counter()
        for D in Ds[:2]:
            for _ in range(20): f(D)
        hot.append((time.perf_counter() - t) / 40 * 1e6)
    print(f"{name}: cold {min(ts[1:]):.1f}-{max(ts[1:]):.1f} us/layer, hot {min(hot):.1f}", flush=True)
cold("wuk", lambda D: mp.wuk(ql, qn, D.k_b, D.kb_kind))
cold("wuv", lambda D: mp.wuv(attn, ol, D.v_b, D.v_row0, D.vb_kind))
from pyrt._kernels.rows import q8_k_rows
ok, nbok = q8_k_rows(ol, True)
cold("wuv_rows", lambda D: mp.wuv_rows(attn, ok, nbok, D.v_b, D.v_row0, D.vb_kind))
cold("wuv_pf0", lambda D: mp.wuv_pf(attn, ok, nbok, D.v_b, D.v_row0, D.vb_kind, False))
cold("wuv_pf1", lambda D: mp.wuv_pf(attn, ok, nbok, D.v_b, D.v_row0, D.vb_kind, True))
