"""pyovh3.py FILE [prof]: per-token Python cost of a one-token decode (layers and output head replaced by no-ops)."""
import sys, time, cProfile, pstats, numpy as np
from pyrt.bench.engines import PyrtEngine
from pyrt._kernels import fused_dense as fd
e = PyrtEngine(sys.argv[1], n_ctx=1024, n_ubatch=512, n_threads=2)
toks = list(range(100, 400))
def run(n):
    e.seq_rm(0)
    t0 = time.perf_counter()
    for j, t in enumerate(toks[:n]):
        e.decode([t], j, logits_last=True)
    return (time.perf_counter() - t0) / n * 1e3
run(8)
model = e.ctx.model
real_out = model.output
logits = np.zeros((1, model.hp.n_vocab), np.float32)
class FakeOut:
    def __call__(self, x, out=None): return logits
real = fd.dense_layer_decode
fd.dense_layer_decode = lambda *a: None
model.output = FakeOut()
try:
    for _ in range(3):
        print(f"python only: {run(250):.3f} ms/token")
    if len(sys.argv) > 2:
        pr = cProfile.Profile(); pr.enable(); run(250); pr.disable()
        pstats.Stats(pr).sort_stats(sys.argv[2]).print_stats(45)
finally:
    model.output = real_out; fd.dense_layer_decode = real
