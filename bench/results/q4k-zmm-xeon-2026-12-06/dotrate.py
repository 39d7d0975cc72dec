"""Weight-row dot rate of one token (fused_mla._matvec_q) per format, 1 and 2 threads, weights of 1 MB (L2), 16 MB
(L3) and 512 MB (DRAM), random bytes. python dotrate.py"""
import time, numpy as np, numba
from pyrt._kernels import fused_mla as fk, codes
from pyrt.formats.qtypes import get_qtype
from gguf import GGMLQuantizationType as T
rng = np.random.default_rng(0)
n_in = 2048
def mk(kind_t, rows):
    qt = get_qtype(int(kind_t))
    rb = n_in // qt.block_size * qt.type_size
    w = rng.integers(0, 256, (rows, rb), dtype=np.uint8)
    # keep f16 scales sane: set every byte pattern; random halves may be inf/nan -> fine for timing
    return w
x = rng.standard_normal(n_in).astype(np.float32)
for name, t, code in (("Q4_K", T.Q4_K, codes.Q4_K), ("Q6_K", T.Q6_K, codes.Q6_K), ("Q8_0", T.Q8_0, codes.Q8_0), ("Q4_0", T.Q4_0, codes.Q4_0)):
    for mb in (1, 16, 512):
        qt = get_qtype(int(t)); rb = n_in // qt.block_size * qt.type_size
        rows = int(mb * 1e6 / rb) // 64 * 64
        w = mk(t, rows); dst = np.empty(rows, np.float32)
        fk._matvec_q(dst, w, code, x)
        for nt in (1, 2):
            numba.set_num_threads(nt)
            reps = max(1, int(200e6 / w.nbytes))
            best = 1e9
            for r in range(3):
                t0 = time.perf_counter()
                for _ in range(reps):
                    fk._matvec_q(dst, w, code, x)
                best = min(best, (time.perf_counter() - t0) / reps)
            print(f"{name} {mb:4d} MB {nt}t: {w.nbytes/best/1e9:5.1f} GB/s", flush=True)
