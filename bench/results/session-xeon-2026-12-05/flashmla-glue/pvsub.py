"""The value steps of one 32-cell tile (p16 + 16 pv16_2), P from probabilities of several kinds (f16 subnormals
included): the tile unit's time does not depend on them."""
import os, time, numpy as np
from numba import njit
from pyrt._kernels.attention_mla_amx16 import p16, load_p2, pv16_2
from pyrt._kernels.attention_mla_amx import config_bytes
from pyrt._kernels.amx import tile_config, tile_release, enable
enable()
def al(a):
    b = np.empty(a.nbytes + 64, np.uint8); o = (-b.ctypes.data) % 64
    c = b[o:o + a.nbytes].view(a.dtype).reshape(a.shape); c[...] = a; return c
@njit
def run(st, vb, acc, pt, cfg, reps):
    tile_config(cfg.ctypes.data)
    sp = st.ctypes.data; vbp = vb.ctypes.data; accp = acc.ctypes.data; ptp = pt.ctypes.data
    for r in range(reps):
        p16(ptp, sp, 64)
        load_p2(ptp, ptp + 1024)
        for c in range(0, 32, 2):
            pv16_2(accp + c * 64, 2048, vbp + c * 1024, vbp + (c + 1) * 1024)
    tile_release()
rng = np.random.default_rng(0)
vb = al(rng.standard_normal(16384).astype(np.float16).view(np.uint16))
acc = al(np.zeros(16 * 512, np.float32)); pt = al(np.zeros(1024, np.uint16)); cfg = config_bytes()
for name, st in (("normal", 0.5 + 0.5 * rng.random((32, 16))), ("probs", np.exp(-np.abs(rng.standard_normal((32, 16))) * 10)),
                 ("zeros", np.zeros((32, 16))), ("tiny", np.full((32, 16), 1e-7))):
    st = al(st.astype(np.float32))
    run(st, vb, acc, pt, cfg, 10)
    t0 = time.perf_counter(); run(st, vb, acc, pt, cfg, 20000); dt = time.perf_counter() - t0
    print(name, "%.0f ns per 32-cell value phase" % (dt / 20000 * 1e9))
