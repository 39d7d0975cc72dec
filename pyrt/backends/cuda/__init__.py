"""The CUDA backend (the optional `cuda` extra: numba-cuda): device detection, `CudaTensor`, weight upload
and the op implementations that `ops` dispatches to for CUDA tensors.

Imports numba.cuda only inside `get()` (and the modules it loads), so a CPU install never needs it.
"""

from __future__ import annotations

import importlib.util
import os

from ...errors import DeviceError

_BACKEND = None


def _simulated() -> bool:
    return os.environ.get("NUMBA_ENABLE_CUDASIM", "0") not in ("", "0")


def get():
    """The process's CUDA backend, created on first use; DeviceError (one line) when it cannot run."""
    global _BACKEND
    if _BACKEND is not None:
        return _BACKEND
    if importlib.util.find_spec("numba_cuda") is None and not _simulated():
        raise DeviceError("device cuda needs the cuda extra (numba-cuda): pip install 'pyrt[cuda]'")
    try:
        from numba import cuda
    except ImportError as e:
        raise DeviceError(f"device cuda: numba.cuda cannot be imported ({e})") from None
    try:
        ok = cuda.is_available()
    except Exception:  # a broken driver install raises instead of answering
        ok = False
    if not ok:
        raise DeviceError("device cuda: no CUDA GPU found (no NVIDIA driver or no device visible to it)")
    from .backend import CudaBackend
    _BACKEND = CudaBackend()
    return _BACKEND
