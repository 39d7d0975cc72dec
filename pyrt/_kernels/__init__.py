"""Numba kernels: pure array functions. A leaf layer: imports only numpy, numba and sibling kernel modules."""
