"""Per-block decode time: the fused attention and MoE block calls timed by wrapping them (GB/s from the
Q4_K_M mix's bytes at depth 0). blocks.py FILE NTOK [DEPTH]"""
import sys, time
import numpy as np
from pyrt.bench.engines import PyrtEngine
from pyrt.bench.sweep import decode_chunked
from pyrt.ops import mla as om, moe as omoe
path, ntok = sys.argv[1], int(sys.argv[2]); depth = int(sys.argv[3]) if len(sys.argv) > 3 else 0
e = PyrtEngine(path, n_ctx=depth + 512, n_ubatch=512, n_threads=2, mla=3)
T = {"attn": 0.0, "moe": 0.0}
class Wrap:
    def __init__(self, mod, name, key):
        self.f = getattr(mod, name); self.key = key; setattr(mod, name, self)
    def __call__(self, *a):
        t0 = time.perf_counter(); self.f(*a); T[self.key] += time.perf_counter() - t0
Wrap(om.fk, "mla_block_decode", "attn"); Wrap(omoe.fm, "moe_block_decode", "moe")
rng = np.random.default_rng(1)
if depth:
    decode_chunked(e, rng.integers(0, e.n_vocab, depth).tolist(), 0)
toks = rng.integers(0, e.n_vocab, ntok).tolist()
for rnd in range(3):
    e.seq_rm(depth); e.decode([toks[0]], depth); e.seq_rm(depth)
    for k in T: T[k] = 0.0
    t0 = time.perf_counter()
    for j, t in enumerate(toks):
        e.decode([t], depth + j)
    tot = (time.perf_counter() - t0) / ntok * 1e3
    a, m = T["attn"] / ntok * 1e3, T["moe"] / ntok * 1e3
    print(f"depth {depth}: {1e3/tot:.2f} t/s, {tot:.1f} ms/token: attn blocks {a:.2f} ms ({212.8/a:.1f} GB/s at depth 0), "
          f"moe blocks {m:.2f} ms ({1177.7/m:.1f} GB/s), rest {tot-a-m:.2f} ms ({(1612-212.8-1177.7)/(tot-a-m):.1f} GB/s)", flush=True)
