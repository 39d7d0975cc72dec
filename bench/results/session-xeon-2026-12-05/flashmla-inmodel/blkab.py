"""mla_decode per layer in the model (rdtsc) at DEPTH, kernel copies alternating in one process: the A/B that carries over
to TG (fl2.py's 27 caches, 255 MB, partly stay in this CPU's 480 MiB L3; a token's 1.6 GB of weights do not let them).
Copies: ../flashmla-bounds/mk.sh NAME ../flashmla-bounds/patch_prof.py [patch...]; delete $NUMBA_CACHE_DIR/NAME*/fused_mla.*
before each run (the counters' address is baked in).  blkab.py FILE DEPTH ROUNDS NAME..."""
import sys, time, os, importlib
sys.path.insert(0, os.environ.get("KV", "/tmp/kv"))
import numpy as np
from pyrt.bench.engines import PyrtEngine
from pyrt.bench.sweep import decode_chunked
from pyrt.ops import mla as om
path, depth, rounds, names = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4:]
mods = {n: importlib.import_module(n + ".fused_mla") for n in names}
e = PyrtEngine(path, n_ctx=depth + 512, n_ubatch=512, n_threads=2, mla=3)
rng = np.random.default_rng(1)
if depth:
    decode_chunked(e, rng.integers(0, e.n_vocab, depth).tolist(), 0)
toks = rng.integers(0, e.n_vocab, 16).tolist()
res = {n: [] for n in names}; tps = {n: [] for n in names}
for r in range(rounds):
    for n in (names if r % 2 == 0 else names[::-1]):
        kf = mods[n]; om.fk = kf
        e.seq_rm(depth); e.decode([toks[0]], depth); e.seq_rm(depth)
        kf.PROF[:] = 0
        t0 = time.perf_counter()
        for j, t in enumerate(toks):
            e.decode([t], depth + j)
        tps[n].append(16 / (time.perf_counter() - t0))
        res[n].append(kf.PROF[3] / kf.PROF[5] / 2600)
    print(r, {n: (round(res[n][-1], 1), round(tps[n][-1], 2)) for n in names}, flush=True)
for n in names:
    v = sorted(res[n]); t = sorted(tps[n])
    print(f"{n}: mla_decode median {v[len(v)//2]:.1f} us/layer (all {[round(x) for x in res[n]]}), TG median {t[len(t)//2]:.2f}")
