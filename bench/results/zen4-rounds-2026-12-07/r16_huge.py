"""huge(shape): a uint8 array in private anonymous memory with MADV_HUGEPAGE, 2 MiB aligned (as pyrt reads weights)."""
import mmap

import numpy as np


def huge(shape):
    n = int(np.prod(shape))
    mm = mmap.mmap(-1, n + (2 << 20), flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    mm.madvise(mmap.MADV_HUGEPAGE)
    a = np.frombuffer(mm, np.uint8)
    off = (-a.ctypes.data) % (2 << 20)
    return a[off:off + n].reshape(shape)
