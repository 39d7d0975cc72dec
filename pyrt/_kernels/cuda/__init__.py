"""CUDA kernels (numba-cuda): the GPU siblings of the CPU kernels, for the optional `cuda` extra.

A leaf like the CPU kernels: imports numba.cuda, numpy, math, `pyrt._kernels.reference` and `pyrt._kernels.codes` only. Block
decoding comes from the scalar reference decoders compiled as device functions (`device.py`); per-type
kernels are made by factories over them. Reductions use shared memory, so every kernel also runs in
the CUDA simulator (NUMBA_ENABLE_CUDASIM=1); `ptx.py` lists every kernel with its signatures for
`compile_ptx` checks without a GPU.
"""
