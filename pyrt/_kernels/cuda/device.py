"""The reference block decoders and conversions compiled as CUDA device functions (one definition for
the CPU oracle and the GPU): module globals `value_q4_k(src, blk, i)`, `f16_bits_to_f32(h)`, ... and the
tables VALUE / DECODE_BLOCK by type name. Kernels use them as `device.value_q4_k` (a module attribute,
which Numba resolves at compile time)."""

from numba import cuda

from .. import reference

_ns = reference.specialise(lambda f: cuda.jit(device=True)(f))
globals().update(vars(_ns))
