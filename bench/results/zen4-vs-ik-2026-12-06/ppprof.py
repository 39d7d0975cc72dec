"""ppprof.py FILE NKV [MLA]: cProfile of one 512-token ubatch at depth NKV (top functions by tottime); MLA: -mla for
deepseek2 files (3)."""
import sys, time, cProfile, pstats
import numpy as np
from pyrt.bench.engines import PyrtEngine
path, nkv = sys.argv[1], int(sys.argv[2])
e = PyrtEngine(path, n_ctx=nkv + 1024, n_ubatch=512, n_threads=2, **({"mla": int(sys.argv[3])} if len(sys.argv) > 3 else {}))
rng = np.random.default_rng(1)
def fill(n):
    for s in range(0, n, 512):
        e.decode(rng.integers(0, e.n_vocab, 512).tolist(), s, logits_last=True)
fill(nkv)
toks = rng.integers(0, e.n_vocab, 512).tolist()
e.decode(toks, nkv, logits_last=True); e.seq_rm(nkv)
pr = cProfile.Profile(); pr.enable()
t0 = time.perf_counter(); e.decode(toks, nkv, logits_last=True); dt = time.perf_counter() - t0
pr.disable()
print(f"ubatch at {nkv}: {dt*1e3:.0f} ms = {512/dt:.1f} t/s")
pstats.Stats(pr).sort_stats("tottime").print_stats(16)
