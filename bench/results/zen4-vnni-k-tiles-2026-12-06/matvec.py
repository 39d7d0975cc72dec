"""matvec.py: one-token matvec (fused_mla._matvec_q, inside njit) per format at Gemma 3 270M shapes, weights hot (one
copy) and from DRAM (copies past the L3), 2 threads."""
import sys, time, numpy as np
import os
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
from bench_kernels import weights
from gguf import GGMLQuantizationType as T
from numba import njit
from pyrt._kernels.fused_mla import _matvec_q
from pyrt.formats.qtypes import get_qtype
@njit(nogil=True)
def loop(dst, ws, kind, x, n):
    for i in range(n):
        _matvec_q(dst, ws[i % ws.shape[0]], kind, x)
rng = np.random.default_rng(0)
for name, n_out, n_in in (("Q5_0", 2048, 640), ("Q5_0", 16384, 640), ("Q8_0", 256, 640), ("Q4_K", 640, 1024), ("Q6_K", 640, 2048), ("Q6_K", 5120, 2048)):
    t = T[name]; kind = get_qtype(int(t)).code
    w0 = weights(rng, t, n_out, n_in)
    ncold = max(2, 160_000_000 // w0.nbytes)
    ws = np.stack([w0] * ncold)
    x = rng.standard_normal(n_in).astype(np.float32); dst = np.empty(n_out, np.float32)
    loop(dst, ws[:1], kind, x, 1)
    out = []
    for label, arr in (("hot", ws[:1]), ("cold", ws)):
        n = max(ncold, 50)
        best = 1e9
        for _ in range(3):
            t0 = time.perf_counter(); loop(dst, arr, kind, x, n); best = min(best, (time.perf_counter() - t0) / n)
        out.append(f"{label} {best*1e6:.1f} us {w0.nbytes/best/1e9:.1f} GB/s")
    print(name, n_out, "x", n_in, f"{w0.nbytes/1e3:.0f} KB", " | ".join(out), flush=True)
