"""The reference block decoders and conversions compiled as CUDA device functions (one definition for
the CPU oracle and the GPU): module globals `value_q4_k(src, blk, i)`, `f16_bits_to_f32(h)`, ... and the
tables VALUE / DECODE_BLOCK by type name. Kernels use them as `device.value_q4_k` (a module attribute,
which Numba resolves at compile time).

In the CUDA simulator they stay plain Python functions: the simulator runs kernels as Python anyway, and
its device-function wrapper costs ~40 us a call, which the decoders (a few nested calls per weight value)
would pay millions of times.
"""

import os

from numba import cuda

from .. import reference

if os.environ.get("NUMBA_ENABLE_CUDASIM", "0") not in ("", "0"):
    _ns = reference.specialise(lambda f: f)
else:
    _ns = reference.specialise(lambda f: cuda.jit(device=True)(f))
globals().update(vars(_ns))
