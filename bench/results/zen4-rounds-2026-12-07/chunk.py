import sys, time, numpy as np, numba
from pyrt.bench.engines import PyrtEngine
e = PyrtEngine(sys.argv[1], n_ctx=1024, n_ubatch=512, n_threads=2)
rng = np.random.default_rng(1)
toks = rng.integers(0, e.n_vocab, 80).tolist()
e.decode(toks[:16], 0, logits_last=True)
pos = 16
cfg = [int(c) for c in sys.argv[2].split(",")]
res = {c: [] for c in cfg}
for rep in range(5):
    for c in cfg:
        numba.set_parallel_chunksize(c)
        t0 = time.perf_counter(); n = 16
        for j in range(n): e.decode([toks[(pos + j) % 80]], pos + j, logits_last=True)
        pos += n
        res[c].append(n / (time.perf_counter() - t0))
numba.set_parallel_chunksize(0)
print("  ".join(f"chunk {c}: " + " ".join(f"{v:.1f}" for v in r) + f" (median {np.median(r):.1f})" for c, r in res.items()))
