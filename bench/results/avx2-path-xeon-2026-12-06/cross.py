import sys, numpy as np, numba
sys.path.insert(0, "/work/main/bench")
from bench_kernels import weights, timeit
from pyrt.ops.matmul import matmul
from gguf import GGMLQuantizationType as T
numba.set_num_threads(2)
rng = np.random.default_rng(0)
for name in sys.argv[1].split(","):
    t = T[name.upper()]
    for n_out, n_in in ((1408, 2048), (5632, 2048), (256, 640)):
        if name.endswith("_k") and n_in % 256:
            continue
        w = weights(rng, t, n_out, n_in)
        out = []
        for nt in (32, 64, 128, 192, 256, 512):
            x = rng.standard_normal((nt, n_in)).astype(np.float32)
            fl = 2.0 * nt * n_out * n_in
            r = []
            for path in ("dot", "blas"):
                matmul(x, w, t, path=path)
                r.append(fl / timeit(lambda: matmul(x, w, t, path=path), 3, 0.15) / 1e9)
            out.append(f"{nt}:{r[0]:.0f}/{r[1]:.0f}")
        print(f"{name} {n_out}x{n_in} dot/blas GFLOP/s  " + "  ".join(out), flush=True)
