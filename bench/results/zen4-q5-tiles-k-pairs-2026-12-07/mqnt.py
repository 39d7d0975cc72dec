"""mqnt.py: the Q5_0 prompt matmul (matmul_q, 512 tokens) with its widest pass at 8 and at 16 tokens, in one process,
alternating: matmul_q's source with `nt` made an argument (exec'd from pyrt/_kernels/matmul_q8_0.py). Run from the
repository root; NT=1 for one thread (default 2)."""
import os, time, inspect, textwrap
import numpy as np, numba
from numba import njit, prange  # noqa: F401 - used by the exec'd source
from gguf import GGMLQuantizationType as T
from gguf.quants import quantize
from pyrt._kernels import matmul_q8_0 as ql
src = inspect.getsource(ql.matmul_q.py_func)
src = src.replace("def matmul_q(dst, w, xq, kind, tile_bytes, chunk_bytes):", "def matmul_q_nt(dst, w, xq, kind, tile_bytes, chunk_bytes, nt):")
lines = [ln for ln in src.splitlines() if not ln.strip().startswith(("nt = NT_WIDE", "@"))]
ns = dict(vars(ql)); ns["prange"] = prange
exec(textwrap.dedent("\n".join(lines)), ns)
matmul_q_nt = njit(nogil=True, fastmath=ql.FASTMATH, parallel=True)(ns["matmul_q_nt"])
numba.set_num_threads(int(os.environ.get("NT", "2")))
rng = np.random.default_rng(0)
for t, kind, n_out, n_in in ((T.Q5_0, ql.KIND_Q5_0, 2048, 640), (T.Q5_0, ql.KIND_Q5_0, 640, 2048)):
    w = quantize(rng.standard_normal((n_out, n_in)).astype(np.float32), t).view(np.uint8).reshape(n_out, -1)
    xq = np.empty((512, n_in // 32 * 34), np.uint8)
    ql.quantize_rows_q8_0(xq, rng.standard_normal((512, n_in)).astype(np.float32))
    d8, d16 = np.empty((512, n_out), np.float32), np.empty((512, n_out), np.float32)
    matmul_q_nt(d8, w, xq, kind, ql.TILE_BYTES, ql.CHUNK_BYTES, 8)
    matmul_q_nt(d16, w, xq, kind, ql.TILE_BYTES, ql.CHUNK_BYTES, 16)
    assert np.array_equal(d8.view(np.uint32), d16.view(np.uint32))
    res = {8: [], 16: []}
    for _ in range(12):
        for nt, d in ((8, d8), (16, d16)):
            t0 = time.perf_counter()
            matmul_q_nt(d, w, xq, kind, ql.TILE_BYTES, ql.CHUNK_BYTES, nt)
            res[nt].append(2 * n_out * n_in * 512 / (time.perf_counter() - t0) / 1e9)
    print(t.name, n_out, "x", n_in, " | ".join(f"nt {k}: best {max(v):.0f} median {np.median(v):.0f} GOP/s"
                                             for k, v in res.items()), flush=True)
