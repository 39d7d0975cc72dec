"""smx.py: softmax_masked_rows on a 256 x 4608 score block (one query per row, as MLA's decompressed prompt path gives
it; a seventh of the cells in another sequence), the attention module of another commit against this checkout's.
First:  git show REV:pyrt/_kernels/attention.py > pyrt/_kernels/attention_old.py   (remove it afterwards)"""
import time
import numpy as np
from pyrt._kernels import attention as NEW, attention_old as OLD
rng = np.random.default_rng(0)
n, rows = 4608, 256
S0 = (rng.standard_normal((rows, n)) * 3).astype(np.float32)
cp = np.arange(n, dtype=np.int32)
cs = np.ones(n, np.uint64)
cs[::7] = 2
qp = np.arange(n - 512, n, dtype=np.int32)
qs = np.zeros(512, np.int32)


def run(mod, n_gqa, reps=20):
    """ms per call, less the copy that restores the scores; the result."""
    S = np.empty_like(S0)
    best = copy = 1e9
    for _ in range(3):
        t0 = time.perf_counter()
        for _ in range(reps):
            S[:] = S0
            mod.softmax_masked_rows(S, n_gqa, 0, qp, qs, cp, cs, 0, np.float32(0.0))
        best = min(best, (time.perf_counter() - t0) / reps)
        t0 = time.perf_counter()
        for _ in range(reps):
            S[:] = S0
        copy = min(copy, (time.perf_counter() - t0) / reps)
    return (best - copy) * 1e3, S.copy()


for mod in (OLD, NEW):
    run(mod, 1, 1)
for rnd in range(3):
    (a, sa), (b, sb) = run(OLD, 1), run(NEW, 1)
    print(f"n_gqa 1: old {a:.3f} ms, new {b:.3f} ms, same bits {bool(np.array_equal(sa, sb))}")
