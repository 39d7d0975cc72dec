"""`pyrt bench membw`: this machine's memory read bandwidth, measured with a Numba kernel.

The roofline's denominator: token generation streams the weights and the KV cache once per token, so
its speed is bounded by this number. Imports numba, numpy and pyrt._kernels.membw only.
"""

from __future__ import annotations

import time

import numba
import numpy as np

from .._kernels.membw import N_LANES, sum_chunks_u64
from ..errors import InvalidArgumentError

N_CHUNKS = 64  # fixed, not per thread: the work split (and the checksum) never depends on the thread count


def llc_mib() -> float | None:
    """Size of the last-level cache in MiB from sysfs (None when unknown)."""
    import glob
    best = None
    for path in glob.glob("/sys/devices/system/cpu/cpu0/cache/index*/size"):
        try:
            with open(path) as f:
                txt = f.read().strip()
        except OSError:
            continue
        mult = {"K": 1 / 1024, "M": 1.0, "G": 1024.0}.get(txt[-1:].upper())
        if mult is None:
            continue
        v = float(txt[:-1]) * mult
        best = v if best is None or v > best else best
    return best


def default_size_mib() -> int:
    """4x the last-level cache (some server CPUs have hundreds of MiB), within [512, 4096] MiB."""
    llc = llc_mib() or 32.0
    return int(min(4096, max(512, 4 * llc)))


def measure_membw(size_mib: int | None = None, n_threads: int | None = 2, reps: int = 5) -> float:
    """Best-of-`reps` read bandwidth in GB/s (1e9 bytes/s) of summing a `size_mib` MiB buffer.

    The buffer must be several times the last-level cache, or this measures the cache: size_mib=None
    picks 4x the LLC (at least 512 MiB, at most 4 GiB).
    """
    if size_mib is None:
        size_mib = default_size_mib()
    if size_mib <= 0 or reps <= 0:
        raise InvalidArgumentError(f"membw: size_mib and reps must be positive, got {size_mib}, {reps}")
    max_t = numba.config.NUMBA_NUM_THREADS
    n_threads = max_t if not n_threads or n_threads <= 0 else n_threads
    if n_threads > max_t:
        raise InvalidArgumentError(f"membw: {n_threads} threads exceeds the {max_t} Numba was started with")
    unit = N_CHUNKS * N_LANES
    n = max(unit, (size_mib * 2**20 // 8) // unit * unit)
    src = np.ones(n, dtype=np.uint64)  # [n] u64, written once so every page is resident
    dst = np.zeros(N_CHUNKS, dtype=np.uint64)  # [N_CHUNKS] u64
    old = numba.get_num_threads()
    numba.set_num_threads(n_threads)
    try:
        sum_chunks_u64(dst, src[:unit])  # compile / load from cache outside the timing
        best = float("inf")
        for _ in range(reps):
            t0 = time.perf_counter()
            sum_chunks_u64(dst, src)
            best = min(best, time.perf_counter() - t0)
    finally:
        numba.set_num_threads(old)
    if int(dst.sum()) != n:  # every element was read exactly once
        raise RuntimeError(f"membw: checksum {int(dst.sum())} != {n}")
    return src.nbytes / best / 1e9
