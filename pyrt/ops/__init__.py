"""Validated entry points to the kernels: check shapes/dtypes/ranges, pick the kernel, call it.

Numba kernels have no bounds checks, so nothing reaches them without passing through here.
"""
