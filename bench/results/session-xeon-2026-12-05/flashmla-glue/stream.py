"""27 layers of 8192 f16 cache rows (64-byte aligned unless MIS=16) walked tile by tile with the fp16 item's steps,
no mask or softmax: M=0 score steps, 1 + value-tile pairs, 2 + value steps (P from the raw scores), 3 = 2 with the
prefetches spread over score and value steps; D = prefetch distances in bytes; T threads.
    T=2 D="36864 73728" M="2 3" python stream.py"""
import os, time, numpy as np
from numba import njit, prange, set_num_threads
from pyrt._kernels.attention_mla_amx16 import qk16_step, pack_q16, query_scale, pairs16, p16, load_p2, pv16_2
from pyrt._kernels.attention_mla_amx import zero2, store2, config_bytes
from pyrt._kernels.amx import tile_config, tile_release, enable
from pyrt._kernels.simd import prefetch
enable()
@njit(nogil=True)
def walk(base, ntiles, qp, sp, cfgp, dist, mode):
    tile_config(cfgp)
    vb = np.empty(16384 + 64, np.uint16); vbp = vb.ctypes.data + (-vb.ctypes.data) % 64
    pt = np.empty(1024 + 64, np.uint16); ptp = pt.ctypes.data + (-pt.ctypes.data) % 64
    acc = np.zeros(8192 + 64, np.float32); accp = acc.ctypes.data + (-acc.ctypes.data) % 64
    for t in range(ntiles):
        tb = base + t * 32 * 1152
        zero2()
        for kb in range(18):
            if dist > 0 and mode != 3:  # this block's share of the lines dist bytes ahead
                pb = tb + dist + kb * 2048
                for o in range(0, 2048, 64):
                    prefetch(pb + o)
            if dist > 0 and mode == 3:  # half the lines here, half in the value steps
                pb = tb + dist + kb * 1024
                for o in range(0, 1024, 64):
                    prefetch(pb + o)
            o = kb * 64
            qb = qp + kb * 2048
            qk16_step(tb + o, 1152, qb, qb + 1024, tb + 16 * 1152 + o)
            if mode >= 1 and kb < 16:
                d = vbp + kb * 2048
                for i in range(16):
                    pairs16(d + i * 64, tb + 2 * i * 1152 + o, tb + (2 * i + 1) * 1152 + o)
        store2(sp, 64, sp + 1024)
        if mode >= 2:
            p16(ptp, sp, 64)
            load_p2(ptp, ptp + 1024)
            for c in range(0, 32, 2):
                if mode == 3 and dist > 0:
                    pb = tb + dist + 36864 // 2 + (c // 2) * 1152
                    for o in range(0, 1152, 64):
                        prefetch(pb + o)
                pv16_2(accp + c * 64, 2048, vbp + c * 1024, vbp + (c + 1) * 1024)
    tile_release()
@njit(parallel=True)
def run(addrs, ntiles, qp, sp, cfgp, dist, mode, nth):
    for th in prange(nth):
        for a in addrs:
            walk(a + th * (ntiles // nth) * 32 * 1152, ntiles // nth, qp, sp + th * 4096, cfgp, dist, mode)
N = 8192; L = 27
set_num_threads(int(os.environ.get("T", "1")))
nth = int(os.environ.get("T", "1"))
bufs = []
for _ in range(L):
    b = np.empty((N + 64) * 1152 + 128, np.uint8); o = (-b.ctypes.data) % 64 + int(os.environ.get("MIS", "0"))
    c = b[o:o + (N + 64) * 1152]; c[:] = np.random.default_rng(0).integers(0, 255, c.size, dtype=np.uint8) & 0x3b
    bufs.append(c)
addrs = np.array([b.ctypes.data for b in bufs], np.int64)
qq = np.random.default_rng(1).standard_normal((1, 16, 576)).astype(np.float32)
qb = np.empty(18 * 1024 + 64, np.uint16); o = ((-qb.ctypes.data) % 64) // 2
q = qb[o:o + 18 * 1024]; q[:] = pack_q16(qq, query_scale(qq)).ravel()
st = np.zeros(4096, np.float32); cfg = config_bytes()
for dist, mode in [(int(x), int(y)) for x in os.environ.get("D", "0 36864").split() for y in os.environ.get("M", "0 1 2").split()]:
    run(addrs, N // 32, q.ctypes.data, st.ctypes.data, cfg.ctypes.data, dist, mode, nth)
    ts = []
    for r in range(3):
        t0 = time.perf_counter(); run(addrs, N // 32, q.ctypes.data, st.ctypes.data, cfg.ctypes.data, dist, mode, nth); ts.append(time.perf_counter() - t0)
    dt = min(ts)
    print("T", nth, "dist", dist, "mode", mode, "%.1f ms  %.1f GB/s  %.2f us/tile" % (dt * 1e3, L * N * 1152 / dt / 1e9, dt / (L * N / 32) * 1e6 * nth))
