"""The reference block decoders and conversions compiled as CUDA device functions (one definition for
CPU oracle and GPU): `dev.value_q4_k(src, blk, i)`, `dev.VALUE["Q4_K"]`, `dev.f16_bits_to_f32(h)`."""

from numba import cuda

from .. import reference

dev = reference.specialise(lambda f: cuda.jit(device=True)(f))
