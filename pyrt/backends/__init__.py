"""Compute backends behind the `ops` entry points.

The CPU is the default: `ops` validates and calls the Numba kernels. A device backend owns tensors in
its memory (`DeviceTensor`); every `ops` entry point first asks `backend_of(...)` and, for a device
tensor, hands the call to that backend, so models and the runtime run unchanged on any device. A
backend package is imported only when its device is asked for (`get_backend`), so the CPU install never
imports a GPU toolkit. Imports pyrt.errors only (and the chosen backend package on demand).
"""

from __future__ import annotations

from ..errors import InvalidArgumentError

DEVICES = ("cpu", "cuda")


class DeviceTensor:
    """Base of the tensors that live in a backend's memory; `backend` is that backend."""

    __slots__ = ()
    backend = None


def backend_of(*xs):
    """The backend of the first device tensor among xs, or None (all host arrays: the CPU path)."""
    for x in xs:
        if isinstance(x, DeviceTensor):
            return x.backend
    return None


def to_host(x):
    """x as a numpy array (a device tensor is copied back; a numpy array is returned as is)."""
    return x.numpy() if isinstance(x, DeviceTensor) else x


def check_device(device: str) -> str:
    """The canonical device name ('cpu' or 'cuda'); InvalidArgumentError for anything else."""
    d = str(device).lower()
    if d not in DEVICES:
        raise InvalidArgumentError(f"device {device!r} is not supported (choose from {', '.join(DEVICES)})")
    return d


def get_backend(device: str):
    """The backend of a device: None for 'cpu'; for 'cuda' the CUDA backend, or DeviceError when the
    `cuda` extra is not installed or no GPU is present."""
    d = check_device(device)
    if d == "cpu":
        return None
    from .cuda import get as _get_cuda
    return _get_cuda()
