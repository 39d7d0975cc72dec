"""ab_tiles.py: the prompt matmul (matmul_q, 512 tokens) with its rows in work items of about TILE_BYTES (before:
3 items for 256 Q5_0 rows of 640) and in at least MIN_ITEMS items (after), in one process, alternating: `before`
is matmul_q's source with MIN_ITEMS taken as 1 (exec'd from pyrt/_kernels/matmul_q8_0.py). Gemma 3 270M's Q5_0 shapes
and the llama bench file's Q4_0 ones. Run from the repository root; NT=1 for one thread (default 2)."""
import inspect
import os
import textwrap
import time

import numba
import numpy as np
from gguf import GGMLQuantizationType as T
from gguf.quants import quantize
from numba import njit, prange  # noqa: F401 - used by the exec'd source

from pyrt._kernels import matmul_q8_0 as ql

src = inspect.getsource(ql.matmul_q.py_func)
assert "min(n_grp, MIN_ITEMS)" in src, "matmul_q changed: update this script"
lines = [ln for ln in src.splitlines() if not ln.strip().startswith("@")]
ns = dict(vars(ql))
ns["prange"] = prange
exec(textwrap.dedent("\n".join(lines).replace("def matmul_q(", "def matmul_q_before(")
                     .replace("min(n_grp, MIN_ITEMS)", "min(n_grp, 1)")), ns)
before = njit(nogil=True, fastmath=ql.FASTMATH, parallel=True)(ns["matmul_q_before"])
numba.set_num_threads(int(os.environ.get("NT", "2")))
rng = np.random.default_rng(0)
cases = [(T.Q5_0, ql.KIND_Q5_0, n, 640) for n in (256, 1024, 1536, 2048)] + [(T.Q4_0, ql.KIND_Q4_0, n, 2048)
                                                                      for n in (256, 2048, 5632)]
print(f"threads {numba.get_num_threads()}, 512 tokens")
for t, kind, n_out, n_in in cases:
    w = quantize(rng.standard_normal((n_out, n_in)).astype(np.float32), t).view(np.uint8).reshape(n_out, -1)
    xq = np.empty((512, n_in // 32 * 34), np.uint8)
    ql.quantize_rows_q8_0(xq, rng.standard_normal((512, n_in)).astype(np.float32))
    db, da = np.empty((512, n_out), np.float32), np.empty((512, n_out), np.float32)
    before(db, w, xq, kind, ql.TILE_BYTES, ql.CHUNK_BYTES)
    ql.matmul_q(da, w, xq, kind, ql.TILE_BYTES, ql.CHUNK_BYTES)
    assert np.array_equal(db.view(np.uint32), da.view(np.uint32))
    res = {"before": [], "after": []}
    for _ in range(15):
        for label, fn, d in (("before", before, db), ("after", ql.matmul_q, da)):
            t0 = time.perf_counter()
            fn(d, w, xq, kind, ql.TILE_BYTES, ql.CHUNK_BYTES)
            res[label].append(2 * n_out * n_in * 512 / (time.perf_counter() - t0) / 1e9)
    b, a = np.median(res["before"]), np.median(res["after"])
    print(f"{t.name} {n_out} x {n_in}: before {b:.0f}, after {a:.0f} GOP/s (median of 15, {a / b:.2f}x)", flush=True)
