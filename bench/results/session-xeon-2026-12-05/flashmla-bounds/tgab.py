"""TG at DEPTH in one process, the fused attention block from kernel copies (KV dir, mk.sh) alternating;
SWAP=mla,moe swaps the fused MoE block too. tgab.py FILE DEPTH ROUNDS NAME..."""
import sys, time, os, importlib
sys.path.insert(0, os.environ.get("KV", "/tmp/kv"))
import numpy as np
from pyrt.bench.engines import PyrtEngine
from pyrt.bench.sweep import decode_chunked
from pyrt.ops import mla as om, moe as omoe
path, depth, rounds, names = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4:]
moe = "moe" in os.environ.get("SWAP", "mla").split(",")
mods = {n: importlib.import_module(n + ".fused_mla") for n in names}
mods_moe = {n: importlib.import_module(n + ".fused_moe") for n in names} if moe else {}
e = PyrtEngine(path, n_ctx=depth + 512, n_ubatch=512, n_threads=2, mla=3)
rng = np.random.default_rng(1)
if depth:
    decode_chunked(e, rng.integers(0, e.n_vocab, depth).tolist(), 0)
toks = rng.integers(0, e.n_vocab, 16).tolist()
res = {n: [] for n in names}
for r in range(rounds):
    for n in (names if r % 2 == 0 else names[::-1]):
        om.fk = mods[n]
        if moe:
            omoe.fm = mods_moe[n]
        e.seq_rm(depth); e.decode([toks[0]], depth); e.seq_rm(depth)
        t0 = time.perf_counter()
        for j, t in enumerate(toks):
            e.decode([t], depth + j)
        res[n].append(16 / (time.perf_counter() - t0))
    print(r, {n: round(v[-1], 2) for n, v in res.items()}, flush=True)
for n in names:
    v = sorted(res[n]); print(f"{n}: median {v[len(v)//2]:.2f} t/s, all {[round(x, 2) for x in res[n]]}")
