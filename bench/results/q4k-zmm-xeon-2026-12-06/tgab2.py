"""TG A/B of whole kernel copies (fused_mla + fused_moe swapped), alternating in one process. tgab2.py FILE DEPTH ROUNDS NAME..."""
import sys, time, os, importlib
sys.path.insert(0, os.environ.get("KV", "/tmp/kv"))
import numpy as np
from pyrt.bench.engines import PyrtEngine
from pyrt.bench.sweep import decode_chunked
from pyrt.ops import mla as om, moe as omo
path, depth, rounds, names = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4:]
mods = {n: (importlib.import_module(n + ".fused_mla"), importlib.import_module(n + ".fused_moe")) for n in names}
e = PyrtEngine(path, n_ctx=depth + 512, n_ubatch=512, n_threads=2, mla=3)
rng = np.random.default_rng(1)
if depth:
    decode_chunked(e, rng.integers(0, e.n_vocab, depth).tolist(), 0)
N = 24
toks = rng.integers(0, e.n_vocab, N).tolist()
tps = {n: [] for n in names}; outs = {}
for r in range(rounds):
    for n in (names if r % 2 == 0 else names[::-1]):
        om.fk, omo.fm = mods[n]
        e.seq_rm(depth); e.decode([toks[0]], depth); e.seq_rm(depth)
        t0 = time.perf_counter()
        for j, t in enumerate(toks):
            lg = e.decode([t], depth + j)
        tps[n].append(N / (time.perf_counter() - t0))
        outs.setdefault(n, np.array(lg, copy=True))
    print(r, {n: round(tps[n][-1], 2) for n in names}, flush=True)
for n in names:
    t = sorted(tps[n])
    print(f"{n}: TG median {t[len(t)//2]:.2f} max {t[-1]:.2f}; logits == {names[0]}: {np.array_equal(outs[n], outs[names[0]])}")
