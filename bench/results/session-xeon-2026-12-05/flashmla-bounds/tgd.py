"""TG at depth 0 and at DEPTH in one process: 16 tokens, R rounds each. tgd.py FILE DEPTH R"""
import sys, time, os
import numpy as np
from pyrt.bench.engines import PyrtEngine
from pyrt.bench.sweep import decode_chunked
path, depth, rounds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
e = PyrtEngine(path, n_ctx=depth + 512, n_ubatch=512, n_threads=2, mla=3)
rng = np.random.default_rng(1)
toks = rng.integers(0, e.n_vocab, 16).tolist()
def tg(pos):
    e.seq_rm(pos); e.decode([toks[0]], pos); e.seq_rm(pos)
    t0 = time.perf_counter()
    for j, t in enumerate(toks):
        e.decode([t], pos + j)
    return 16 / (time.perf_counter() - t0)
print("tg@0", [round(tg(0), 2) for _ in range(rounds)], flush=True)
e.seq_rm(0)
t0 = time.perf_counter()
decode_chunked(e, rng.integers(0, e.n_vocab, depth).tolist(), 0)
print("prefill s", round(time.perf_counter() - t0, 1), flush=True)
print(f"tg@{depth}", [round(tg(depth), 2) for _ in range(rounds)], flush=True)
