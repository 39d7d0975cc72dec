"""patch_step64.py's items (KV/kstep64) against the 32-cell items (KV/kbase): nmse."""
import sys, os; sys.path.insert(0, os.environ.get("KV", "/tmp/kv"))
import numpy as np
from pyrt.ops import mla
from kstep64 import attention_mla as new
from kbase import attention_mla as old
R, C = 64, 512
rng = np.random.default_rng(5)
for n_cells, n_tok in ((700, 1), (97, 5), (8192, 1)):
    rows = rng.standard_normal((n_cells, R + C)).astype(np.float16)
    cp = np.arange(n_cells, dtype=np.int32); cs = np.ones(n_cells, np.uint64)
    qp = np.full(n_tok, n_cells, np.int32); qs = np.zeros(n_tok, np.int32)
    q = (0.3 * rng.standard_normal((n_tok, 16, R + C))).astype(np.float32)
    kv = np.arange(n_cells, dtype=np.int32)
    k_, kind, cp_, cs_, kv_, qp_, qs_ = mla._flash_args(n_tok, 16, R + C, rows, "f16", cp, cs, kv, qp, qs, 0.125, R)
    cfg = np.concatenate([mla.amx_config()[:64], np.ones(1, np.uint8)])
    q_tile, kv_tile, n_split = mla.choose_tiles(n_tok, 16, n_cells, amx=True)
    o = []
    for mod in (old, new):
        d = np.empty((n_tok, 16, C), np.float32)
        mod.flash_attn_mla(d, q, k_, kind, R, cp_, cs_, kv_, qp_, qs_, np.float32(0.125), q_tile, kv_tile, n_split, cfg)
        o.append(d.astype(np.float64))
    print(n_cells, n_tok, "nmse", ((o[0] - o[1]) ** 2).sum() / (o[0] ** 2).sum())
