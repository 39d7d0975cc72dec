"""dprof.py FILE NKV: decode ms/token at depth NKV (16 tokens, 3 runs) and a cProfile of 16 decodes."""
import sys, time, cProfile, pstats
import numpy as np
from pyrt.bench.engines import PyrtEngine
path, nkv = sys.argv[1], int(sys.argv[2])
e = PyrtEngine(path, n_ctx=nkv + 512, n_ubatch=512, n_threads=2, mla=3)
rng = np.random.default_rng(1)
for s in range(0, nkv, 512):
    e.decode(rng.integers(0, e.n_vocab, min(512, nkv - s)).tolist(), s, logits_last=True)
toks = rng.integers(0, e.n_vocab, 16).tolist()
def run():
    e.seq_rm(nkv)
    t0 = time.perf_counter()
    for j, t in enumerate(toks):
        e.decode([t], nkv + j, logits_last=True)
    return (time.perf_counter() - t0) / len(toks)
print("ms/token", [round(run() * 1e3, 2) for _ in range(3)])
pr = cProfile.Profile(); pr.enable(); run(); pr.disable()
pstats.Stats(pr).sort_stats("tottime").print_stats(22)
