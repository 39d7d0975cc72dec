"""The score step (and pairs, value steps) in a Numba loop over one cache, ns per 32-value block: A=-1 numpy's
alignment (rows 16 bytes past a line), A=0 rows and queries on lines; RQ=1 real query terms (pack_q16), Z=1 zero rows."""
import os
import time, numpy as np
from numba import njit
from pyrt._kernels.attention_mla_amx16 import qk16_step, pairs16, p16, load_p2, pv16_2
from pyrt._kernels.attention_mla_amx import zero2, store2, config_bytes
from pyrt._kernels.amx import tile_config, tile_release, enable
enable()
@njit
def run(rows, q, st, cfg, reps, walk, pairs, vb, pt, acc):
    ptp = pt.ctypes.data; accp = acc.ctypes.data
    tile_config(cfg.ctypes.data)
    rp = rows.ctypes.data; qp = q.ctypes.data; sp = st.ctypes.data; vbp = vb.ctypes.data
    ntiles = rows.shape[0] // 32
    for r in range(reps):
        t = (r % ntiles) if walk else 0
        base = rp + t * 32 * 1152
        zero2()
        for kb in range(18):
            o = kb * 64
            qb = qp + kb * 2048
            qk16_step(base + o, 1152, qb, qb + 1024, base + 16 * 1152 + o)
            if pairs >= 1 and kb < 16:
                d = vbp + kb * 2048
                for i in range(16):
                    pairs16(d + i * 64, base + 2 * i * 1152 + o, base + (2 * i + 1) * 1152 + o)
        store2(sp, 64, sp + 1024)
        if pairs == 2:
            p16(ptp, sp, 64)
            load_p2(ptp, ptp + 1024)
            for c in range(0, 32, 2):
                pv16_2(accp + c * 64, 2048, vbp + c * 1024, vbp + (c + 1) * 1024)
    tile_release()
cfg = config_bytes()
def al(a, off=0):
    b = np.empty(a.nbytes + 128, np.uint8)
    o = (-b.ctypes.data) % 64 + off
    c = b[o:o + a.nbytes].view(a.dtype).reshape(a.shape)
    c[...] = a
    return c
A = int(os.environ.get("A", "-1"))
for n in (1024,):
  import os; rows = (np.zeros((n, 576), np.float16) if os.environ.get("Z") else np.random.default_rng(0).standard_normal((n, 576)).astype(np.float16)).view(np.uint16)
  q = np.zeros(18 * 1024, np.uint16);
  if os.environ.get('RQ'):
    from pyrt._kernels.attention_mla_amx16 import pack_q16, query_scale
    qq = np.random.default_rng(1).standard_normal((1, 16, 576)).astype(np.float32)
    q = pack_q16(qq, query_scale(qq)).ravel().copy()
    print('qsub', np.mean(((q & 0x7c00) == 0) & ((q & 0x3ff) != 0)))
  st = np.zeros(512, np.float32); vb = np.zeros(16384, np.uint16)
  if A >= 0: rows, q = al(rows, A), al(q, A)
  print('align', rows.ctypes.data % 64, q.ctypes.data % 64)
  pt = al(np.zeros(1024, np.uint16)); acc = al(np.zeros(16 * 512, np.float32)); vb = al(vb); st = al(st)
  for walk, pairs in ((0, 0), (1, 0), (1, 1), (1, 2)):
    run(rows, q, st, cfg, 10, walk, pairs, vb, pt, acc)
    reps = 20000
    t0 = time.perf_counter(); run(rows, q, st, cfg, reps, walk, pairs, vb, pt, acc); dt = time.perf_counter() - t0
    print(n, "walk", walk, "pairs", pairs, "%.1f ns per block" % (dt / reps / 18 * 1e9))
