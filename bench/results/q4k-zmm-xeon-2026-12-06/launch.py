"""The cost of an empty prange(2) region called from jitted code (launch + join). python launch.py"""
import llvmlite.binding as llb; llb.initialize_native_asmparser()
import numpy as np, time, numba
from numba import njit, prange
@njit(parallel=True, nogil=True)
def region(out):
    for t in prange(2):
        out[t] += 1.0
@njit(nogil=True)
def many(k, out):
    for j in range(k):
        region(out)
out = np.zeros(2)
many(10, out)
numba.set_num_threads(2)
for r in range(3):
    t0 = time.perf_counter(); many(100000, out); dt = time.perf_counter() - t0
    print(f"{dt/100000*1e6:.2f} us per empty region")
