"""TG at DEPTH, the fused attention and MoE blocks from kernel copies alternating (prefetch distance/locality).
pfab.py FILE DEPTH ROUNDS NAME..."""
import sys, time, os, importlib
sys.path.insert(0, os.environ.get("KV", "/tmp/kvpf"))
import numpy as np
from pyrt.bench.engines import PyrtEngine
from pyrt.bench.sweep import _decode_chunked
from pyrt.ops import mla as om, moe as omoe
path, depth, rounds, names = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4:]
mods = {n: (importlib.import_module(n + ".fused_mla"), importlib.import_module(n + ".fused_moe")) for n in names}
e = PyrtEngine(path, n_ctx=depth + 512, n_ubatch=512, n_threads=2, mla=3)
rng = np.random.default_rng(1)
if depth:
    _decode_chunked(e, rng.integers(0, e.n_vocab, depth).tolist(), 0)
toks = rng.integers(0, e.n_vocab, 16).tolist()
T = {"attn": 0.0, "moe": 0.0}
class Wrap:
    def __init__(self, f, key): self.f = f; self.key = key
    def __call__(self, *a):
        t0 = time.perf_counter(); self.f(*a); T[self.key] += time.perf_counter() - t0
res = {n: [] for n in names}
for r in range(rounds):
    for n in (names if r % 2 == 0 else names[::-1]):
        om.fk, omoe.fm = mods[n]
        e.seq_rm(depth); e.decode([toks[0]], depth); e.seq_rm(depth)
        t0 = time.perf_counter()
        for j, t in enumerate(toks):
            e.decode([t], depth + j)
        res[n].append(16 / (time.perf_counter() - t0))
    print(r, {n: round(v[-1], 2) for n, v in res.items()}, flush=True)
for n in names:
    v = sorted(res[n]); print(f"{n}: median {v[len(v)//2]:.2f} t/s, all {[round(x, 2) for x in res[n]]}")
