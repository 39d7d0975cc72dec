import sys, time, cProfile, pstats, numpy as np
from pyrt.bench.engines import PyrtEngine
e = PyrtEngine(sys.argv[1], n_ctx=1024, n_ubatch=512, n_threads=2)
rng = np.random.default_rng(1)
toks = rng.integers(0, e.n_vocab, 80).tolist()
e.decode(toks[:16], 0, logits_last=True)
for j in range(16, 24): e.decode([toks[j]], j, logits_last=True)
pr = cProfile.Profile()
t0 = time.perf_counter()
pr.enable()
for j in range(24, 56): e.decode([toks[j % 80]], j, logits_last=True)
pr.disable()
print("per token ms", (time.perf_counter() - t0) / 32 * 1e3)
st = pstats.Stats(pr); st.sort_stats("tottime").print_stats(18)
