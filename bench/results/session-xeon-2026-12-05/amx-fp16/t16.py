import sys, time
import numpy as np
sys.path.insert(0, "tests")
from mla_reference import naive_latent
from pyrt.ops import mla
from pyrt._kernels import attention_mla_amx16 as A16
print("probe", A16.probe())
R, C = 32, 64
def run(n_head, n_tok, n_cells, perm=True, seed=0):
    rng = np.random.default_rng(seed)
    rows = rng.standard_normal((n_cells, R + C)).astype(np.float16)
    held = rows.astype(np.float32)
    cp = np.arange(n_cells, dtype=np.int32) // 2
    cs = np.where(np.arange(n_cells) % 2 == 0, 1, 2).astype(np.uint64)
    q_pos = np.sort(rng.integers(0, n_cells // 2, n_tok)).astype(np.int32)
    q_seq = rng.integers(0, 2, n_tok).astype(np.int32)
    q = (0.3 * rng.standard_normal((n_tok, n_head, R + C))).astype(np.float32)
    kv_idx = (rng.permutation(n_cells) if perm else np.arange(n_cells)).astype(np.int32)
    args = (q, rows, "f16", cp, cs, kv_idx, q_pos, q_seq, 0.125, R)
    mla._AMX_CFG.clear(); b = mla.flash_mla(*args)
    cfg = mla.amx_config(); mla._AMX_CFG[0] = np.concatenate([cfg[:64], np.ones(1, np.uint8)])
    o = mla.flash_mla(*args)
    ref = naive_latent(q, held, R, cp, cs, q_pos, q_seq, 0.125)
    e16 = ((o - ref) ** 2).sum() / (ref ** 2).sum(); eb = ((b - ref) ** 2).sum() / (ref ** 2).sum()
    print(n_head, n_tok, n_cells, perm, "nmse fp16", e16, "bf16", eb, "equal", np.array_equal(o, b))
for a in [(16, 1, 700, False), (16, 1, 700, True), (16, 5, 97, True), (32, 9, 130, False), (16, 1, 31, True), (16, 1, 3000, False)]:
    run(*a)
