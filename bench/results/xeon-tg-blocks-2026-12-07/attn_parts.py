"""One attention block of a decoded DeepSeek2 token (layer 5 of a 16-token context, its arguments captured from a
real decode) timed hot, whole and by part: the q and kv_a rows, attn_output, and mla_decode (W_UK, FlashMLA, W_UV;
with the AMX items and with the f32 items), on 1 and 2 threads.

    python attn_parts.py MODEL.gguf
"""
import sys, time, numpy as np, numba
import pyrt
from pyrt.runtime.context import Batch
from pyrt._kernels import fused_mla as fl
cap = []
orig = fl.mla_block_decode
def rec(*a):
    cap.append([x.copy() if isinstance(x, np.ndarray) and x.size < 10**6 else x for x in a]); return orig(*a)
fl.mla_block_decode = rec
llm = pyrt.load(sys.argv[1], n_ctx=1024, n_threads=2, mla=3, progress=False)
llm.reset(); llm.ctx.decode(Batch.from_tokens([1, 100, 200] * 5, pos0=0, logits="last"))
cap.clear(); llm.ctx.decode(Batch.from_tokens([300], pos0=15, logits="last"))
fl.mla_block_decode = orig
a = cap[5]
(x, attn_norm, eps, wq, q_kind, wkv, kv_kind, wqb, qb_kind, q_a_norm, kv_a_norm, cos, sin, k_b, kb_kind, v_b, v_row0,
 vb_kind, k, kind, cell, cell_pos, cell_seq, kv_idx, q_pos, q_seq, scale, kv_tile, n_split, amx_cfg, wo, wo_kind, dn, dv) = a
print("kinds q kv kb vb wo", q_kind, kv_kind, kb_kind, vb_kind, wo_kind, "k", k.shape, k.dtype, "kind", kind, "n_kv", kv_idx.shape, "amx", amx_cfg.shape, "tile", kv_tile, n_split)
H = v_row0.shape[0]
q_nope = np.random.default_rng(0).standard_normal((H, dn)).astype(np.float32)
q_pe = np.random.default_rng(1).standard_normal((H, cos.shape[0]*2)).astype(np.float32)
out = np.empty((H, dv), np.float32)
def t(f, n=200):
    f(); best = 1e9
    for r in range(5):
        t0 = time.perf_counter()
        for _ in range(n): f()
        best = min(best, (time.perf_counter() - t0) / n)
    return best * 1e6
for nt in (1, 2):
    numba.set_num_threads(nt)
    xx = x.copy()
    blk = t(lambda: orig(xx, *a[1:]))
    y = np.empty(wq.shape[0], np.float32); h = np.random.default_rng(2).standard_normal(x.shape[0]).astype(np.float32)
    q = t(lambda: fl._matvec_q(y, wq, q_kind, h))
    y2 = np.empty(wkv.shape[0], np.float32)
    kv = t(lambda: fl._matvec_q(y2, wkv, kv_kind, h))
    y3 = np.empty(wo.shape[0], np.float32); h3 = np.random.default_rng(3).standard_normal(H * dv).astype(np.float32)
    o = t(lambda: fl._matvec_q(y3, wo, wo_kind, h3))
    md = t(lambda: fl.mla_decode(out, q_nope, q_pe, k_b, kb_kind, v_b, v_row0, vb_kind, k, kind, cell_pos, cell_seq, kv_idx, q_pos, q_seq, scale, kv_tile, n_split, amx_cfg))
    mdn = t(lambda: fl.mla_decode(out, q_nope, q_pe, k_b, kb_kind, v_b, v_row0, vb_kind, k, kind, cell_pos, cell_seq, kv_idx, q_pos, q_seq, scale, kv_tile, n_split, np.empty(0, np.uint8)))
    print(f"threads {nt}: block {blk:.0f} us | q {q:.0f} kv_a {kv:.0f} wo {o:.0f} mla_decode {md:.0f} (f32 items {mdn:.0f}) sum {q+kv+o+md:.0f}")
