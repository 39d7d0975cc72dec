"""GFLOP/s of the Q4_K/Q5_K prompt tiles against the one-row dot they replace, and BLAS (or AMX), 2 threads.

python tiles.py q4_k,q5_k 1,2,4,8,48,128,512 [blas|amx]   (from the repository root or anywhere)
"""
import os
import sys

import numba
import numpy as np
from gguf import GGMLQuantizationType as T

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
from bench_kernels import timeit, weights  # noqa: E402
from pyrt._kernels import quants_k as qk  # noqa: E402
from pyrt.formats.qtypes import get_qtype  # noqa: E402
from pyrt.ops.matmul import _quantize_activations, matmul  # noqa: E402

numba.set_num_threads(2)
rng = np.random.default_rng(0)
other = sys.argv[3] if len(sys.argv) > 3 else "blas"
for name in sys.argv[1].split(","):
    t = T[name.upper()]
    kind = get_qtype(int(t)).code
    for n_out, n_in in ((1408, 2048), (2048, 2048)):
        w = weights(rng, t, n_out, n_in)
        cols = []
        for nt in (int(v) for v in sys.argv[2].split(",")):
            x = rng.standard_normal((nt, n_in)).astype(np.float32)
            xq = _quantize_activations(x, get_qtype(int(t))).copy()
            d = np.empty((nt, n_out), np.float32)
            runs = [lambda: qk.matmul_k_tiles(d, w, xq, kind), lambda: qk.matmul_k(d, w, xq, kind)]
            if other == "amx" or nt >= 64:
                runs.append(lambda: matmul(x, w, t, path=other))
            for f in runs:
                f()
            cols.append(f"{nt}:" + "/".join(f"{2e-9 * nt * n_out * n_in / timeit(f, 3, 0.15):.0f}" for f in runs))
        print(f"{name} {n_out}x{n_in} tiles/dot/{other} GFLOP/s  " + "  ".join(cols), flush=True)
