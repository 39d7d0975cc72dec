"""TG at depth with MIN_ITEMS 16 (16 KV splits at 8192 cells) against 4, alternating in one process."""
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
from pyrt.ops import mla
toks = rng.integers(0, e.n_vocab, 16).tolist()
res = {"16": [], "4": []}
for r in range(rounds):
    for name in (("16", "4") if r % 2 == 0 else ("4", "16")):
        mla.MIN_ITEMS = int(name)
        e.seq_rm(depth)
        e.decode([toks[0]], depth)
        e.seq_rm(depth)
        t0 = time.perf_counter()
        for j, t in enumerate(toks):
            e.decode([t], depth + j)
        res[name].append(len(toks) / (time.perf_counter() - t0))
for k, v in res.items():
    print(k, "t/s", " ".join(f"{x:.2f}" for x in v), "median", f"{np.median(v):.2f}")
