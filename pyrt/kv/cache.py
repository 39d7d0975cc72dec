"""The KV cache: per-layer K/V row buffers in the cache type, plus the Cells bookkeeping that indexes them.

Owns the buffers and applies cell plans to them through Numba kernels (pyrt._kernels.kv): stores,
defrag moves, the K-shift (re-rotation after seq_add/seq_div). The cell logic lives in the Cython
pyrt.kv._cells. A layer's V may be absent (K-only caches for MLA). Imports pyrt._kernels,
pyrt.kv.cells and pyrt.errors only.
"""

from __future__ import annotations

import numpy as np

from .._kernels import kv as kvk
from .._kernels import rope as ropek
from .._kernels import yarn as yarnk
from ..errors import InvalidArgumentError, UnsupportedError
from ..formats.cache_types import CACHE_TYPES
from ..ops.attention import rows_view
from .cells import Cells

# ggml / ik_llama.cpp type ids (recorded in state files) and the kernels' codes, from the one table
GGML_TYPE_ID = {c.name: c.ggml_type for c in CACHE_TYPES.values()}
KIND = {c.name: c.code for c in CACHE_TYPES.values()}
ROPE_NEOX = 2  # ggml's LLAMA_ROPE_TYPE_NEOX (pyrt.ops.basic.ROPE_NEOX)


def row_bytes(type_name: str, n: int, seg: int | None = None) -> int:
    """Bytes of one cache row of n values (ggml_row_size); q8_KV: n/seg segments of 8 + seg bytes."""
    if type_name == "q8_KV":
        seg = n if seg is None else seg
        return n // seg * (CACHE_TYPES["q8_KV"].type_size + seg)
    ct = CACHE_TYPES[type_name]
    return n // ct.block_size * ct.type_size


LINE = 64  # cache rows start on a cache line where their width allows: tile and vector loads then split no line


def _zeros_lined(shape: tuple, dtype) -> np.ndarray:
    """np.zeros(shape, dtype) whose data starts on a LINE-byte boundary (numpy's large arrays start 16 bytes
    past one)."""
    dtype = np.dtype(dtype)
    nbytes = int(np.prod(shape)) * dtype.itemsize
    buf = np.zeros(nbytes + LINE, np.uint8)
    off = -buf.ctypes.data % LINE
    return buf[off:off + nbytes].view(dtype).reshape(shape)


def _alloc(type_name: str, size: int, n: int, seg: int, what: str) -> np.ndarray:
    if type_name not in CACHE_TYPES:
        raise UnsupportedError(f"{what}: cache type {type_name!r} is not supported ({', '.join(CACHE_TYPES)})")
    ct = CACHE_TYPES[type_name]
    dtype, blk, nbytes = np.dtype(ct.dtype), ct.block_size, ct.type_size
    if type_name == "q8_KV":
        if seg <= 0 or n % seg:
            raise InvalidArgumentError(f"{what}: {n} values per row is not a multiple of the q8_KV row length {seg}")
        return _zeros_lined((size, row_bytes(type_name, n, seg)), dtype)  # [size, row bytes]
    if n % blk:
        raise InvalidArgumentError(f"{what}: {n} values per row is not a multiple of the {type_name} block ({blk})")
    width = n if blk == 1 else n // blk * nbytes
    return _zeros_lined((size, width), dtype)  # [size, row elems or bytes]


def _per_layer(v, n_layer: int, default: list[int], what: str) -> list[int]:
    if v is None:
        return list(default)
    vals = [int(v)] * n_layer if np.isscalar(v) else [int(x) if x else 0 for x in v]
    if len(vals) != n_layer:
        raise InvalidArgumentError(f"KVCache: need {n_layer} values for {what}, got {len(vals)}")
    return vals


def _f32_rows(name: str, a, n_tok: int, n: int) -> np.ndarray:
    if not isinstance(a, np.ndarray) or a.dtype != np.float32 or a.shape != (n_tok, n):
        raise InvalidArgumentError(f"store: {name} must be float32 of shape ({n_tok}, {n}), got "
                                   f"{getattr(a, 'dtype', type(a))} {getattr(a, 'shape', '')}")
    return np.ascontiguousarray(a)


def _store(type_name: str, dst: np.ndarray, cells: np.ndarray, src: np.ndarray, seg: int) -> None:
    if type_name == "f32":
        kvk.store_rows_f32(dst, cells, src)
    elif type_name == "f16":
        kvk.store_rows_f16(dst.view(np.uint16), cells, src)
    elif type_name == "bf16":
        kvk.store_rows_bf16(dst, cells, src)
    elif type_name == "q8_0":
        kvk.store_rows_q8_0(dst, cells, src)
    else:
        kvk.store_rows_q8_kv(dst, cells, src, seg)


