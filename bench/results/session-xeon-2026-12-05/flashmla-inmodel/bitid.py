"""flash_attn_mla of this checkout against a copy of the parent commit's kernels (KV/kbase), f32 and AMX items, masks and
shuffled cells: the outputs must be equal bit for bit. N_MAX (default 300) bounds the cells: 5000 for KV splits."""
import sys, os; sys.path.insert(0, os.environ.get("KV", "/tmp/kv"))
import numpy as np
from pyrt.ops import mla
from pyrt._kernels import attention_mla as new
from kbase import attention_mla as old
R, C = 64, 512
rng = np.random.default_rng(5)
bad = 0
for trial in range(24):
    n_cells = int(rng.integers(1, int(os.environ.get("N_MAX", 300)))); n_tok = int(rng.choice([1, 1, 3, 9])); n_head = 16
    rows = rng.standard_normal((n_cells, R + C)).astype(np.float16)
    cp = (np.arange(n_cells) // 2).astype(np.int32)
    cs = np.where(np.arange(n_cells) % 3 == 0, 1, 2).astype(np.uint64)
    qp = np.sort(rng.integers(0, max(1, n_cells // 2), n_tok)).astype(np.int32); qs = rng.integers(0, 2, n_tok).astype(np.int32)
    q = (0.3 * rng.standard_normal((n_tok, n_head, R + C))).astype(np.float32)
    kv = rng.permutation(n_cells).astype(np.int32) if trial % 2 else np.arange(n_cells, dtype=np.int32)
    k_, kind, cp_, cs_, kv_, qp_, qs_ = mla._flash_args(n_tok, n_head, R + C, rows, "f16", cp, cs, kv, qp, qs, 0.125, R)
    for amx in (0, 1):
        cfg = mla.amx_config() if amx else mla.amx_config()[:0]
        q_tile, kv_tile, n_split = mla.choose_tiles(n_tok, n_head, kv_.shape[0], amx=bool(amx))
        outs = []
        for mod in (old, new):
            d = np.empty((n_tok, n_head, C), np.float32)
            mod.flash_attn_mla(d, q, k_, kind, R, cp_, cs_, kv_, qp_, qs_, np.float32(0.125), q_tile, kv_tile, n_split, cfg)
            outs.append(d)
        same = np.array_equal(outs[0], outs[1], equal_nan=True)
        bad += not same
        if not same: print("DIFF", trial, amx, n_cells, n_tok, np.nanmax(np.abs(outs[0] - outs[1])))
print("trials differing:", bad)
