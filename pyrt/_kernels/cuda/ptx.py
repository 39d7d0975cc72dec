"""Compiling kernels to PTX without a GPU: the registry of (kernel, signatures) and the compile call.

numba-cuda asks the current device for its compute capability when a kernel calls a device function;
`compile_for(cc)` answers for the target instead, so typing and lowering of every real code path are
checked on machines without a driver.
"""

from __future__ import annotations

import contextlib
import types as _pytypes

from numba import cuda

# name -> (python function of the kernel, [numba signature tuples]); filled by the kernel modules
REGISTRY: dict[str, tuple[object, list[tuple]]] = {}


def register(name: str, kernel, *signatures: tuple) -> None:
    REGISTRY[name] = (getattr(kernel, "py_func", kernel), list(signatures))


@contextlib.contextmanager
def _target_device(cc: tuple[int, int]):
    import numba.cuda.compiler as comp
    import numba.cuda.dispatcher as disp
    fake = _pytypes.SimpleNamespace(compute_capability=cc)
    saved = disp.get_current_device, comp.get_current_device
    disp.get_current_device = comp.get_current_device = lambda: fake
    try:
        yield
    finally:
        disp.get_current_device, comp.get_current_device = saved


def compile_for(fn, sig: tuple, cc: tuple[int, int], device: bool = False) -> str:
    """PTX of fn (a plain Python function, or a kernel's py_func) for argument types sig on target cc."""
    with _target_device(cc):
        ptx, _ = cuda.compile_ptx(fn, sig, device=device, cc=cc)
    return ptx