class KVCache:
    """K/V rows of n_layer layers for `size` cells, and the Cells that say which cell holds what.

    k[il]: [size, n_embd_k[il]] f32 | f16 | uint16 (bf16 bits), [size, n_embd_k[il]/32*34] uint8 (q8_0),
           or [size, n_embd_k[il]/head_dim_k*(8+head_dim_k)] uint8 (q8_KV: one scale per head row, as ik).
    v[il]: the same for V, or None when the layer has no V (n_embd_v[il] is 0 or None).
    head_dim_k/v: values per head (int or per layer; default the whole row, i.e. one head): the K-shift
    rotates each head, and q8_KV keeps one scale per head.
    backend: None for host buffers; a device backend (pyrt.backends) allocates the buffers in its memory
    (flat bytes [size, row bytes] in the same row formats) and runs store and moves there.
    """

    def __init__(self, n_layer: int, size: int, n_embd_k: list[int], n_embd_v: list[int | None],
                 type_k: str = "f16", type_v: str = "f16", n_seq_max: int = 1,
                 head_dim_k: int | list[int] | None = None, head_dim_v: int | list[int] | None = None,
                 backend=None):
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
        self.head_dim_k = _per_layer(head_dim_k, n_layer, self.n_embd_k, "head_dim_k")
        self.head_dim_v = _per_layer(head_dim_v, n_layer, self.n_embd_v, "head_dim_v")
        for il in range(n_layer):
            for what, n, hd in (("K", self.n_embd_k[il], self.head_dim_k[il]),
                                ("V", self.n_embd_v[il], self.head_dim_v[il])):
                if n and (hd <= 0 or n % hd):
                    raise InvalidArgumentError(f"KVCache: {what} layer {il}: width {n} is not a multiple of "
                                               f"head_dim {hd}")
        # q8_KV segment length (values per scale) per layer; 1 (unused) for the other types
        self.seg_k = [hd if type_k == "q8_KV" else 1 for hd in self.head_dim_k]
        self.seg_v = [hd if type_v == "q8_KV" else 1 for hd in self.head_dim_v]
        self.backend = backend
        alloc = _alloc if backend is None else self._alloc_device
        self.k = [alloc(type_k, size, n, self.seg_k[il], f"K layer {il}") for il, n in enumerate(self.n_embd_k)]
        self.v = [alloc(type_v, size, n, self.seg_v[il], f"V layer {il}") if n else None
                  for il, n in enumerate(self.n_embd_v)]

    def _alloc_device(self, type_name: str, size: int, n: int, seg: int, what: str):
        host_like = _alloc(type_name, 1, n, seg, what)  # validates type and width like the host buffers
        return self.backend.kv_alloc(type_name, size, host_like.nbytes)

    def require_host(self, what: str) -> None:
        """DeviceError when the buffers live on a device (for operations that have no device kernels yet)."""
        if self.backend is not None:
            from ..errors import DeviceError
            raise DeviceError(f"{what} is not supported for a KV cache on device {self.backend.name}")

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
        if self.backend is not None:
            self._store_device(il, cells, k, v)
            return
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
        _store(self.type_k, self.k[il], cells, k, self.seg_k[il])
        if v is not None:
            _store(self.type_v, self.v[il], cells, v, self.seg_v[il])

    def _store_device(self, il: int, cells: np.ndarray, k, v) -> None:
        n_tok = cells.shape[0]
        for name, rows, n in (("k", k, self.n_embd_k[il]), ("v", v, self.n_embd_v[il])):
            if rows is None:
                continue
            if getattr(rows, "shape", None) != (n_tok, n) or getattr(rows, "dtype", None) != np.float32:
                raise InvalidArgumentError(f"store: {name} must be float32 of shape ({n_tok}, {n}), got "
                                           f"{getattr(rows, 'dtype', type(rows))} {getattr(rows, 'shape', '')}")
        if (self.v[il] is None) != (v is None):
            raise InvalidArgumentError(f"store: layer {il} " + ("has no V cache, but V rows were given"
                                                                if v is not None else "needs V rows"))
        self.backend.kv_store(self.k[il], self.type_k, cells, k)
        if v is not None:
            self.backend.kv_store(self.v[il], self.type_v, cells, v)

    def move_rows(self, src_cells: np.ndarray, dst_cells: np.ndarray) -> None:
        """Copy rows src -> dst in every layer's K and V (apply a defrag move plan; cells metadata moves separately)."""
        src = np.ascontiguousarray(src_cells, dtype=np.int32)
        dst = np.ascontiguousarray(dst_cells, dtype=np.int32)
        if src.ndim != 1 or src.shape != dst.shape:
            raise InvalidArgumentError("move_rows: src and dst must be 1-D of equal length")
        if src.size and (min(src.min(), dst.min()) < 0 or max(src.max(), dst.max()) >= self.size):
            raise InvalidArgumentError(f"move_rows: cell index out of range [0, {self.size})")
        for buf in self.k + self.v:
            if buf is None:
                continue
            if self.backend is not None:
                self.backend.kv_move(buf, src, dst)
            else:
                kvk.move_rows(buf.view(np.uint8), src, dst)

    def defrag(self, max_moves: int = -1) -> int:
        """Compact the used cells into [0, used) (llama.cpp's plan, §6); returns the number of rows moved.

        The Cython cells plan the moves and update their metadata; the rows of every layer's K and V
        (when present), in every cache type, follow. Sources and destinations never overlap.
        """
        src, dst = self.cells.defrag_plan(max_moves)
        if src.shape[0]:
            self.move_rows(src, dst)
        return int(src.shape[0])

    def k_shift(self, rope: list, rope_offset: int = 0) -> int:
        """Re-rotate the cached K rows by each cell's accumulated position delta, then reset the deltas.

        rope[il] = (n_rot, freq_base, freq_scale, freq_factors or None, mode[, yarn]) for layer il (mode
        ROPE_NEOX rotates halves, else adjacent pairs); yarn = (ext_factor, corr_low, corr_high) takes
        ggml's YaRN angles (deepseek2), at magnitude 1 as llama.cpp's shift does (the cached rows already
        carry the model's mscale). Each head of head_dim_k values has its rope part at
        rope_offset (MLA: one 576-wide head whose 64 rope values sit at a column offset). Quantized rows
        are dequantized, rotated and requantized. Returns the number of cells rotated.
        """
        self.require_host("the K-shift (context shift, seq_add/seq_div)")
        if len(rope) != self.n_layer:
            raise InvalidArgumentError(f"k_shift: need RoPE parameters for {self.n_layer} layers, got {len(rope)}")
        pos, _, delta = self.cells.pos_array(), self.cells.seq_array(), self.cells.delta_array()
        idx = np.flatnonzero((pos >= 0) & (delta != 0)).astype(np.int32)
        if idx.shape[0]:
            d = np.ascontiguousarray(delta[idx], dtype=np.int32)
            tables = {}
            for il in range(self.n_layer):
                n_rot, base, scale, factors, mode = rope[il][:5]
                yarn = tuple(float(v) for v in rope[il][5]) if len(rope[il]) > 5 and rope[il][5] else None
                n_rot, hd = int(n_rot), self.head_dim_k[il]
                if n_rot <= 0 or n_rot % 2 or rope_offset < 0 or rope_offset + n_rot > hd:
                    raise InvalidArgumentError(f"k_shift: layer {il}: {n_rot} rope dims at offset {rope_offset} "
                                               f"do not fit heads of {hd}")
                ff = np.ones(n_rot // 2, np.float32) if factors is None else \
                    np.ascontiguousarray(factors, dtype=np.float32)
                if ff.shape != (n_rot // 2,):
                    raise InvalidArgumentError(f"k_shift: layer {il}: freq_factors must have {n_rot // 2} values")
                key = (n_rot, float(base), float(scale), ff.tobytes(), yarn)
                if key not in tables:
                    cos = np.empty((idx.shape[0], n_rot // 2), np.float32)  # [m, n_rot/2]
                    sin = np.empty_like(cos)
                    if yarn is None:
                        ropek.rope_cache_f32(cos, sin, d, float(base), float(scale), ff)
                    else:
                        if factors is not None:
                            raise InvalidArgumentError(f"k_shift: layer {il}: YaRN with freq_factors is not supported")
                        yarnk.rope_cache_yarn_f32(cos, sin, d, float(base), float(scale), yarn[0], yarn[1],
                                                  yarn[2], 1.0)
                    tables[key] = (cos, sin)
                cos, sin = tables[key]
                kvk.kshift_rows(rows_view(self.k[il], self.type_k), KIND[self.type_k], self.seg_k[il],
                                self.n_embd_k[il], idx, cos, sin, self.n_embd_k[il] // hd, hd, int(rope_offset),
                                1 if int(mode) == ROPE_NEOX else 0)
        self.cells.reset_shift()
        return int(idx.shape[0])

    def k_values(self, il: int, cells) -> np.ndarray:
        """Dequantized K rows of layer il for the given cells: [m, n_embd_k[il]] f32."""
        self.require_host("reading K rows back")
        c = np.ascontiguousarray(cells, dtype=np.int32)
        out = np.empty((c.shape[0], self.n_embd_k[il]), np.float32)
        kvk.dequant_rows(out, rows_view(self.k[il], self.type_k), KIND[self.type_k], self.seg_k[il], c)
        return out

    def v_values(self, il: int, cells) -> np.ndarray | None:
        """Dequantized V rows of layer il ([m, n_embd_v[il]] f32), None for a layer without V."""
        if self.v[il] is None:
            return None
        self.require_host("reading V rows back")
        c = np.ascontiguousarray(cells, dtype=np.int32)
        out = np.empty((c.shape[0], self.n_embd_v[il]), np.float32)
        kvk.dequant_rows(out, rows_view(self.v[il], self.type_v), KIND[self.type_v], self.seg_v[il], c)
        return out

    def row_bytes_k(self, il: int) -> int:
        return self.k[il].nbytes // self.size

    def row_bytes_v(self, il: int) -> int:
        return 0 if self.v[il] is None else self.v[il].nbytes // self.size

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
