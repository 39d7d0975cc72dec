"""Streaming 1 GiB in k parallel regions, static halves per region vs items claimed from an atomic counter
(round-robin CH-float chunks). python regions3.py"""
import numpy as np, time, numba, sys
from numba import njit, prange, types
from numba.extending import intrinsic
from llvmlite import ir
@intrinsic
def atomic_add(typingctx, addr, val):
    sig = types.int64(types.int64, types.int64)
    def codegen(context, builder, signature, args):
        ptr = builder.inttoptr(args[0], ir.IntType(64).as_pointer())
        return builder.atomic_rmw('add', ptr, args[1], 'monotonic')
    return sig, codegen
@njit(parallel=True, nogil=True, fastmath=True)
def region(a, lo, hi, out):
    n = hi - lo
    for t in prange(2):
        s = np.float32(0)
        q0 = lo + t * n // 2; q1 = lo + (t + 1) * n // 2
        for i in range(q0, q1):
            s += a[i]
        out[t] += s
CH = 16384
@njit(nogil=True, fastmath=True)
def _sum(a, q0, q1):
    s = np.float32(0)
    for i in range(q0, q1):
        s += a[i]
    return s
@njit(parallel=True, nogil=True, fastmath=True)
def region_dyn(a, lo, hi, out, ctr):
    ctr[0] = 0
    nch = (hi - lo + CH - 1) // CH
    p = ctr.ctypes.data
    for t in prange(2):
        s = np.float32(0)
        while True:
            c = atomic_add(p, 1)
            if c >= nch:
                break
            q0 = lo + c * CH
            q1 = min(q0 + CH, hi)
            s += _sum(a, q0, q1)
        out[t] += s
@njit(nogil=True)
def many(a, k, out):
    n = a.shape[0]
    for j in range(k):
        region(a, j * n // k, (j + 1) * n // k, out)
@njit(nogil=True)
def many_dyn(a, k, out, ctr):
    n = a.shape[0]
    for j in range(k):
        region_dyn(a, j * n // k, (j + 1) * n // k, out, ctr)
a = np.ones(1 << 28, np.float32)  # 1 GiB
out = np.zeros(2, np.float32); ctr = np.zeros(8, np.int64)
many(a, 1, out); many_dyn(a, 1, out, ctr)
numba.set_num_threads(2)
for k in (1, 64, 256, 2048, 8192):
    for nm, f in (("static", lambda: many(a, k, out)), ("dyn", lambda: many_dyn(a, k, out, ctr))):
        best = 1e9
        for r in range(5):
            t0 = time.perf_counter(); f(); dt = time.perf_counter() - t0
            best = min(best, dt)
        print(nm, k, f"{best*1e3:.1f} ms {a.nbytes/best/1e9:.1f} GB/s")
