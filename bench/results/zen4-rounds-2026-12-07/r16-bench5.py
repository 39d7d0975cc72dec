import sys, time, numpy as np, numba
from numba import njit, prange
sys.path.insert(0, "/work/main/tests")
from test_quants_k import rand_blocks, q8k
from pyrt._kernels import quants_k as qk, repack_k as rk
sys.path.insert(0, __import__('os').path.dirname(__file__))
from r16_huge import huge
K = qk.KIND_Q4_K
def alt(vg):
    @njit(parallel=True)
    def f(g, u, xq, nb, hg, hu, IT, two):
        wb = g.shape[1]
        for it in prange(g.shape[0] // IT):
            for q in range(IT // 16):
                vg(g, (it * IT + 16 * q) * wb, xq, 0, nb, hg, it * IT + 16 * q)
            if two:
                for q in range(IT // 16):
                    vg(u, (it * IT + 16 * q) * wb, xq, 0, nb, hu, it * IT + 16 * q)
    return f
new_alt = alt(rk._make_vdot_group(0, 0))
new2_alt = alt(rk._make_vdot_group(2, 16384))
@njit(parallel=True)
def old_alt(g, u, xq, nb, hg, hu, IT, two):
    for it in prange(g.shape[0] // IT):
        qk.rows_k1(K, g, 0, it * IT, it * IT + IT, xq, 0, nb, hg)
        if two:
            qk.rows_k1(K, u, 0, it * IT, it * IT + IT, xq, 0, nb, hu)
numba.set_num_threads(int(sys.argv[1]))
n_in = 2048; nb = 8; R = 16 * 1408
w0 = rand_blocks("q4_k", R, n_in, 1)
g = huge(w0.shape); g[:] = w0; u = huge(w0.shape); u[:] = w0[::-1]
gr = huge(w0.shape); gr[:] = g; rk.repack_q4_k_r16(gr)
ur = huge(w0.shape); ur[:] = u; rk.repack_q4_k_r16(ur)
x = np.random.default_rng(2).standard_normal((1, n_in)).astype(np.float32)
xq = q8k(x)[0].copy()
hg = np.empty(R, np.float32); hu = np.empty(R, np.float32)
for two in (0, 1):
  for IT in (32, 1408):
    res = {"old": [], "new": [], "new_pf": []}
    for rep in range(12):
        for k, f, a, b in (("old", old_alt, g, u), ("new", new_alt, gr, ur), ("new_pf", new2_alt, gr, ur)):
            t = time.perf_counter(); f(a, b, xq, nb, hg, hu, IT, two); res[k].append(time.perf_counter() - t)
    gb = (1 + two) * g.nbytes / 1e9
    print(f"two={two} IT={IT}: " + "  ".join(f"{k} {gb/np.median(v[1:]):.1f}" for k, v in res.items()), flush=True)
