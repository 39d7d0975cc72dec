"""`CudaTensor`: a C-contiguous array in GPU memory with the small numpy surface the models use.

Models run unchanged on it: `shape`, `dtype`, `reshape`, `x += y` (y a tensor, or a host bias row that
is uploaded once), `x *= s`, `x[rows]` (row gather), `np.empty_like(x)` (through numpy's
`__array_function__`). Anything else numpy would need the host for raises TypeError instead of copying
silently; `numpy()` copies back explicitly.
"""

from __future__ import annotations

import math

import numpy as np

from .. import DeviceTensor


class CudaTensor(DeviceTensor):
    __slots__ = ("a", "backend", "host", "_flat")

    def __init__(self, a, backend, host: np.ndarray | None = None):
        self.a = a              # numba DeviceNDArray (C-contiguous)
        self.backend = backend
        self.host = host        # the host array it was uploaded from, when there is one (validation)
        self._flat = None

    # -- numpy-like surface ---------------------------------------------------------------------
    @property
    def shape(self) -> tuple:
        return tuple(self.a.shape)

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self.a.dtype)

    @property
    def ndim(self) -> int:
        return len(self.a.shape)

    @property
    def size(self) -> int:
        return int(math.prod(self.a.shape))

    @property
    def nbytes(self) -> int:
        return self.size * self.dtype.itemsize

    @property
    def flat(self):
        """The same memory as a 1-D DeviceNDArray (what elementwise kernels take)."""
        if self._flat is None:
            self._flat = self.a.reshape(self.size) if self.ndim != 1 else self.a
        return self._flat

    def __len__(self) -> int:
        return self.shape[0]

    def reshape(self, *shape) -> "CudaTensor":
        if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
            shape = tuple(shape[0])
        shape = tuple(int(s) for s in shape)
        if shape.count(-1) == 1:
            known = math.prod(s for s in shape if s != -1)
            shape = tuple(self.size // known if s == -1 else s for s in shape)
        if math.prod(shape) != self.size:
            raise ValueError(f"cannot reshape a device tensor of size {self.size} into {shape}")
        return CudaTensor(self.a.reshape(shape), self.backend)

    def numpy(self) -> np.ndarray:
        return self.a.copy_to_host()

    def __array__(self, *args, **kwargs):
        raise TypeError("a CUDA tensor is not copied to the host implicitly: call .numpy() (pyrt.backends.to_host)")

    def __array_function__(self, func, types, args, kwargs):
        if func is np.empty_like and not kwargs.get("shape"):
            dtype = kwargs.get("dtype") or (args[1] if len(args) > 1 else None) or self.dtype
            return self.backend.empty(self.shape, dtype)
        return NotImplemented

    def __iadd__(self, other):
        self.backend.add_(self, other)
        return self

    def __imul__(self, s):
        self.backend.scale_(self, s)
        return self

    def __getitem__(self, idx):
        if isinstance(idx, np.ndarray) and idx.dtype.kind in "iu" and idx.ndim == 1:
            return self.backend.take_rows(self, idx)
        if isinstance(idx, slice) and idx.step in (None, 1):
            return CudaTensor(self.a[idx], self.backend)
        raise TypeError(f"CUDA tensors support row gathers and row slices only, got {type(idx).__name__}")

    def fill(self, value) -> None:
        self.backend.fill_(self, value)

    def __repr__(self) -> str:
        return f"CudaTensor(shape={self.shape}, dtype={self.dtype})"
