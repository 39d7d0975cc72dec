"""In-process A/B of the prompt attention's BLAS-pool scheduling: static round-robin chunks over items in
(head, row block) order (before) vs workers taking items as they free up, latest row blocks first (after).
Usage: python ab_attn.py [N_TOK] [N_KV_BEFORE]   (Gemma 3 270M's heads: 4 query heads, 1 KV head, 256 wide;
then DeepSeek-V2-Lite's decompressed MLA heads: 16 heads of 128 + 64 rope, values 128)."""
import sys
import time

import numba
import numpy as np

from pyrt.backends import cpu
from pyrt.ops import attention as A

n_tok = int(sys.argv[1]) if len(sys.argv) > 1 else 512
n_before = int(sys.argv[2]) if len(sys.argv) > 2 else 0
new_map = cpu.BlasPool.map


def old_map(self, fn, n_threads, items):
    if n_threads <= 1:
        return new_map(self, fn, n_threads, items)
    new_map(self, lambda c: [fn(it) for it in c], n_threads,
            [sorted(items, key=lambda it: (it[0], it[1]))[i::n_threads] for i in range(n_threads)])


rng = np.random.default_rng(0)
n_vis = n_before + n_tok
cp = np.arange(n_vis, dtype=np.int32)
cs = np.ones(n_vis, np.uint64)
qp = np.arange(n_before, n_vis, dtype=np.int32)
qs = np.zeros(n_tok, np.int32)
cases = {
    "gemma 4x1x256": dict(q=rng.standard_normal((n_tok, 4, 256)).astype(np.float32),
                          K=rng.standard_normal((n_vis, 256)).astype(np.float32),
                          V=rng.standard_normal((n_vis, 256)).astype(np.float32), kv=1, dv=256, rope=None),
    "mla 16x16x128+64": dict(q=rng.standard_normal((n_tok, 16, 128)).astype(np.float32),
                             K=rng.standard_normal((n_vis, 16 * 128)).astype(np.float32),
                             V=rng.standard_normal((n_vis, 16 * 128)).astype(np.float32), kv=16, dv=128,
                             rope=(rng.standard_normal((n_tok, 16, 64)).astype(np.float32),
                                   rng.standard_normal((n_vis, 64)).astype(np.float32))),
}
print(f"threads {numba.get_num_threads()}, {n_tok} tokens after {n_before} cells")
for name, c in cases.items():
    kw = {} if c["rope"] is None else dict(q_rope=c["rope"][0], k_rope=c["rope"][1])

    def run():
        return A.attention_matrix(c["q"], c["K"], c["V"], cp, cs, qp, qs, 0.06, c["kv"], c["dv"], **kw)
    best = {"before": [], "after": []}
    outs = {}
    for rep in range(12):
        for label, m in (("before", old_map), ("after", new_map)):
            cpu.BlasPool.map = m
            t = time.perf_counter()
            outs[label] = run()
            best[label].append(time.perf_counter() - t)
    cpu.BlasPool.map = new_map
    assert np.array_equal(outs["before"], outs["after"])
    b, a = (np.median(best[k][2:]) * 1e3 for k in ("before", "after"))
    print(f"{name}: before {b:.2f} ms, after {a:.2f} ms median of 10 ({b / a:.3f}x)")
