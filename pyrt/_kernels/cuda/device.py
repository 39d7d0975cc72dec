"""The reference block decoders and conversions compiled as CUDA device functions (one definition for
the CPU oracle and the GPU): module globals `value_q4_k(src, blk, i)`, `f16_bits_to_f32(h)`, ... and the
tables VALUE / DECODE_BLOCK by type name. Kernels use them as `device.value_q4_k` (a module attribute,
which Numba resolves at compile time).

In the CUDA simulator they stay plain Python functions: the simulator runs kernels as Python anyway, and
its device-function wrapper costs ~40 us a call, which the decoders (a few nested calls per weight value)
would pay millions of times; it also swaps the module's `cuda` global on every call, which races between
the threads of a block. `device_function` is the decorator the kernel modules use for their own helpers.
"""

import os
import sys
import threading

import numpy as np
from numba import cuda

from .. import reference

SIMULATOR = os.environ.get("NUMBA_ENABLE_CUDASIM", "0") not in ("", "0")


def _serialise_simulator_shared_arrays():
    """Make the simulator's `cuda.shared.array` one array per call site for all threads of a block.

    The simulator (numba-cuda 0.30) keys a block's shared arrays by the caller's file and line and
    creates a missing one with an unlocked check-then-set: when two threads of a block reach the line
    together, both create an array and they no longer share it, so a shared-memory reduction silently
    sums the wrong values. Here the lookup and the creation happen under one lock.
    """
    from numba.cuda.simulator.kernelapi import FakeCUDAShared
    from numba.cuda import types
    from numba.cuda.np import numpy_support

    if getattr(FakeCUDAShared.array, "_pyrt_locked", False):
        return
    original = FakeCUDAShared.array
    lock = threading.Lock()

    def array(self, shape, dtype, alignment=None):
        if shape == 0 or alignment is not None:  # dynamic shared memory has no call-site key
            return original(self, shape, dtype, alignment)
        if isinstance(dtype, types.Type):
            dtype = numpy_support.as_dtype(dtype)
        caller = sys._getframe(1)
        key = (caller.f_code.co_filename, caller.f_lineno)
        with lock:
            res = self._allocations.get(key)
            if res is None:
                res = self._allocations[key] = np.empty(shape, dtype)
        return res

    array._pyrt_locked = True
    FakeCUDAShared.array = array


if SIMULATOR:
    _serialise_simulator_shared_arrays()

    def device_function(f):
        return f
else:
    def device_function(f):
        return cuda.jit(device=True)(f)

_ns = reference.specialise(device_function)
globals().update(vars(_ns))
