"""A DeepSeek2 attention block's parts cold, in a real decode's layer loop (32 tokens from N_KV 3, ROUNDS rounds):

    MODE=block  python attn_cold.py MODEL.gguf   the fused block (mla_block_decode), as the model runs it
    MODE=parts  ...                              q rows, kv_a rows, mla_decode, attn_output as separate calls
    MODE=pieces ...                              parts, then W_UK and W_UV again (hot) after mla_decode
    MODE=cold2  ...                              parts, with W_UK and W_UV cold before mla_decode

(parts/pieces/cold2 time the regions only; their tokens' values are not the model's.) ms per token per part.
"""
import collections, os, sys, time
import numpy as np
import pyrt
from pyrt.models.deepseek2 import MoEFFN
from pyrt.models import deepseek2 as ds
from pyrt.ops import basic
from pyrt.runtime.context import Batch
from pyrt._kernels import fused_mla as fk
from pyrt.ops.mla import amx_config
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import mla_pieces as mp

st = collections.defaultdict(float)
MODE = os.environ.get("MODE", "parts")


def _pieces(d, q_nope, attn, t0):
    """W_UK then W_UV as separate regions, timed into st; returns the end time."""
    pc = time.perf_counter
    H = d.n_head
    mp.wuk(np.empty((H, d.C), np.float32), q_nope, d.k_b, d.kb_kind)
    t1 = pc(); st["wuk"] += t1 - t0
    mp.wuv(attn, np.ones((H, d.C), np.float32), d.v_b, d.v_row0, d.vb_kind)
    t2 = pc(); st["wuv"] += t2 - t1
    return t2


def _layers(self, inp, x, rope, one, mode):
    if not one:
        return ORIG(self, inp, x, rope, one, mode)
    eps = self.hp.f_norm_rms_eps
    slot = None
    pc = time.perf_counter
    for il, L in enumerate(self.layers):
        A, F = L.attn, L.ffn
        krows, type_k, cell_pos, cell_seq, kv_idx = inp.kv.mla_view(il)
        if slot is None:
            slot = A.block.slot(krows, type_k, cell_pos, cell_seq, kv_idx, inp.pos, inp.seq, inp.kv.mla_cells(il),
                                self.kq_scale)
        B = A.block
        d = B.decode
        t1 = pc()
        if MODE == "block":
            B(x[0], rope.cos[0], rope.sin[0], krows, slot)
            st["attn"] += pc() - t1
        else:
            h = x[0] * 0.01
            qa = np.empty(B.wq.shape[0], np.float32)
            fk._matvec_q(qa, B.wq, B.q_kind, h)
            t2 = pc(); st["q"] += t2 - t1
            kva = np.empty(B.wkv.shape[0], np.float32)
            fk._matvec_q(kva, B.wkv, B.kv_kind, h)
            t3 = pc(); st["kv_a"] += t3 - t2
            H = d.n_head
            q = qa.reshape(H, -1)
            q_nope = np.ascontiguousarray(q[:, :d.dn]); q_pe = np.ascontiguousarray(q[:, d.dn:])
            attn = np.empty((H, d.dv), np.float32)
            kc = slot.k.view(krows, "x")
            t3 = pc()
            if MODE == "cold2":
                t3 = _pieces(d, q_nope, attn, t3)
            fk.mla_decode(attn, q_nope, q_pe, d.k_b, d.kb_kind, d.v_b, d.v_row0, d.vb_kind, kc, slot.k.kind,
                          slot.cell_pos, slot.cell_seq, slot.kv_idx, slot.q_pos, slot.q_seq, slot.scale,
                          slot.kv_tile, slot.n_split, amx_config())
            t4 = pc(); st["mla"] += t4 - t3
            if MODE == "pieces":
                t4 = _pieces(d, q_nope, attn, t4)
            y = np.empty(B.n_embd, np.float32)
            fk._matvec_q(y, B.wo, B.wo_kind, attn.reshape(-1))
            t5 = pc(); st["wo"] += t5 - t4
        t2 = pc()
        if isinstance(F, MoEFFN):
            F.decode.block(x[0], F.norm, eps)
            st["moe"] += pc() - t2
            continue
        h = basic.rms_norm(x, F.norm, eps)
        g, u = ds.linear_multi(h, F.gate, F.up)
        x += F.down(basic.swiglu(g, u))
        st["dense"] += pc() - t2
    t5 = pc()
    basic.rms_norm(x, self.output_norm, eps, out=x)
    r = self.output(x)
    st["output"] += pc() - t5
    return r

llm = pyrt.load(sys.argv[1], n_ctx=1024, n_threads=int(os.environ.get("NT", "2")), mla=3, progress=False)
ORIG = type(llm.model)._layers
type(llm.model)._layers = _layers
ids = [1, 100, 200]
for rnd in range(int(os.environ.get("ROUNDS", "3"))):
    llm.reset()
    llm.ctx.decode(Batch.from_tokens(ids, pos0=0, logits="last"))
    st.clear()
    n = 32
    t0 = time.perf_counter()
    for i in range(n):
        llm.ctx.decode(Batch.from_tokens([300 + i], pos0=3 + i, logits="last"))
    dt = time.perf_counter() - t0
    print(MODE, f"token {dt / n * 1e3:.2f} ms: " + " ".join(f"{k} {v / n * 1e3:.2f}" for k, v in st.items()), flush=True)
