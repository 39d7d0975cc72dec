"""One-token matvecs (fused_mla._matvec_q) on hot random weights: microseconds and GB/s of weight bytes, per
format, on THREADS threads.

    python dots.py THREADS
"""
import sys, time, numpy as np, numba
from gguf import GGMLQuantizationType as T
sys.path.insert(0, __import__('os').path.join(__import__('os').path.dirname(__import__('os').path.abspath(__file__)), '..', '..'))
from bench_kernels import weights
from pyrt._kernels import fused_mla as fl, codes
numba.set_num_threads(int(sys.argv[1]))
rng = np.random.default_rng(0)
for name, n_out, n_in in (("Q4_K", 3072, 2048), ("Q6_K", 3072, 2048), ("Q5_0", 3072, 2048), ("Q8_0", 3072, 2048), ("Q4_0", 3072, 2048), ("Q5_0", 8192, 128)):
    t = T[name]
    w = weights(rng, t, n_out, n_in)
    x = rng.standard_normal(n_in).astype(np.float32)
    d = np.empty(n_out, np.float32)
    kind = getattr(codes, name)
    fl._matvec_q(d, w, kind, x)
    best = 1e9
    for r in range(5):
        t0 = time.perf_counter()
        for _ in range(50): fl._matvec_q(d, w, kind, x)
        best = min(best, (time.perf_counter() - t0) / 50)
    print(f"{name} {n_out}x{n_in}: {best*1e6:.0f} us, {w.nbytes/best/1e9:.1f} GB/s hot")
