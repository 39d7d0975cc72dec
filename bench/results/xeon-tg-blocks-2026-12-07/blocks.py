"""Where a decoded DeepSeek2 token's time goes, by block, in a real decode (the one-token layer loop re-timed
piece by piece): the attention blocks, the MoE blocks, layer 0's dense FFN, the output rows, and the Python
between them. NT threads (default 2).

    NT=2 python blocks.py MODEL.gguf
"""
import collections
import os
import sys
import time

import pyrt
from pyrt.models.deepseek2 import MoEFFN
from pyrt.models import deepseek2 as ds
from pyrt.ops import basic
from pyrt.runtime.context import Batch

st = collections.defaultdict(float)


def _layers(self, inp, x, rope, one, mode):
    if not one:
        return ORIG(self, inp, x, rope, one, mode)
    eps = self.hp.f_norm_rms_eps
    slot = None
    pc = time.perf_counter
    for il, L in enumerate(self.layers):
        A, F = L.attn, L.ffn
        t0 = pc()
        fused_moe = isinstance(F, MoEFFN) and F.decode is not None and F.gate_inp.bias is None
        krows, type_k, cell_pos, cell_seq, kv_idx = inp.kv.mla_view(il)
        if slot is None:
            slot = A.block.slot(krows, type_k, cell_pos, cell_seq, kv_idx, inp.pos, inp.seq, inp.kv.mla_cells(il),
                                self.kq_scale)
        t1 = pc(); st["python"] += t1 - t0
        A.block(x[0], rope.cos[0], rope.sin[0], krows, slot)
        t2 = pc(); st["attn"] += t2 - t1
        if fused_moe:
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
for rnd in range(3):
    llm.reset()
    llm.ctx.decode(Batch.from_tokens(ids, pos0=0, logits="last"))
    st.clear()
    n = 32
    t0 = time.perf_counter()
    for i in range(n):
        llm.ctx.decode(Batch.from_tokens([300 + i], pos0=3 + i, logits="last"))
    dt = time.perf_counter() - t0
    print(f"token {dt / n * 1e3:.2f} ms: " + " ".join(f"{k} {v / n * 1e3:.2f}" for k, v in st.items())
          + f" context {(dt - sum(st.values())) / n * 1e3:.2f}", flush=True)
