"""The KV cache formats: the one list the CLI, the runtime, the cache and the bench take their choices from.

Each row: the name as the CLI spells it (llama.cpp's -ctk/-ctv), the ggml type id recorded in state files, the
block geometry, the numpy dtype of the cache rows, and whether llama.cpp mainline has it. The kernels' integer
code comes from pyrt._kernels.codes on first use, so importing this module stays cheap (no numba, no gguf).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass


@dataclass(frozen=True)
class CacheType:
    """One cache row format. block_size 0: blocks are segments of one head's values plus a header (q8_KV)."""

    name: str
    ggml_type: int
    block_size: int
    type_size: int
    dtype: str
    in_llama_cpp: bool = True

    @property
    def code(self) -> int:
        """The kernels' `kind` for this format (pyrt._kernels.codes)."""
        return getattr(importlib.import_module("pyrt._kernels.codes"), self.name.upper())


CACHE_TYPES: dict[str, CacheType] = {c.name: c for c in (
    CacheType("f32", 0, 1, 4, "float32"),
    CacheType("f16", 1, 1, 2, "float16"),
    CacheType("bf16", 30, 1, 2, "uint16"),
    CacheType("q8_0", 8, 32, 34, "uint8"),
    CacheType("q8_KV", 151, 0, 8, "uint8", in_llama_cpp=False),  # type_size: the per-segment header
)}
CACHE_TYPE_NAMES = tuple(CACHE_TYPES)
# the formats llama.cpp mainline offers too (the bench runs both engines on them)
LLAMA_CPP_CACHE_TYPES = tuple(c.name for c in CACHE_TYPES.values() if c.in_llama_cpp)
