"""Attention over the KV cache: validate shapes/dtypes/ranges, pick tiles, call the flash-attention kernel.

Imports pyrt._kernels and pyrt.errors; takes the cache duck-typed (k, v, type_k, type_v, cells), so it
does not import pyrt.kv. Nothing reaches the Numba kernel without passing these checks.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .._kernels import attention as fa
from ..backends import backend_of
from .._kernels import kv as kvk
from ..errors import InvalidArgumentError
from ..formats.cache_types import CACHE_TYPES

_KINDS = {c.name: c.code for c in CACHE_TYPES.values()}
_ELEM = {c.name: (c.block_size, c.type_size) for c in CACHE_TYPES.values() if c.block_size}  # elements, bytes per block
_DTYPE = {c.name: np.dtype(c.dtype).type for c in CACHE_TYPES.values()}

KV_TILE = 64
# From this many queries on (prompt chunks), attention runs as dequantized-K/V matrix products through
# OpenBLAS (QK^T, masked softmax, PV): ~10x the flash kernel's GFLOP/s for long prompts at depth.
BLAS_MIN_TOKENS = 32
BLAS_S_BYTES = 32 << 20  # scores block [rows, n_vis] f32 per task
# queries per task at most (bigger products run faster: DeepSeek-V2-Lite 512-token ubatch at depth 4096,
# 64 / 128 / 256 rows: 32-34 / 32-34 / 33-37 t/s), and tasks wanted at least (a constant: the split never
# depends on the thread count)
BLAS_ROWS_MAX = 256
BLAS_MIN_TASKS = 8
# work items wanted before splitting a small batch's KV range (a constant, so the split - and the
# result - never depends on the thread count)
MIN_ITEMS = 16
MIN_SPLIT_CELLS = 256


def rows_view(buf: np.ndarray, type_name: str) -> np.ndarray:
    """The integer view the row kernels take: uint32 for f32, uint16 for f16/bf16, uint8 bytes otherwise."""
    if type_name == "f32":
        return buf.view(np.uint32)
    if type_name in ("f16", "bf16"):
        return buf.view(np.uint16)
    return buf


@dataclass(frozen=True, slots=True, eq=False)
class CacheRows:
    """A layer's cache rows as a fused decode kernel reads them, checked once per ubatch: every layer's rows
    must have this shape and dtype."""

    type: str                  # the cache type
    kind: int                  # the kernel's code of it
    seg: int                   # the q8_KV segment length (1 for the other types)
    shape: tuple[int, ...]     # [n_cells, row]
    dtype: np.dtype

    @classmethod
    def of(cls, buf: np.ndarray, type_name: str, seg: int = 1) -> CacheRows:
        return cls(type_name, _KINDS[type_name], int(seg), buf.shape, buf.dtype)

    def view(self, buf, what: str) -> np.ndarray:
        """A layer's rows as the kernel takes them (rows_view); InvalidArgumentError unless they are writable
        C-contiguous rows of this shape and dtype."""
        if (not isinstance(buf, np.ndarray) or buf.shape != self.shape or buf.dtype != self.dtype
                or not buf.flags.c_contiguous or not buf.flags.writeable):
            raise InvalidArgumentError(f"{what}: the layer's cache rows differ from the slot's")
        return rows_view(buf, self.type)


@dataclass(frozen=True, slots=True, eq=False)
class DecodeSlot:
    """A decoded token's cache-side arguments of a fused layer kernel (ops.dense, ops.mla), validated once per
    ubatch by the block's `slot` for every layer."""

    k: CacheRows
    v: CacheRows | None        # None: a K-only cache (MLA)
    cell: int                  # the cell the token writes
    cell_pos: np.ndarray       # int32: the position of every cell kv_idx may name
    cell_seq: np.ndarray       # uint64: the sequence bits of every cell kv_idx may name
    kv_idx: np.ndarray         # [n_vis] int32: the visible cells in scan order
    q_pos: np.ndarray          # [1] int32
    q_seq: np.ndarray          # [1] int32
    scale: np.float32
    q_tile: int
    kv_tile: int
    n_split: int


