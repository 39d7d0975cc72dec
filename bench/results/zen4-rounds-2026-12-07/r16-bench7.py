import sys, time, numpy as np, numba
from numba import njit, prange
sys.path.insert(0, "/work/main/tests")
from test_quants_k import rand_blocks, q8k
from pyrt._kernels import quants_k as qk, repack_k as rk, simd
sys.path.insert(0, __import__('os').path.dirname(__file__))
from r16_huge import huge
K = qk.KIND_Q4_K
def var(mode, dist, loc):
    simd.PREFETCH_LOCALITY = loc
    v = rk._make_vdot_group(mode, dist)
    return v
def mk(vg):
    @njit(parallel=True)
    def f(g, xq, nb, hg):
        wb = g.shape[1]
        for it in prange(g.shape[0] // 16):
            vg(g, it * 16 * wb, xq, 0, nb, hg, it * 16)
    return f
V = {"none": (0, 0, 2), "pf2_16k_t0": (2, 16384, 3), "pf2_64k_t1": (2, 65536, 2), "pf2_16k_nta": (2, 16384, 0), "pf1_64k_t0": (1, 65536, 3)}
F = {}
for k, (m, d, l) in V.items():
    F[k] = mk(var(m, d, l))
@njit(parallel=True)
def old_blk(g, xq, nb, hg):
    for it in prange(g.shape[0] // 16):
        qk.rows_k1(K, g, 0, it * 16, it * 16 + 16, xq, 0, nb, hg)
numba.set_num_threads(2)
n_in = 2048; nb = 8; R = 32 * 1408
w0 = rand_blocks("q4_k", R, n_in, 1)
g = huge(w0.shape); g[:] = w0
gr = huge(w0.shape); gr[:] = g; rk.repack_q4_k_r16(gr)
xq = q8k(np.random.default_rng(2).standard_normal((1, n_in)).astype(np.float32))[0].copy()
hg = np.empty(R, np.float32)
for k, f in F.items():  # compile at the locality each variant was made with
    simd.PREFETCH_LOCALITY = V[k][2]; f(gr, xq, nb, hg)
res = {"old": []} | {k: [] for k in F}
for rep in range(10):
    t = time.perf_counter(); old_blk(g, xq, nb, hg); res["old"].append(time.perf_counter() - t)
    for k, f in F.items():
        t = time.perf_counter(); f(gr, xq, nb, hg); res[k].append(time.perf_counter() - t)
gb = g.nbytes / 1e9
print("  ".join(f"{k} {gb/np.median(v[1:]):.1f}" for k, v in res.items()), flush=True)
