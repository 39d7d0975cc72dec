"""ab_blas.py: the BLAS path (dequantize a row tile to f32 + sgemm on the BLAS pool) of F16 weights, 512 tokens,
with tiles of blas_tile_bytes and the rest (before) vs ops.matmul._blas_tiles (after: at least BLAS_MIN_TILES
near-equal tiles), in one process, alternating. Gemma 3 270M's and a 2048-wide model's shapes."""
import time

import numba
import numpy as np
from gguf import GGMLQuantizationType as T

from pyrt.ops import matmul as mm
from pyrt.ops import paths

after = mm._blas_tiles


def before(n_out, n_in):
    tile = max(16, min(n_out, paths.current().blas_tile_bytes // (4 * n_in)))
    return [(r0, min(r0 + tile, n_out)) for r0 in range(0, n_out, tile)]


rng = np.random.default_rng(0)
print(f"threads {numba.get_num_threads()}, 512 tokens, F16 weights")
for n_out, n_in in ((256, 640), (1024, 640), (2048, 640), (640, 2048), (256, 2048), (512, 2048), (2048, 2048)):
    w = rng.standard_normal((n_out, n_in)).astype(np.float16).view(np.uint8).reshape(n_out, -1)
    x = rng.standard_normal((512, n_in)).astype(np.float32)
    res, outs = {"before": [], "after": []}, {}
    for _ in range(10):
        for label, fn in (("before", before), ("after", after)):
            mm._blas_tiles = fn
            t0 = time.perf_counter()
            outs[label] = mm.matmul(x, w, T.F16, path="blas")
            res[label].append(time.perf_counter() - t0)
    mm._blas_tiles = after
    assert np.allclose(outs["before"], outs["after"], rtol=1e-5, atol=1e-4)
    b, a = (np.median(res[k][2:]) * 1e3 for k in ("before", "after"))
    print(f"F16 {n_out} x {n_in}: tiles {len(before(n_out, n_in))} -> {len(after(n_out, n_in))}, before {b:.2f} ms, "
          f"after {a:.2f} ms ({b / a:.2f}x)", flush=True)