def _n_elems(buf: np.ndarray, type_name: str, seg: int) -> int:
    if type_name == "q8_KV":
        return buf.shape[1] // (seg + kvk.Q8_KV_HEADER) * seg
    blk, nbytes = _ELEM[type_name]
    return buf.shape[1] if blk == 1 else buf.shape[1] // nbytes * blk


def scan_order(cell_pos: np.ndarray, cell_seq: np.ndarray, q_pos: np.ndarray, q_seq: np.ndarray) -> np.ndarray:
    """The cells a ubatch may see, in canonical order: int32 [n_vis].

    Cells holding one of the ubatch's sequences at a position <= its last query position, sorted by
    (position, sequence set, cell index). The attention scans them in this order, so its result does
    not depend on where the cells sit in the cache (defrag, restore into other cells, removal of other
    sequences leave the logits bit-identical).
    """
    mask = np.uint64(0)
    q_seq = np.asarray(q_seq)
    if q_seq.size and (q_seq.min() < 0 or q_seq.max() >= 64):
        raise InvalidArgumentError("attention: q_seq values must be in [0, 64)")
    for s in np.unique(q_seq):
        mask |= np.uint64(1) << np.uint64(int(s))
    qmax = int(np.max(q_pos)) if len(q_pos) else -1
    vis = np.flatnonzero(((cell_seq & mask) != 0) & (cell_pos <= qmax)).astype(np.int32)
    p = cell_pos[vis]
    if vis.shape[0] > 1 and not np.all(p[1:] > p[:-1]):
        vis = vis[np.lexsort((vis, cell_seq[vis], p))]
    return np.ascontiguousarray(vis, dtype=np.int32)


