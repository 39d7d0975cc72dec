"""gsplit.py FILE: one-token decode split into decode_layers, _logits and the rest (perf_counter around each)."""
import sys, time, numpy as np
from pyrt.bench.engines import PyrtEngine
from pyrt.models import gemma3
acc = {"layers": 0.0, "logits": 0.0}
dl = gemma3.decode_layers
def tl(*a):
    t0 = time.perf_counter(); dl(*a); acc["layers"] += time.perf_counter() - t0
gemma3.decode_layers = tl
cls = [c for c in vars(gemma3).values() if isinstance(c, type) and hasattr(c, "_logits")][0]
orig = cls._logits
def tlog(self, x):
    t0 = time.perf_counter(); r = orig(self, x); acc["logits"] += time.perf_counter() - t0; return r
cls._logits = tlog
e = PyrtEngine(sys.argv[1], n_ctx=512, n_ubatch=512, n_threads=2)
rng = np.random.default_rng(1); N = 64
toks = rng.integers(0, e.n_vocab, N).tolist()
e.decode([toks[0]], 0); e.seq_rm(0)
for rep in range(4):
    e.seq_rm(0); acc["layers"] = acc["logits"] = 0.0
    t0 = time.perf_counter()
    for j, t in enumerate(toks):
        e.decode([t], j, logits_last=True)
    tot = (time.perf_counter() - t0) / N * 1e3
    print(f"total {tot:.2f} ms  layers {acc['layers']/N*1e3:.2f}  logits {acc['logits']/N*1e3:.2f}  rest {tot - (acc['layers']+acc['logits'])/N*1e3:.2f}")
