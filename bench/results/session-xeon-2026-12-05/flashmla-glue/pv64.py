"""Value steps per 32 cells: two 32-cell tiles (two accumulator round trips) against one 64-cell step (four P
tiles, one round trip, the same sums): 0.88 -> 0.77 us."""
import os, time, numpy as np
from numba import njit
from numba.extending import intrinsic
from pyrt._kernels.attention_mla_amx16 import p16, load_p2, pv16_2
from pyrt._kernels.attention_mla_amx import config_bytes, _asm_call
from pyrt._kernels.amx import tile_config, tile_release, enable
enable()
load_p4 = intrinsic(_asm_call("mov $$64, %r11\n\ttileloadd ($0,%r11,1), %tmm2\n\ttileloadd ($1,%r11,1), %tmm3\n\ttileloadd ($2,%r11,1), %tmm4\n\ttileloadd ($3,%r11,1), %tmm5", 4))
# pv64_2(c, cs, va0, vb0, va1, vb1): acc blocks c, c+64 += P_a . V_a + P_b . V_b
pv64_2 = intrinsic(_asm_call(
    "mov $$64, %r11\n\t"
    "tileloadd ($0,$1,1), %tmm0\n\t"
    "tileloadd ($2,%r11,1), %tmm6\n\t"
    "tileloadd ($3,%r11,1), %tmm7\n\t"
    "tdpfp16ps %tmm6, %tmm2, %tmm0\n\t"
    "tdpfp16ps %tmm6, %tmm3, %tmm0\n\t"
    "tdpfp16ps %tmm7, %tmm4, %tmm0\n\t"
    "tdpfp16ps %tmm7, %tmm5, %tmm0\n\t"
    "lea 64($0), %r11\n\t"
    "tileloadd (%r11,$1,1), %tmm1\n\t"
    "mov $$64, %r11\n\t"
    "tileloadd ($4,%r11,1), %tmm6\n\t"
    "tileloadd ($5,%r11,1), %tmm7\n\t"
    "tdpfp16ps %tmm6, %tmm2, %tmm1\n\t"
    "tdpfp16ps %tmm6, %tmm3, %tmm1\n\t"
    "tdpfp16ps %tmm7, %tmm4, %tmm1\n\t"
    "tdpfp16ps %tmm7, %tmm5, %tmm1\n\t"
    "tilestored %tmm0, ($0,$1,1)\n\t"
    "lea 64($0), %r11\n\t"
    "tilestored %tmm1, (%r11,$1,1)", 6))
def al(a):
    b = np.empty(a.nbytes + 64, np.uint8); o = (-b.ctypes.data) % 64
    c = b[o:o + a.nbytes].view(a.dtype).reshape(a.shape); c[...] = a; return c
@njit
def run32(st, vb, acc, pt, cfg, reps):
    tile_config(cfg.ctypes.data)
    sp = st.ctypes.data; vbp = vb.ctypes.data; accp = acc.ctypes.data; ptp = pt.ctypes.data
    for r in range(reps):
        for h in range(2):  # two 32-cell tiles
            p16(ptp, sp + h * 2048, 64)
            load_p2(ptp, ptp + 1024)
            for c in range(0, 32, 2):
                pv16_2(accp + c * 64, 2048, vbp + h * 32768 + c * 1024, vbp + h * 32768 + (c + 1) * 1024)
    tile_release()
@njit
def run64(st, vb, acc, pt, cfg, reps):
    tile_config(cfg.ctypes.data)
    sp = st.ctypes.data; vbp = vb.ctypes.data; accp = acc.ctypes.data; ptp = pt.ctypes.data
    for r in range(reps):
        p16(ptp, sp, 64)
        p16(ptp + 2048, sp + 2048, 64)
        load_p4(ptp, ptp + 1024, ptp + 2048, ptp + 3072)
        for c in range(0, 32, 2):
            pv64_2(accp + c * 64, 2048, vbp + c * 1024, vbp + 32768 + c * 1024, vbp + (c + 1) * 1024, vbp + 32768 + (c + 1) * 1024)
    tile_release()
rng = np.random.default_rng(0)
vb = al(rng.standard_normal(32768).astype(np.float16).view(np.uint16))
acc = al(np.zeros(16 * 512, np.float32)); pt = al(np.zeros(2048, np.uint16)); cfg = config_bytes()
st = al(np.exp(-np.abs(rng.standard_normal((64, 16))) * 10).astype(np.float32))
a1 = acc.copy(); 
for f in (run32, run64, run32, run64):
    f(st, vb, acc, pt, cfg, 10)
    t0 = time.perf_counter(); f(st, vb, acc, pt, cfg, 20000); dt = time.perf_counter() - t0
    print(f.__name__, "%.0f ns per 32 cells" % (dt / 20000 / 2 * 1e9))
# same sums?
x = al(np.zeros(16 * 512, np.float32)); y = al(np.zeros(16 * 512, np.float32))
run32(st, vb, x, pt, cfg, 1); run64(st, vb, y, pt, cfg, 1)
print("max rel diff", np.abs(x - y).max() / np.abs(x).max())
