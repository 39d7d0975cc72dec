"""The KV cache: per-layer K/V row buffers in the cache type, plus the Cells bookkeeping that indexes them.

Owns the buffers and applies cell plans to them through Numba kernels (pyrt._kernels.kv); the cell
logic itself lives in the Cython pyrt.kv._cells. A layer's V may be absent (K-only caches for MLA).
Imports pyrt._kernels, pyrt.kv.cells and pyrt.errors only.
"""

from __future__ import annotations

import numpy as np

from .._kernels import kv as kvk
from ..errors import InvalidArgumentError, UnsupportedError
from .cells import Cells

# cache type -> (numpy storage dtype, elements per block, bytes per block)
CACHE_TYPES = {
    "f32": (np.float32, 1, 4),
    "f16": (np.float16, 1, 2),
    "bf16": (np.uint16, 1, 2),
    "q8_0": (np.uint8, kvk.QK8_0, kvk.Q8_0_BLOCK_BYTES),
}


def row_bytes(type_name: str, n: int) -> int:
    """Bytes of one row of n values in a cache type (ggml_row_size)."""
    _, blk, nbytes = CACHE_TYPES[type_name]
    return n // blk * nbytes


def _alloc(type_name: str, size: int, n: int, what: str) -> np.ndarray:
    if type_name not in CACHE_TYPES:
        raise UnsupportedError(f"{what}: cache type {type_name!r} is not supported ({', '.join(CACHE_TYPES)})")
    dtype, blk, nbytes = CACHE_TYPES[type_name]
    if n % blk:
        raise InvalidArgumentError(f"{what}: {n} values per row is not a multiple of the {type_name} block ({blk})")
    width = n if blk == 1 else n // blk * nbytes
    return np.zeros((size, width), dtype=dtype)  # [size, row elems or bytes]


def _f32_rows(name: str, a, n_tok: int, n: int) -> np.ndarray:
    if not isinstance(a, np.ndarray) or a.dtype != np.float32 or a.shape != (n_tok, n):
        raise InvalidArgumentError(f"store: {name} must be float32 of shape ({n_tok}, {n}), got "
                                   f"{getattr(a, 'dtype', type(a))} {getattr(a, 'shape', '')}")
    return np.ascontiguousarray(a)


def _store(type_name: str, dst: np.ndarray, cells: np.ndarray, src: np.ndarray) -> None:
    if type_name == "f32":
        kvk.store_rows_f32(dst, cells, src)
    elif type_name == "f16":
        kvk.store_rows_f16(dst.view(np.uint16), cells, src)
    elif type_name == "bf16":
        kvk.store_rows_bf16(dst, cells, src)
    else:
        kvk.store_rows_q8_0(dst, cells, src)


