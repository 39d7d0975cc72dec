"""gprof.py FILE [THREADS]: one-token decode time (4 runs of 64 tokens), then a cProfile of 64 decodes (top functions
by tottime)."""
import sys, time, cProfile, pstats
import numpy as np
from pyrt.bench.engines import PyrtEngine
path = sys.argv[1]
e = PyrtEngine(path, n_ctx=512, n_ubatch=512, n_threads=int(sys.argv[2]) if len(sys.argv) > 2 else 2)
rng = np.random.default_rng(1); N = 64
toks = rng.integers(0, e.n_vocab, N).tolist()
e.decode([toks[0]], 0); e.seq_rm(0)
def run():
    e.seq_rm(0)
    t0 = time.perf_counter()
    for j, t in enumerate(toks):
        e.decode([t], j, logits_last=True)
    return (time.perf_counter() - t0) / N
print("ms/token", [round(run()*1e3, 2) for _ in range(4)])
pr = cProfile.Profile(); pr.enable(); run(); pr.disable()
pstats.Stats(pr).sort_stats("tottime").print_stats(18)
