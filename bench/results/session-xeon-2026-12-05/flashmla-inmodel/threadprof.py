"""flash_attn_mla's items region per thread in the model at DEPTH (a kernel copy with ../flashmla-bounds/patch_prof.py
and patch_threadprof.py). threadprof.py FILE DEPTH ROUNDS NAME"""
import sys, os, importlib
sys.path.insert(0, os.environ.get("KV", "/tmp/kv"))
import numpy as np
from pyrt.bench.engines import PyrtEngine
from pyrt.bench.sweep import decode_chunked
from pyrt.ops import mla as om
path, depth, rounds, name = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
kf = importlib.import_module(name + ".fused_mla"); P = importlib.import_module(name + ".attention_mla").PROF3
e = PyrtEngine(path, n_ctx=depth + 512, n_ubatch=512, n_threads=2, mla=3)
rng = np.random.default_rng(1)
decode_chunked(e, rng.integers(0, e.n_vocab, depth).tolist(), 0)
toks = rng.integers(0, e.n_vocab, 16).tolist()
om.fk = kf
for r in range(rounds):
    kf.PROF[:] = 0; P[:] = 0
    for j, t in enumerate(toks):
        e.decode([t], depth + j)
    c = P[1]; us = lambda x: round(x / c / 2600, 1)
    th = P[8:40].reshape(8, 4)
    print(f"{r}: mla_decode {kf.PROF[3] / kf.PROF[5] / 2600:.1f} us/layer; items region {us(P[0])}; per thread "
          f"(busy, last item's end, items): {[(us(th[i, 0]), us(th[i, 2]), round(th[i, 3] / c, 1)) for i in range(8) if th[i, 3]]}",
          flush=True)
    e.seq_rm(depth)
