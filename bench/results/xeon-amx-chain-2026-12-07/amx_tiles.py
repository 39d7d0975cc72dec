"""Microseconds and GFLOP/s of amx_matmul.matmul_q_amx on hot random weights, per token count (NT threads, default 2).

    python amx_tiles.py q4_k,q5_k,q6_k,q4_0,q8_0 16,32,48,64,128,512
"""
import sys, os, numba, numpy as np
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
from gguf import GGMLQuantizationType as T
from bench_kernels import timeit, weights
from pyrt._kernels import amx, amx_matmul
from pyrt.formats.qtypes import get_qtype
from pyrt.ops.matmul import _quantize_activations
numba.set_num_threads(int(os.environ.get("NT", "2")))
amx.enable()
cfg = amx.config_bytes()
rng = np.random.default_rng(0)
for name in sys.argv[1].split(","):
    t = T[name.upper()]; qt = get_qtype(int(t))
    for n_out, n_in in ((1408, 2048), (2048, 1408)):
        if n_in % 256 and qt.dot_type == "Q8_K": continue
        w = weights(rng, t, n_out, n_in)
        cols = []
        for nt in (int(v) for v in sys.argv[2].split(",")):
            x = rng.standard_normal((nt, n_in)).astype(np.float32)
            xq = _quantize_activations(x, qt).copy()
            d = np.empty((nt, n_out), np.float32)
            f = lambda: amx_matmul.matmul_q_amx(d, w, xq, qt.code, cfg)
            s = timeit(f, 5, 0.3)
            cols.append(f"{nt}:{s*1e6:.0f}us/{2e-9*nt*n_out*n_in/s:.0f}")
        print(f"{name} {n_out}x{n_in} us/GFLOPs  " + "  ".join(cols), flush=True)
