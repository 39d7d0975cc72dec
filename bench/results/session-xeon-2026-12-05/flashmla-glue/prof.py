"""amx-fp16/d16only.py with phases.py's rdtsc counters printed: cycles per 32-cell tile of the mask, the score steps
(and value-tile pairs, prefetches), the softmax and the value steps. Run with PYTHONPATH at the instrumented copy
and a fresh NUMBA_CACHE_DIR each time (the counters' address is compiled in):
    rm -rf /tmp/nc_prof; AL=1 ONE=1 PYTHONPATH=/tmp/wt_prof NUMBA_CACHE_DIR=/tmp/nc_prof python prof.py 1024 1 fp16 40
ZK=1 / ZQ=1: zero cache rows / unit queries (the tile unit's time barely depends on the data)."""
import os, sys
here = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "amx-fp16")
sys.path.insert(0, here)
src = open(os.path.join(here, "d16only.py")).read()
if os.environ.get("ZK"): src = src.replace("rng.standard_normal((N + 16, R + C))", "np.zeros((N + 16, R + C))")
if os.environ.get("ZQ"): src = src.replace("q = rng.standard_normal((1, H, R + C))", "q = np.ones((1, H, R + C))")
exec(src)
from pyrt._kernels import attention_mla_amx16 as m
P = m.PROF
print("tiles", P[4], "cycles/tile mask %.0f score %.0f softmax %.0f value %.0f" % tuple(P[:4] / max(P[4], 1)))
