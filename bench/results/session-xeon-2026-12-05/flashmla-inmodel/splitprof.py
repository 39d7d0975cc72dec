"""flash_attn_mla's parts per KV split in the model at DEPTH (kernel copies with ../flashmla-bounds/patch_prof.py and
patch_splitprof.py; delete $NUMBA_CACHE_DIR/NAME*/fused_mla.* and attention_mla.* first). splitprof.py FILE DEPTH ROUNDS NAME..."""
import sys, time, os, importlib
sys.path.insert(0, os.environ.get("KV", "/tmp/kv"))
import numpy as np
from pyrt.bench.engines import PyrtEngine
from pyrt.bench.sweep import decode_chunked
from pyrt.ops import mla as om
path, depth, rounds, names = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4:]
mods = {n: importlib.import_module(n + ".fused_mla") for n in names}
ams = {n: importlib.import_module(n + ".attention_mla") for n in names}
e = PyrtEngine(path, n_ctx=depth + 512, n_ubatch=512, n_threads=2, mla=3)
rng = np.random.default_rng(1)
decode_chunked(e, rng.integers(0, e.n_vocab, depth).tolist(), 0)
toks = rng.integers(0, e.n_vocab, 16).tolist()
for r in range(rounds):
    for n in (names if r % 2 == 0 else names[::-1]):
        kf = mods[n]; om.fk = kf; P = ams[n].PROF3
        e.seq_rm(depth); e.decode([toks[0]], depth); e.seq_rm(depth)
        kf.PROF[:] = 0; P[:] = 0
        for j, t in enumerate(toks):
            e.decode([t], depth + j)
        c = P[2]; us = lambda x: x / c / 2600
        it = P[8:].reshape(64, 4)
        ns = int((it[:, 1] > 0).sum())
        print(f"{r} {n}: mla_decode {kf.PROF[3] / kf.PROF[5] / 2600:.1f} us/layer; fa items region {us(P[0]):.1f}, "
              f"merge {us(P[1]):.1f}; {ns} splits: per item setup {us(it[:ns, 0]).mean():.2f}, item "
              f"{us(it[:ns, 1]).mean():.1f} (first of a thread {us(it[0, 1]):.1f} / {us(it[ns // 2, 1]):.1f}), finish "
              f"{us(it[:ns, 2]).mean():.2f}; sum of items / 2 {us(it[:ns, 1].sum()) / 2:.1f}; items {np.round(us(it[:ns, 1]), 1).tolist()}", flush=True)
