"""ovh.py FILE: one-token decode of a dense model, ms a token, and how much of it the fused layer kernels take
(each dense_layer_decode call timed)."""
import sys, time, numpy as np
from pyrt.bench.engines import PyrtEngine
from pyrt._kernels import fused_dense as fdk
import pyrt.ops.dense as od
path = sys.argv[1]
e = PyrtEngine(path, n_ctx=512, n_ubatch=512, n_threads=2)
acc = {"layer": 0.0, "n": 0}
orig = od.fd.dense_layer_decode
def timed(*a):
    t0 = time.perf_counter(); orig(*a); acc["layer"] += time.perf_counter() - t0; acc["n"] += 1
class FD: pass
fd2 = FD(); fd2.dense_layer_decode = timed
rng = np.random.default_rng(1); N = 64
toks = rng.integers(0, e.n_vocab, N).tolist()
def run(patch):
    od.fd = fd2 if patch else fdk
    e.seq_rm(0); acc["layer"] = 0.0
    t0 = time.perf_counter()
    for j, t in enumerate(toks):
        e.decode([t], j, logits_last=True)
    return (time.perf_counter() - t0) / N * 1e3, acc["layer"] / N * 1e3
e.decode([toks[0]], 0)
for _ in range(3):
    print("plain ms/token %.2f" % run(False)[0], "| timed: total %.2f layers %.2f" % run(True))
