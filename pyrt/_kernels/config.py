"""Compile-time constants shared by every kernel module, read once at import (leaf; os only).

The kernels bake these into their machine code, so each setting that changes code gets its own Numba
cache directory (CACHE_VARIANT, applied by disk_cache.py).
"""

import os

# No nnan/ninf: attention masks use -inf.
FASTMATH = {"nsz", "arcp", "contract", "afn", "reassoc"}

# PYRT_NO_SIMD=1: portable IR instead of the target's vector intrinsics (a debugging aid; same results
# wherever the summation order is fixed).
NO_SIMD = os.environ.get("PYRT_NO_SIMD", "") not in ("", "0")

CACHE_VARIANT = "no-simd" if NO_SIMD else ""
