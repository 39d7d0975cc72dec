"""TG at depth with FlashMLA's bf16 vs fp16 tile items, alternating in one process (same cache, same state)."""
import sys, time
import numpy as np
from pyrt.bench.engines import PyrtEngine
from pyrt.bench.sweep import decode_chunked
from pyrt.ops import mla
path, depth, rounds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
e = PyrtEngine(path, n_ctx=depth + 512, n_ubatch=512, n_threads=2, mla=3)
rng = np.random.default_rng(1)
decode_chunked(e, rng.integers(0, e.n_vocab, depth).tolist(), 0)
base = mla.amx_config()[:64].copy()
cfgs = {"bf16": base, "fp16": np.concatenate([base, np.ones(1, np.uint8)])}
toks = rng.integers(0, e.n_vocab, 16).tolist()
res = {k: [] for k in cfgs}
for r in range(rounds):
    for name in (("bf16", "fp16") if r % 2 == 0 else ("fp16", "bf16")):
        mla._AMX_CFG[:] = [cfgs[name]]
        e.seq_rm(depth)
        e.decode([toks[0]], depth)  # first decode of the mode outside the timing
        e.seq_rm(depth)
        t0 = time.perf_counter()
        for j, t in enumerate(toks):
            e.decode([t], depth + j)
        res[name].append(len(toks) / (time.perf_counter() - t0))
for k, v in res.items():
    print(k, "t/s", " ".join(f"{x:.2f}" for x in v), "median", f"{np.median(v):.2f}")
