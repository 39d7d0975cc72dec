"""gemma_layer.py: Gemma 3 270M decode, each fused dense layer call timed in sequence (weights from DRAM) and repeated
on a copy of x (the layer hot); run from the repository root with PYRT_CACHE holding the default model."""
import time, numpy as np
from pyrt.bench.engines import PyrtEngine
from pyrt.ops import dense
orig = dense.fd.dense_layer_decode
stats = {"cold": [], "hot": []}
mode = {"on": False}
class FD:
    def __getattr__(self, n):
        return getattr(dense.fd_orig, n)
    def dense_layer_decode(self, x, *a):
        if not mode["on"]:
            return orig(x, *a)
        t0 = time.perf_counter(); orig(x, *a); stats["cold"].append(time.perf_counter() - t0)
        best = 1e9
        for _ in range(10):
            xc = x.copy(); t0 = time.perf_counter(); orig(xc, *a); best = min(best, time.perf_counter() - t0)
        stats["hot"].append(best)
dense.fd_orig = dense.fd
dense.fd = FD()
from pyrt.default_model import default_model_path
e = PyrtEngine(str(default_model_path()), n_ctx=512, n_ubatch=512, n_threads=2)
rng = np.random.default_rng(1)
toks = rng.integers(0, e.n_vocab, 40).tolist()
for j, t in enumerate(toks[:32]):
    e.decode([t], j, logits_last=True)
mode["on"] = True
for j, t in enumerate(toks[32:40]):
    e.decode([t], 32 + j, logits_last=True)
c = np.array(stats["cold"]) * 1e6; h = np.array(stats["hot"]) * 1e6
print(f"per layer call: cold median {np.median(c):.0f} us (min {c.min():.0f}), hot median {np.median(h):.0f} us (min {h.min():.0f}); calls {len(c)}")
