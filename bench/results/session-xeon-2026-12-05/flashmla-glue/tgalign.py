"""TG at depth with the KV cache rows on cache lines vs 16 bytes past (copies), alternating in one process."""
import sys, time
import numpy as np
from pyrt.bench.engines import PyrtEngine
from pyrt.bench.sweep import decode_chunked
path, depth, rounds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
e = PyrtEngine(path, n_ctx=depth + 512, n_ubatch=512, n_threads=2, mla=3)
rng = np.random.default_rng(1)
t0 = time.perf_counter()
decode_chunked(e, rng.integers(0, e.n_vocab, depth).tolist(), 0)
print("prefill s", time.perf_counter() - t0, flush=True)
cache = e.ctx.cache
def copy_at(a, off):
    buf = np.zeros(a.nbytes + 128, np.uint8)
    o = (-buf.ctypes.data) % 64 + off
    out = buf[o:o + a.nbytes].view(a.dtype).reshape(a.shape)
    out[...] = a
    return out
lined = [copy_at(k, 0) for k in cache.k]
off16 = [copy_at(k, 16) for k in cache.k]
toks = rng.integers(0, e.n_vocab, 16).tolist()
res = {"lined": [], "off16": []}
for r in range(rounds):
    for name in (("lined", "off16") if r % 2 == 0 else ("off16", "lined")):
        cache.k[:] = lined if name == "lined" else off16
        e.seq_rm(depth)
        e.decode([toks[0]], depth)
        e.seq_rm(depth)
        t0 = time.perf_counter()
        for j, t in enumerate(toks):
            e.decode([t], depth + j)
        res[name].append(len(toks) / (time.perf_counter() - t0))
for k, v in res.items():
    print(k, "t/s", " ".join(f"{x:.2f}" for x in v), "median", f"{np.median(v):.2f}")
