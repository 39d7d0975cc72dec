"""Registry of the tensor block formats pyrt reads: ggml type id, block geometry, activation dot type, kernels.

Importing this module compiles nothing: kernels are looked up by name in their _kernels module
on first use. Imports pyrt.errors (and gguf for the type ids) only.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

from gguf import GGMLQuantizationType as _T

from ..errors import InvalidArgumentError, UnsupportedError

_Q8_0_FAMILY = "pyrt._kernels.matmul_q8_0"
_KQUANT = "pyrt._kernels.quants_k"


@dataclass(frozen=True)
class QType:
    """One block format. A row of n values takes n / block_size * type_size bytes.

    dot_type is the format the activations are converted to for the integer/half dot products
    (None: plain f32). Kernels live in `module` as dequant_rows_<x>, matmul_<x> (x = name.lower()).
    """

    name: str
    ggml_type: int
    block_size: int
    type_size: int
    dot_type: str | None
    module: str = _Q8_0_FAMILY

    @property
    def code(self) -> int:
        """The kernels' `kind` for this format (pyrt._kernels.codes)."""
        return getattr(importlib.import_module("pyrt._kernels.codes"), self.name)

    @property
    def suffix(self) -> str:
        return self.name.lower()

    def row_bytes(self, n: int) -> int:
        if n <= 0 or n % self.block_size:
            raise InvalidArgumentError(
                f"{self.name}: a row of {n} values is not a positive multiple of the block size {self.block_size}")
        return n // self.block_size * self.type_size

    def kernel(self, op: str):
        """The Numba kernel `<op>_<type>` (e.g. op='matmul' or 'dequant_rows'); imported on first use."""
        fn = _KERNEL_CACHE.get((self.name, op))
        if fn is None:
            fn = _KERNEL_CACHE[(self.name, op)] = self._lookup(op)
        return fn

    def _lookup(self, op: str):
        try:
            mod = importlib.import_module(self.module)
        except ImportError as e:
            raise UnsupportedError(f"kernels for tensor type {self.name} are not available ({e})") from None
        fn = getattr(mod, f"{op}_{self.suffix}", None)
        if fn is None:
            raise UnsupportedError(f"tensor type {self.name} has no {op} kernel")
        return fn


_KERNEL_CACHE: dict[tuple[str, str], object] = {}  # the lookup runs once per (type, op), not per call

SUPPORTED_TYPES: dict[int, QType] = {q.ggml_type: q for q in (
    QType("F32", int(_T.F32), 1, 4, None),
    QType("F16", int(_T.F16), 1, 2, "F16"),
    QType("BF16", int(_T.BF16), 1, 2, "BF16"),
    QType("Q8_0", int(_T.Q8_0), 32, 34, "Q8_0"),
    QType("Q4_0", int(_T.Q4_0), 32, 18, "Q8_0"),
    QType("Q5_0", int(_T.Q5_0), 32, 22, "Q8_0"),
    QType("Q4_K", int(_T.Q4_K), 256, 144, "Q8_K", _KQUANT),
    QType("Q5_K", int(_T.Q5_K), 256, 176, "Q8_K", _KQUANT),
    QType("Q6_K", int(_T.Q6_K), 256, 210, "Q8_K", _KQUANT),
)}

# Activation formats (not weight formats): only quantize_rows_<x> is used from them.
DOT_TYPES: dict[str, QType] = {
    "Q8_0": SUPPORTED_TYPES[int(_T.Q8_0)],
    "Q8_K": QType("Q8_K", int(_T.Q8_K), 256, 292, None, _KQUANT),
}


def _type_name(ggml_type: int) -> str:
    try:
        return _T(ggml_type).name
    except ValueError:
        return f"#{ggml_type}"


def get_qtype(ggml_type: int) -> QType:
    """The QType for a ggml type id; UnsupportedError for the others."""
    q = SUPPORTED_TYPES.get(int(ggml_type))
    if q is None:
        names = ", ".join(t.name for t in SUPPORTED_TYPES.values())
        raise UnsupportedError(f"tensor type {_type_name(ggml_type)} is not supported (supported: {names})")
    return q


def row_bytes(ggml_type: int, n: int) -> int:
    """Bytes of one row of n values; InvalidArgumentError if n is not a multiple of the block size."""
    return get_qtype(ggml_type).row_bytes(n)