def choose_tiles(n_tok: int, n_gqa: int, n_head_kv: int, n_kv: int) -> tuple[int, int, int]:
    """(q_tile, kv_tile, n_split) for a ubatch: ~64 query rows per item; split the KV range for decode."""
    q_tile = max(1, min(n_tok, 64 // max(1, n_gqa)))
    items = n_head_kv * ((n_tok + q_tile - 1) // q_tile)
    n_split = 1
    if items < MIN_ITEMS:
        n_split = max(1, min((MIN_ITEMS + items - 1) // items, n_kv // MIN_SPLIT_CELLS))
    return q_tile, KV_TILE, n_split


def flash_attn_rows(q: np.ndarray, k: np.ndarray, type_k: str, v: np.ndarray, type_v: str,
                    cell_pos: np.ndarray, cell_seq: np.ndarray, q_pos: np.ndarray, q_seq: np.ndarray,
                    scale: float, n_head_kv: int, head_dim_v: int, v_offset: int = 0, n_swa: int = 0,
                    softcap: float = 0.0, out: np.ndarray | None = None, *, kv_idx: np.ndarray | None = None,
                    seg_k: int = 0, seg_v: int = 0) -> np.ndarray:
    """Attention of q [n_tok, n_head, dk] f32 over cache rows k/v [n_kv, row] -> [n_tok, n_head*head_dim_v] f32.

    k and v are cache buffers in their storage dtype (v may be the K buffer itself, read at v_offset).
    kv_idx: the cells to scan in order (default: all, in cache order). seg_k/seg_v: q8_KV segment lengths.
    """
    if not isinstance(q, np.ndarray) or q.dtype != np.float32 or q.ndim != 3:
        raise InvalidArgumentError(f"attention: q must be float32 [n_tok, n_head, head_dim], got "
                                   f"{getattr(q, 'dtype', type(q))} {getattr(q, 'shape', '')}")
    q = np.ascontiguousarray(q)
    n_tok, n_head, dk = q.shape
    if type_k not in _KINDS or type_v not in _KINDS:
        raise InvalidArgumentError(f"attention: unsupported cache types {type_k!r}/{type_v!r}")
    if n_head_kv <= 0 or n_head % n_head_kv:
        raise InvalidArgumentError(f"attention: n_head ({n_head}) is not a multiple of n_head_kv ({n_head_kv})")
    dv = int(head_dim_v)
    if dv <= 0 or dk <= 0:
        raise InvalidArgumentError("attention: head dims must be positive")
    for name, buf, tname in (("K", k, type_k), ("V", v, type_v)):
        if not isinstance(buf, np.ndarray) or buf.ndim != 2 or not buf.flags.c_contiguous:
            raise InvalidArgumentError(f"attention: {name} rows must be a C-contiguous 2-D array")
        want = _DTYPE[tname]
        if buf.dtype != want and not (tname in ("f16", "bf16") and buf.dtype in (np.uint16, np.float16)):
            raise InvalidArgumentError(f"attention: {name} rows of type {tname} must be {np.dtype(want)}, got {buf.dtype}")
    n_kv = k.shape[0]
    if v.shape[0] != n_kv:
        raise InvalidArgumentError(f"attention: K has {n_kv} rows, V has {v.shape[0]}")
    if type_k == "q8_0" and dk % 32:
        raise InvalidArgumentError(f"attention: q8_0 K needs head_dim % 32 == 0, got {dk}")
    if type_v == "q8_0" and (dv % 32 or v_offset % 32):
        raise InvalidArgumentError("attention: q8_0 V needs head_dim_v and v_offset multiples of 32")
    seg_k = int(seg_k) if type_k == "q8_KV" else 1
    seg_v = int(seg_v) if type_v == "q8_KV" else 1
    if seg_k <= 0 or seg_v <= 0:
        raise InvalidArgumentError("attention: q8_KV rows need a positive segment length")
    if type_k == "q8_KV" and (k.shape[1] % (seg_k + kvk.Q8_KV_HEADER) or any(
            (g * dk) // seg_k != (g * dk + dk - 1) // seg_k for g in range(n_head_kv))):
        raise InvalidArgumentError(f"attention: q8_KV K heads of {dk} must each lie inside one segment of {seg_k}")
    if type_v == "q8_KV" and (v.shape[1] % (seg_v + kvk.Q8_KV_HEADER) or any(
            (v_offset + g * dv) // seg_v != (v_offset + g * dv + dv - 1) // seg_v for g in range(n_head_kv))):
        raise InvalidArgumentError(f"attention: q8_KV V heads of {dv} must each lie inside one segment of {seg_v}")
    if _n_elems(k, type_k, seg_k) < n_head_kv * dk:
        raise InvalidArgumentError(f"attention: K rows hold {_n_elems(k, type_k, seg_k)} values, need {n_head_kv}*{dk}")
    if v_offset < 0 or _n_elems(v, type_v, seg_v) < v_offset + n_head_kv * dv:
        raise InvalidArgumentError(f"attention: V rows hold {_n_elems(v, type_v, seg_v)} values, need "
                                   f"{v_offset}+{n_head_kv}*{dv}")
    cell_pos = np.asarray(cell_pos)
    cell_seq = np.asarray(cell_seq)
    if cell_pos.dtype != np.int32 or cell_seq.dtype != np.uint64 or cell_pos.shape != (n_kv,) \
            or cell_seq.shape != (n_kv,):
        raise InvalidArgumentError(f"attention: cell_pos int32[{n_kv}] and cell_seq uint64[{n_kv}] required")
    q_pos = np.ascontiguousarray(q_pos)
    q_seq = np.ascontiguousarray(q_seq)
    if q_pos.shape != (n_tok,) or q_seq.shape != (n_tok,) or q_pos.dtype.kind not in "iu" \
            or q_seq.dtype.kind not in "iu":
        raise InvalidArgumentError(f"attention: q_pos and q_seq must be integer arrays of length {n_tok}")
    if n_tok and (q_seq.min() < 0 or q_seq.max() >= 64):
        raise InvalidArgumentError("attention: q_seq values must be in [0, 64)")
    if n_swa < 0:
        raise InvalidArgumentError(f"attention: n_swa must be >= 0, got {n_swa}")
    if softcap < 0 or not np.isfinite(softcap) or not np.isfinite(scale):
        raise InvalidArgumentError("attention: scale and softcap must be finite, softcap >= 0")
    if out is None:
        out = np.empty((n_tok, n_head * dv), dtype=np.float32)
    elif not isinstance(out, np.ndarray) or out.dtype != np.float32 or out.shape != (n_tok, n_head * dv) \
            or not out.flags.c_contiguous:
        raise InvalidArgumentError(f"attention: out must be C-contiguous float32 ({n_tok}, {n_head * dv})")
    if kv_idx is None:
        kv_idx = np.arange(n_kv, dtype=np.int32)
    else:
        kv_idx = np.ascontiguousarray(kv_idx)
        if kv_idx.ndim != 1 or kv_idx.dtype != np.int32 or (kv_idx.size and (kv_idx.min() < 0 or kv_idx.max() >= n_kv)):
            raise InvalidArgumentError(f"attention: kv_idx must be int32 cell indices in [0, {n_kv})")
    if n_tok == 0:
        return out
    q_tile, kv_tile, n_split = choose_tiles(n_tok, n_head // n_head_kv, n_head_kv, kv_idx.shape[0])
    fa.flash_attn(out.reshape(n_tok, n_head, dv), q, rows_view(k, type_k), rows_view(v, type_v),
                  _KINDS[type_k], _KINDS[type_v], seg_k, seg_v, int(v_offset), int(n_head_kv),
                  np.ascontiguousarray(cell_pos), np.ascontiguousarray(cell_seq), kv_idx,
                  q_pos.astype(np.int32, copy=False), q_seq.astype(np.int32, copy=False),
                  np.float32(scale), int(n_swa), np.float32(softcap), q_tile, kv_tile, n_split)
    return out


def attention(q: np.ndarray, cache, il: int, q_pos: np.ndarray, q_seq: np.ndarray, scale: float,
              n_swa: int = 0, softcap: float = 0.0, out: np.ndarray | None = None, *,
              n_head_kv: int | None = None, head_dim_v: int | None = None, v_offset: int = 0,
              kv_idx: np.ndarray | None = None) -> np.ndarray:
    """Attention of a ubatch's q [n_tok, n_head, head_dim_k] f32 over layer il of a KVCache -> [n_tok, n_head*head_dim_v].

    The cells of scan_order (computed here unless the caller passes kv_idx, e.g. once per ubatch) are
    scanned. n_head_kv defaults to n_embd_k / head_dim_k; head_dim_v defaults to head_dim_k. A layer
    without V (MLA) reads V from the K rows at element offset v_offset. A device q runs on its backend
    (whose cache buffers live there).
    """
    if type(q) is not np.ndarray and (b := backend_of(q)) is not None:
        if not 0 <= il < cache.n_layer:
            raise InvalidArgumentError(f"attention: layer {il} out of range [0, {cache.n_layer})")
        if out is not None:
            raise InvalidArgumentError("attention: out buffers are host arrays; not accepted with a device q")
        return b.attention(q, cache, il, q_pos, q_seq, scale, n_swa, softcap, kv_idx=kv_idx, n_head_kv=n_head_kv,
                           head_dim_v=head_dim_v, v_offset=v_offset)
    if not 0 <= il < cache.n_layer:
        raise InvalidArgumentError(f"attention: layer {il} out of range [0, {cache.n_layer})")
    if not isinstance(q, np.ndarray) or q.ndim != 3:
        raise InvalidArgumentError("attention: q must be [n_tok, n_head, head_dim]")
    dk = q.shape[2]
    if n_head_kv is None:
        if cache.n_embd_k[il] % dk:
            raise InvalidArgumentError(f"attention: K width {cache.n_embd_k[il]} is not a multiple of head_dim {dk}")
        n_head_kv = cache.n_embd_k[il] // dk
    if head_dim_v is None:
        head_dim_v = dk if cache.v[il] is not None else cache.n_embd_k[il] // n_head_kv - v_offset
    n_kv = cache.cells.n_kv()
    k = cache.k[il][:n_kv]
    seg_k = cache.seg_k[il]
    if cache.v[il] is None:
        v, type_v, seg_v = k, cache.type_k, seg_k
    else:
        v, type_v, seg_v = cache.v[il][:n_kv], cache.type_v, cache.seg_v[il]
    cell_pos = cache.cells.pos_array()[:n_kv]
    cell_seq = cache.cells.seq_array()[:n_kv]
    if kv_idx is None:
        kv_idx = scan_order(cell_pos, cell_seq, np.asarray(q_pos), np.asarray(q_seq))
    if (q.shape[0] >= BLAS_MIN_TOKENS and q.dtype == np.float32 and out is None and n_head_kv > 0
            and q.shape[1] % n_head_kv == 0 and kv_idx.shape[0] > 0):
        return _attention_blas(q, cache, il, cell_pos, cell_seq, kv_idx, np.asarray(q_pos), np.asarray(q_seq),
                               float(scale), int(n_swa), float(softcap), int(n_head_kv), int(head_dim_v),
                               int(v_offset))
    return flash_attn_rows(q, k, cache.type_k, v, type_v, cell_pos, cell_seq, q_pos, q_seq, scale, n_head_kv,
                           head_dim_v, v_offset=v_offset, n_swa=n_swa, softcap=softcap, out=out, kv_idx=kv_idx,
                           seg_k=seg_k, seg_v=seg_v)


def _attention_blas(q, cache, il, cell_pos, cell_seq, kv_idx, q_pos, q_seq, scale, n_swa, softcap,
                    n_head_kv, dv, v_offset):
    """Prompt-chunk attention over a cache with matrix products (attention_matrix): K and V of the
    visible cells are dequantized once (in scan order) to f32."""
    K = cache.k_values(il, kv_idx)                          # [n_vis, n_head_kv*dk] f32
    V = cache.v_values(il, kv_idx)
    if V is None:                                           # K-only cache: V is a view of the K rows
        V = K[:, v_offset:v_offset + n_head_kv * dv]
    return attention_matrix(q, K, V, cell_pos[kv_idx], cell_seq[kv_idx], q_pos, q_seq, scale, n_head_kv, dv,
                            n_swa=n_swa, softcap=softcap)


def _heads_view(a, n_vis: int, n_head_kv: int, d: int, what: str) -> np.ndarray:
    """[n_vis, n_head_kv, d] view of K or V given as f32 [n_vis, >= n_head_kv*d] rows or [n_vis, n_head_kv, d]
    heads (strided views allowed; each head's values contiguous)."""
    if a.dtype != np.float32 or a.shape[0] != n_vis or a.ndim not in (2, 3):
        raise InvalidArgumentError(f"attention: {what} must be f32 [n_vis, row] or [n_vis, n_head_kv, d]")
    if a.ndim == 3:
        if a.shape[1:] != (n_head_kv, d) or (d > 1 and a.strides[2] != 4):
            raise InvalidArgumentError(f"attention: {what} heads must be [n_vis, {n_head_kv}, {d}] with contiguous "
                                       "values")
        return a
    if a.shape[1] < n_head_kv * d:
        raise InvalidArgumentError("attention: cache rows are narrower than the heads")
    return a[:, :n_head_kv * d].reshape(n_vis, n_head_kv, d)


def attention_matrix(q, K, V, cp, cs, q_pos, q_seq, scale, n_head_kv, dv, *, n_swa=0, softcap=0.0,
                     q_rope=None, k_rope=None):
    """Prompt-chunk attention with matrix products: per KV head, S = (Q*scale) K^T + mask, softmax, P V.

    q: [n_tok, n_head, dk] f32; K: [n_vis, >= n_head_kv*dk] f32 rows or [n_vis, n_head_kv, dk] heads, V likewise
    with dv (strided views allowed: a K-only cache's V, DeepSeek2's decompressed [k_nope | v] heads), the
    visible cells in scan order, whose positions and sequence bitmasks are cp, cs [n_vis]; q_pos, q_seq:
    [n_tok] (q_seq in [0, 64)). q_rope [n_tok, n_head, dr] and k_rope [n_vis, dr] (f32, one rope key per
    cell shared by every head, MLA's decoupled rope part) add q_rope . k_rope to each score. The softmax is
    exact over the whole row, so the result equals the flash kernel's up to f32 rounding. Rows that see no
    cell give zeros. Heads run as tasks on the BLAS pool (one OpenBLAS thread each): thread-count
    independent. Returns [n_tok, n_head*dv] f32.
    """
    from ..backends.cpu import blas_pool
    import numba

    n_tok, n_head, dk = q.shape
    q_pos, q_seq = np.asarray(q_pos), np.asarray(q_seq)
    if q_seq.size and (q_seq.min() < 0 or q_seq.max() >= 64):
        raise InvalidArgumentError("attention: q_seq values must be in [0, 64)")
    n_vis = K.shape[0]
    if (V.shape[0] != n_vis or n_vis != len(cp) or len(cs) != len(cp) or q_pos.shape != (n_tok,)
            or q_seq.shape != (n_tok,)):
        raise InvalidArgumentError("attention: K/V must be f32 [n_vis, row] with one position and sequence per row")
    if n_head_kv <= 0 or n_head % n_head_kv:
        raise InvalidArgumentError(f"attention: n_head ({n_head}) is not a multiple of n_head_kv ({n_head_kv})")
    K = _heads_view(K, n_vis, n_head_kv, dk, "K")
    V = _heads_view(V, n_vis, n_head_kv, dv, "V")
    if (q_rope is None) != (k_rope is None):
        raise InvalidArgumentError("attention: q_rope and k_rope go together")
    if q_rope is not None:
        dr = k_rope.shape[-1]
        if (q_rope.dtype != np.float32 or k_rope.dtype != np.float32 or q_rope.shape != (n_tok, n_head, dr)
                or k_rope.shape != (n_vis, dr)):
            raise InvalidArgumentError(f"attention: q_rope must be f32 [{n_tok}, {n_head}, dr] and k_rope "
                                       f"f32 [{n_vis}, dr]")
    cp = np.ascontiguousarray(cp, dtype=np.int32)
    cs = np.ascontiguousarray(cs, dtype=np.uint64)
    qp = q_pos.astype(np.int32)
    qs = q_seq.astype(np.int32)
    sorted_pos = cp.shape[0] < 2 or bool(np.all(cp[1:] >= cp[:-1]))
    n_gqa = n_head // n_head_kv
    out = np.empty((n_tok, n_head, dv), np.float32)
    if n_vis == 0:
        out[...] = 0.0
        return out.reshape(n_tok, n_head * dv)
    rows = max(1, min(n_tok, BLAS_S_BYTES // (4 * n_vis * n_gqa), BLAS_ROWS_MAX,
                      -(-n_tok * n_head_kv // BLAS_MIN_TASKS)))

    def task(item):
        g, t0 = item
        t1 = min(n_tok, t0 + rows)
        # columns past the chunk's last visible position are all masked: skip them (block causality)
        n_c = int(np.searchsorted(cp, qp[t0:t1].max(), side="right")) if sorted_pos else n_vis
        o = out[t0:t1, g * n_gqa:(g + 1) * n_gqa, :]
        if n_c == 0:
            o[...] = 0.0
            return
        heads = slice(g * n_gqa, (g + 1) * n_gqa)
        Q = np.ascontiguousarray(q[t0:t1, heads, :]).reshape(-1, dk)
        S = np.matmul(Q, K[:n_c, g, :].T)                                      # [r*n_gqa, n_c]
        if q_rope is not None:
            S += np.matmul(np.ascontiguousarray(q_rope[t0:t1, heads, :]).reshape(-1, dr), k_rope[:n_c].T)
        S *= np.float32(scale)
        fa.softmax_masked_rows(S, n_gqa, t0, qp, qs, cp[:n_c], cs[:n_c], n_swa, np.float32(softcap))
        o[...] = np.matmul(S, V[:n_c, g, :]).reshape(t1 - t0, n_gqa, dv)

    # later row blocks see more columns: listed first, so the pool's workers finish together
    items = [(g, t0) for t0 in reversed(range(0, n_tok, rows)) for g in range(n_head_kv)]
    blas_pool().map(task, min(numba.get_num_threads(), len(items)), items)
    return out.reshape(n_tok, n_head * dv)