class KVCache:
    """K/V rows of n_layer layers for `size` cells, and the Cells that say which cell holds what.

    k[il]: [size, n_embd_k[il]] f32 | f16 | uint16 (bf16 bits), or [size, n_embd_k[il]/32*34] uint8 (q8_0).
    v[il]: the same for V, or None when the layer has no V (n_embd_v[il] is 0 or None).
    """

    def __init__(self, n_layer: int, size: int, n_embd_k: list[int], n_embd_v: list[int | None],
                 type_k: str = "f16", type_v: str = "f16", n_seq_max: int = 1):
        if n_layer <= 0 or size <= 0:
            raise InvalidArgumentError(f"KVCache: n_layer ({n_layer}) and size ({size}) must be positive")
        if len(n_embd_k) != n_layer or len(n_embd_v) != n_layer:
            raise InvalidArgumentError(f"KVCache: need {n_layer} K and V widths, got {len(n_embd_k)} and {len(n_embd_v)}")
        if any(int(n) <= 0 for n in n_embd_k):
            raise InvalidArgumentError("KVCache: every layer needs a positive K width")
        try:
            self.cells = Cells(size, n_seq_max)
        except ValueError as e:
            raise InvalidArgumentError(f"KVCache: {e}") from None
        self.n_layer = n_layer
        self.size = size
        self.type_k = type_k
        self.type_v = type_v
        self.n_embd_k = [int(n) for n in n_embd_k]
        self.n_embd_v = [int(n) if n else 0 for n in n_embd_v]
        self.k = [_alloc(type_k, size, n, f"K layer {il}") for il, n in enumerate(self.n_embd_k)]
        self.v = [_alloc(type_v, size, n, f"V layer {il}") if n else None for il, n in enumerate(self.n_embd_v)]

    @property
    def n_seq_max(self) -> int:
        return self.cells.n_seq_max

    def store(self, il: int, cell_idx: np.ndarray, k: np.ndarray, v: np.ndarray | None = None) -> None:
        """Write the ubatch's K (and V) rows of layer il into cells cell_idx (from cells.find_slot).

        cell_idx [n_tok] int32, k [n_tok, n_embd_k[il]] f32, v [n_tok, n_embd_v[il]] f32 or None.
        """
        if not 0 <= il < self.n_layer:
            raise InvalidArgumentError(f"store: layer {il} out of range [0, {self.n_layer})")
        cell_idx = np.asarray(cell_idx)
        if cell_idx.ndim != 1 or cell_idx.dtype.kind not in "iu":
            raise InvalidArgumentError(f"store: cell_idx must be a 1-D integer array, got {cell_idx.dtype} {cell_idx.shape}")
        n_tok = cell_idx.shape[0]
        if n_tok and (cell_idx.min() < 0 or cell_idx.max() >= self.size):
            raise InvalidArgumentError(f"store: cell index out of range [0, {self.size})")
        cells = np.ascontiguousarray(cell_idx, dtype=np.int32)
        k = _f32_rows("k", k, n_tok, self.n_embd_k[il])
        if self.v[il] is None:
            if v is not None:
                raise InvalidArgumentError(f"store: layer {il} has no V cache, but V rows were given")
        else:
            if v is None:
                raise InvalidArgumentError(f"store: layer {il} needs V rows")
            v = _f32_rows("v", v, n_tok, self.n_embd_v[il])
        if n_tok == 0:
            return
        _store(self.type_k, self.k[il], cells, k)
        if v is not None:
            _store(self.type_v, self.v[il], cells, v)

    def move_rows(self, src_cells: np.ndarray, dst_cells: np.ndarray) -> None:
        """Copy rows src -> dst in every layer's K and V (apply a defrag move plan; cells metadata moves separately)."""
        src = np.ascontiguousarray(src_cells, dtype=np.int32)
        dst = np.ascontiguousarray(dst_cells, dtype=np.int32)
        if src.ndim != 1 or src.shape != dst.shape:
            raise InvalidArgumentError("move_rows: src and dst must be 1-D of equal length")
        if src.size and (min(src.min(), dst.min()) < 0 or max(src.max(), dst.max()) >= self.size):
            raise InvalidArgumentError(f"move_rows: cell index out of range [0, {self.size})")
        for buf in self.k + self.v:
            if buf is not None:
                kvk.move_rows(buf.view(np.uint8), src, dst)

    def clear(self) -> None:
        """Free all cells and zero the buffers (llama.cpp clears the buffer too)."""
        self.cells.clear()
        for buf in self.k + self.v:
            if buf is not None:
                buf.fill(0)

    def k_bytes(self) -> int:
        return sum(b.nbytes for b in self.k)

    def v_bytes(self) -> int:
        return sum(b.nbytes for b in self.v if b is not None)

    def total_bytes(self) -> int:
        return self.k_bytes() + self.v_bytes()

    def size_report(self) -> str:
        """The size line llama.cpp's llama_kv_cache_init logs (without the function-name prefix)."""
        mib = 1024.0 * 1024.0
        return (f"KV self size  = {self.total_bytes() / mib:7.2f} MiB, K ({self.type_k}): {self.k_bytes() / mib:7.2f} MiB, "
                f"V ({self.type_v}): {self.v_bytes() / mib:7.2f} MiB")

    def size_report_mainline(self) -> str:
        """Current llama.cpp's line (llama_kv_cache ctor, one stream), without the function-name prefix."""
        mib = 1024.0 * 1024.0
        return (f"size = {self.total_bytes() / mib:7.2f} MiB ({self.size:6d} cells, {self.n_layer:3d} layers, "
                f"{self.n_seq_max:2d}/1 seqs), K ({self.type_k}): {self.k_bytes() / mib:7.2f} MiB, "
                f"V ({self.type_v}): {self.v_bytes() / mib:7.2f} MiB")

    def __repr__(self):
        return (f"KVCache(n_layer={self.n_layer}, size={self.size}, type_k={self.type_k!r}, type_v={self.type_v!r}, "
                f"used={self.cells.used})")
