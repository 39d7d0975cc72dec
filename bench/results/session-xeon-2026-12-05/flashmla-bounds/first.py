"""Per-token TG times right after a 512-token PP (as the sweep runs them) at DEPTH."""
import sys, time
import numpy as np
from pyrt.bench.engines import PyrtEngine
from pyrt.bench.sweep import decode_chunked
path, depth = sys.argv[1], int(sys.argv[2])
e = PyrtEngine(path, n_ctx=depth + 1024, n_ubatch=512, n_threads=2, mla=3)
rng = np.random.default_rng(1)
decode_chunked(e, rng.integers(0, e.n_vocab, depth).tolist(), 0)
for rnd in range(4):
    e.seq_rm(depth)
    decode_chunked(e, rng.integers(0, e.n_vocab, 512).tolist(), depth)   # a PP chunk as the sweep's previous row
    e.seq_rm(depth)
    ts = []
    for j, t in enumerate(rng.integers(0, e.n_vocab, 16).tolist()):
        t0 = time.perf_counter(); e.decode([t], depth + j, logits_last=True); ts.append((time.perf_counter() - t0) * 1e3)
    print("ms per token:", " ".join(f"{x:.0f}" for x in ts), f"| mean {np.mean(ts):.1f}, mean of 2..16 {np.mean(ts[1:]):.1f}", flush=True)
