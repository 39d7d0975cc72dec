"""rprof.py FILE: dense decode layer regions hot (one layer repeated) vs cold (18 layers in turn), from captured args."""
import sys, time, numpy as np
from pyrt.bench.engines import PyrtEngine
from pyrt._kernels import fused_dense as fd
from pyrt._kernels.attention import flash_attn
from pyrt._kernels.fused_mla import _matvec_q
cap = []
real = fd.dense_layer_decode
def grab(*a):
    cap.append(a); real(*a)
e = PyrtEngine(sys.argv[1], n_ctx=512, n_ubatch=512, n_threads=2)
rng = np.random.default_rng(1)
toks = rng.integers(0, e.n_vocab, 64).tolist()
for j, t in enumerate(toks[:63]):
    e.decode([t], j, logits_last=True)
fd.dense_layer_decode = grab
e.decode([toks[63]], 63, logits_last=True)
fd.dense_layer_decode = real
L = len(cap); print(L, "layers captured; kinds", cap[0][18])
def parts(a):
    (x, attn_norm, wq, wk, wv, bq, bk, bv, q_norm, k_norm, wo, post_attn_norm, ffn_norm, wg, wu, wd,
     post_ffn_norm, gelu_table, kinds, eps, cos, sin, neox, kc, vc, kind_k, kind_v, seg_k, seg_v,
     cell, cell_pos, cell_seq, kv_idx, q_pos, q_seq, scale, n_swa, n_head, n_head_kv, q_tile, kv_tile, n_split) = a
    h = np.random.default_rng(0).standard_normal(x.shape[0]).astype(np.float32)
    q = np.empty(wq.shape[0], np.float32); k = np.empty(wk.shape[0], np.float32); v = np.empty(wv.shape[0], np.float32)
    dv = wv.shape[0] // n_head_kv; dk = wk.shape[0] // n_head_kv
    attn = np.empty((1, n_head, dv), np.float32); y = np.empty(x.shape[0], np.float32)
    qq = np.random.default_rng(1).standard_normal((1, n_head, dk)).astype(np.float32)
    return {
        "qkv": (lambda: fd._rows3(q, k, v, wq, wk, wv, kinds, h), wq.nbytes + wk.nbytes + wv.nbytes),
        "attn": (lambda: flash_attn(attn, qq, kc, vc, kind_k, kind_v, seg_k, seg_v, 0, n_head_kv, cell_pos, cell_seq,
               kv_idx, q_pos, q_seq, scale, n_swa, np.float32(0.0), q_tile, kv_tile, n_split), 0),
        "wo": (lambda: _matvec_q(y, wo, kinds[3], attn.reshape(-1)), wo.nbytes),
        "ffn": (lambda: fd._ffn_rows(y, h, wg, wu, wd, kinds[4], kinds[5], gelu_table), wg.nbytes + wu.nbytes + wd.nbytes),
    }
P = [parts(a) for a in cap]
for name in P[0]:
    for f, _ in (p[name] for p in P): f()
    for rep in range(3):
        t0 = time.perf_counter()
        for _ in range(10):
            for p in P: p[name][0]()
        cold = (time.perf_counter() - t0) / (10 * L) * 1e6
        t0 = time.perf_counter()
        for _ in range(10 * L): P[0][name][0]()
        hot = (time.perf_counter() - t0) / (10 * L) * 1e6
        nb = P[0][name][1]
        print(f"{name:5s} {nb/1e3:7.0f} KB  cold {cold:6.1f} us ({nb/cold/1e3 if nb else 0:5.1f} GB/s)  hot {hot:6.1f} us ({nb/hot/1e3 if nb else 0:5.1f} GB/s)")
a = cap[0]
(x, attn_norm, wq, wk, wv, bq, bk, bv, q_norm, k_norm, wo, post_attn_norm, ffn_norm, wg, wu, wd,
 post_ffn_norm, gelu_table, kinds, *rest) = a
h = np.ones(x.shape[0], np.float32)
q = np.empty(16, np.float32); k = np.empty(16, np.float32); v = np.empty(16, np.float32)
for name, f in (("rows3 16 rows each", lambda: fd._rows3(q, k, v, wq[:16], wk[:16], wv[:16], kinds, h)),
                ("rows3 0 rows", lambda: fd._rows3(q[:0], k[:0], v[:0], wq[:0], wk[:0], wv[:0], kinds, h)),
                ("rows3 full", lambda: fd._rows3(np.empty(wq.shape[0], np.float32), np.empty(wk.shape[0], np.float32), np.empty(wv.shape[0], np.float32), wq, wk, wv, kinds, h))):
    f()
    for rep in range(2):
        t0 = time.perf_counter()
        for _ in range(2000): f()
        print(name, f"{(time.perf_counter() - t0) / 2000 * 1e6:.2f} us")
