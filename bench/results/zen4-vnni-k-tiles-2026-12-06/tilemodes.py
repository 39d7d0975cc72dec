"""tilemodes.py KINDS TOKENS: single-thread GFLOP/s of the K-quant prompt tiles in each mode this CPU runs (vpdpbusd,
AVX2 pmaddubsw), through tiles_k.serial_tiles (an 8-row group packed once per matmul, then every token), one
1408 x 2048 matrix, modes interleaved in one process (3 rounds, best of 3 each).

python tilemodes.py q4_k,q5_k,q6_k 8,48,512   (from anywhere; imports the checkout's bench_kernels)
"""
import os
import sys
import time

import numpy as np
from gguf import GGMLQuantizationType as T

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
from bench_kernels import weights  # noqa: E402
from pyrt._kernels import tiles_k  # noqa: E402
from pyrt.formats.qtypes import get_qtype  # noqa: E402
from pyrt.ops.matmul import _quantize_activations  # noqa: E402

rng = np.random.default_rng(0)
modes = [m for m in tiles_k.MODES if m is not False]  # the portable IR is a test aid, not a production path
for name in sys.argv[1].split(","):
    t = T[name.upper()]
    kind = get_qtype(int(t)).code
    n_out, n_in = 1408, 2048
    w = weights(rng, t, n_out, n_in)
    for nt in (int(v) for v in sys.argv[2].split(",")):
        nt -= nt % tiles_k.TILE_TOKENS
        xq = _quantize_activations(rng.standard_normal((nt, n_in)).astype(np.float32), get_qtype(int(t))).copy()
        d = np.empty((nt, n_out), np.float32)
        res = {}
        for _ in range(3):
            for m in modes:
                f = tiles_k.serial_tiles(m)
                f(d, w, xq, kind)
                best = 1e9
                for _ in range(3):
                    t0 = time.perf_counter()
                    f(d, w, xq, kind)
                    best = min(best, time.perf_counter() - t0)
                res.setdefault({"vnni": "vpdpbusd", True: "avx2"}[m], []).append(round(2e-9 * nt * n_out * n_in / best))
        print(f"{name} {nt} tokens GFLOP/s {res}", flush=True)
