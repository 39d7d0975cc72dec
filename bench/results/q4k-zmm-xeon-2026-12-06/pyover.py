"""Per-token time with the fused attention/MoE kernels stubbed (Python and the other kernels), then with the
remaining matmuls stubbed too (Python alone). python pyover.py FILE"""
import sys, time
import numpy as np
from pyrt.bench.engines import PyrtEngine
from pyrt.ops import mla as om, moe as omo
from pyrt._kernels import quants_k, matmul_q8_0
path = sys.argv[1]
e = PyrtEngine(path, n_ctx=512, n_ubatch=512, n_threads=2, mla=3)
rng = np.random.default_rng(1); N = 24
toks = rng.integers(0, e.n_vocab, N).tolist()
e.decode([toks[0]], 0); e.seq_rm(0)
def run(tag):
    best = 1e9
    for r in range(3):
        e.seq_rm(0)
        t0 = time.perf_counter()
        for j, t in enumerate(toks):
            e.decode([t], j)
        best = min(best, (time.perf_counter() - t0) / N)
    print(f"{tag}: {best*1e3:.2f} ms/token")
run("full")
class Stub:
    def __init__(self, m): self.m = m
    def __getattr__(self, k): return getattr(self.m, k)
    def mla_block_decode(self, *a): pass
    def moe_block_decode(self, *a): pass
om.fk = Stub(om.fk); omo.fm = Stub(omo.fm)
run("blocks stubbed")
import pyrt.ops.matmul as mm
for name in dir(quants_k):
    if name.startswith("matmul_"):
        setattr(quants_k, name, lambda *a, **k: None)
run("blocks + K matmuls stubbed")
mm._matmul_q = lambda x, raw, t, *a, **k: np.zeros((x.shape[0], raw.shape[0]), np.float32)
run("blocks + _matmul_q stubbed")
