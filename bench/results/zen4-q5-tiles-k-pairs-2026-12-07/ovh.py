"""ovh.py FILE: Gemma decode with dense_layer_decode replaced by a do-nothing njit of the same arguments
(the per-layer Python + dispatch cost), vs real."""
import sys, time, numpy as np
from numba import njit
from pyrt.bench.engines import PyrtEngine
from pyrt.ops import dense
real = dense.fd.dense_layer_decode
@njit(nogil=True)
def noop(*a):
    return None
class FD:
    def __getattr__(self, n): return getattr(fdo, n)
fdo = dense.fd
e = PyrtEngine(sys.argv[1], n_ctx=512, n_ubatch=512, n_threads=2)
rng = np.random.default_rng(1); N = 64
toks = rng.integers(0, e.n_vocab, N).tolist()
def run():
    e.seq_rm(0)
    t0 = time.perf_counter()
    for j, t in enumerate(toks):
        e.decode([t], j, logits_last=True)
    return (time.perf_counter() - t0) / N * 1e3
from pyrt.models import gemma3
acc = [0.0]
dl = gemma3.decode_layers
def tl(*a):
    t0 = time.perf_counter(); dl(*a); acc[0] += time.perf_counter() - t0
gemma3.decode_layers = tl
run()
for mode in ("real", "noop", "real", "noop"):
    f = FD(); f.dense_layer_decode = real if mode == "real" else noop
    dense.fd = f
    acc[0] = 0.0
    tot = run()
    print(mode, f"token {tot:.2f} ms, decode_layers {acc[0]/N*1e3:.3f} ms")
