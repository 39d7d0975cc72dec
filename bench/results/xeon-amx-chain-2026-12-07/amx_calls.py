"""Where one 512-token ubatch's AMX matmul time goes: calls and ms per (kind code, rows, row bytes, token bucket).

    python amx_calls.py MODEL.gguf
"""
import sys, time, collections, numpy as np
import pyrt
from pyrt._kernels import amx_matmul
from pyrt.runtime.context import Batch
orig = amx_matmul.matmul_q_amx
stats = collections.defaultdict(lambda: [0, 0.0])
class W:
    def __call__(self, dst, w, xq, kind, cfg):
        t = time.perf_counter(); orig(dst, w, xq, kind, cfg); dt = time.perf_counter() - t
        n = dst.shape[0]; b = "<32" if n < 32 else "<64" if n < 64 else "<96" if n < 96 else ">=96"
        k = (int(kind), dst.shape[1], w.shape[1], b); stats[k][0] += 1; stats[k][1] += dt
amx_matmul.matmul_q_amx = W()
llm = pyrt.load(sys.argv[1], n_ctx=1024, n_threads=2, mla=3, progress=False)
rng = np.random.default_rng(0)
ids = [int(x) for x in rng.integers(100, 10000, 512)]
def one():
    llm.reset(); t = time.perf_counter(); llm.ctx.decode(Batch.from_tokens(ids, pos0=0, logits="last")); return time.perf_counter() - t
one(); stats.clear(); dt = one()
print("total", dt)
for k, (n, s) in sorted(stats.items(), key=lambda kv: -kv[1][1]):
    print(k, n, f"{s*1e3:.0f} ms")
