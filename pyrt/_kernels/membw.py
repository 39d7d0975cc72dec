"""Memory read bandwidth kernel for `pyrt bench membw` (the roofline's denominator).

Leaf module: numpy and numba only. The array is split into a fixed number of chunks (not one per
thread), each summed into its own slot, so the result never depends on the thread count.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from .config import FASTMATH

N_LANES = 8  # independent accumulators per chunk, so the loop is bound by loads, not by the add chain


@njit(cache=True, nogil=True, fastmath=FASTMATH)
def _sum_chunk_u64(src, i0, i1):
    """Wrapping sum of src[i0:i1] (uint64) with N_LANES accumulators; i1 - i0 a multiple of N_LANES."""
    acc = np.zeros(N_LANES, dtype=np.uint64)  # [N_LANES] u64
    for i in range(i0, i1, N_LANES):
        for j in range(N_LANES):
            acc[j] += src[i + j]
    s = np.uint64(0)
    for j in range(N_LANES):
        s += acc[j]
    return s


@njit(cache=True, nogil=True, fastmath=FASTMATH, parallel=True)
def sum_chunks_u64(dst, src):
    """dst[c] = wrapping sum of chunk c of src; reads every byte of src once.

    dst [n_chunks] u64; src [n] u64 C-contiguous, n a multiple of n_chunks * N_LANES.
    """
    n_chunks = dst.shape[0]
    chunk = src.shape[0] // n_chunks
    for c in prange(n_chunks):
        dst[c] = _sum_chunk_u64(src, c * chunk, (c + 1) * chunk)
