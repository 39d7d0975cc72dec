"""KV cache state save/restore: a versioned binary format, validated in full before the cache is touched.

Imports numpy, pyrt._kernels, pyrt.io.files, pyrt.kv.cache/cells and pyrt.errors only (no model, no context). All
integers are little-endian. Layout (format version 3):

    header   magic b"PYKV" | u32 version | u32 flags (bit 0: one sequence, cells carry no sequence ids)
             | u32 n_layer | u32 n_seq_max | u32 n_cells | u32 n_tokens | u64 body_bytes
    model    u32 len + model id (utf-8: the architecture, then "@" and the file's 16-hex-digit
             fingerprint, GGUFFile.fingerprint) | u32 type_k id | u32 type_v id (ggml ids: f32 0, f16 1, q8_0 8,
             bf16 30, q8_KV 151) | per layer: u32 n_embd_k, u32 head_dim_k, u64 k_row_bytes,
             u32 v_state (0 = V rows, not transposed; 2 = no V), u32 n_embd_v, u32 head_dim_v,
             u64 v_row_bytes, u32 n_rot
    body     i32 tokens[n_tokens] | i32 pos[n_cells] | u64 seq[n_cells] (bitsets; 0 in a sequence
             file) | i32 delta[n_cells] (pending K-shift) | per layer: K rows [n_cells, k_row_bytes],
             then V rows [n_cells, v_row_bytes] when the layer has V
    trailer  u32 crc32 of every byte of this record before it

A context with a separate sliding-window cache (Context(swa_full=False)) writes two such records: the
full-attention layers' cache with the tokens and flag bit 1 set, then the window cache's (no tokens).

Cells are written in cache order (a fragmented cache saves compactly); a full restore puts them at
[0, n_cells), a sequence restore into any free cells (need not be contiguous). Any mismatch (magic,
version, model, cache type, sizes, truncation, checksum, sequence ids, free cells) raises StateError
and leaves the cache exactly as it was.
"""

from __future__ import annotations

import os
import struct
import zlib

import numpy as np

from .._kernels import kv as kvk
from ..errors import InvalidArgumentError, StateError, StateFileError
from ..io.files import remove_stale_temps, write_file_atomic
from .cache import GGML_TYPE_ID, KVCache
from .cells import Cells

MAGIC = b"PYKV"
VERSION = 3  # 2: the model id carries the file fingerprint; 3: the fingerprint samples every tensor
FLAG_SEQ = 1
FLAG_SWA = 2  # a second record follows: the cache of the sliding-window layers
V_ROWS, V_NONE = 0, 2
_HDR = struct.Struct("<4sIIIIIIQ")  # magic, version, flags, n_layer, n_seq_max, n_cells, n_tokens, body_bytes
_LAYER = struct.Struct("<IIQIIIQI")  # n_embd_k, head_dim_k, k_row, v_state, n_embd_v, head_dim_v, v_row, n_rot
_TYPES = struct.Struct("<II")
_TYPE_NAME = {v: k for k, v in GGML_TYPE_ID.items()}


def _model_block(cache: KVCache, arch: str, n_rot: list[int]) -> bytes:
    a = arch.encode()
    parts = [struct.pack("<I", len(a)), a, _TYPES.pack(GGML_TYPE_ID[cache.type_k], GGML_TYPE_ID[cache.type_v])]
    for il in range(cache.n_layer):
        has_v = cache.v[il] is not None
        parts.append(_LAYER.pack(cache.n_embd_k[il], cache.head_dim_k[il], cache.row_bytes_k(il),
                                 V_ROWS if has_v else V_NONE, cache.n_embd_v[il] if has_v else 0,
                                 cache.head_dim_v[il] if has_v else 0, cache.row_bytes_v(il), int(n_rot[il])))
    return b"".join(parts)


def _n_rot(cache: KVCache, n_rot) -> list[int]:
    if n_rot is None:
        return [0] * cache.n_layer
    if np.isscalar(n_rot):
        return [int(n_rot)] * cache.n_layer
    return [int(x) for x in n_rot]


def _bytes_rows(buf: np.ndarray) -> np.ndarray:
    return buf.view(np.uint8)  # [size, row bytes]


def save_state(cache: KVCache, tokens=(), seq_id: int = -1, arch: str = "", n_rot=None,
               cache_swa: KVCache | None = None, n_rot_swa=None) -> bytes:
    """Serialize the whole cache (seq_id < 0) or the cells of one sequence, with the token ids.

    arch and n_rot (int or per layer) go into the model fingerprint that load_state checks. cache_swa
    (with n_rot_swa for its layers): the sliding-window layers' cache, written as a second record.
    """
    return b"".join(_save_parts(cache, tokens, seq_id, arch, n_rot, cache_swa, n_rot_swa))


def _save_parts(cache: KVCache, tokens=(), seq_id: int = -1, arch: str = "", n_rot=None,
                cache_swa: KVCache | None = None, n_rot_swa=None) -> list:
    """save_state as a list of buffers (written to a file without joining them first)."""
    cache.require_host("saving the KV state")
    if cache_swa is not None:
        return (_save_record(cache, tokens, seq_id, arch, n_rot, FLAG_SWA)
                + _save_record(cache_swa, (), seq_id, arch, n_rot_swa, 0))
    return _save_record(cache, tokens, seq_id, arch, n_rot, 0)


def _save_record(cache: KVCache, tokens, seq_id: int, arch: str, n_rot, flags: int) -> list:
    cells = cache.cells
    pos, seq, delta = cells.pos_array(), cells.seq_array(), cells.delta_array()
    if seq_id < 0:
        sel = np.flatnonzero(pos >= 0).astype(np.int32)
    else:
        if seq_id >= cells.n_seq_max:
            raise StateError(f"save: sequence {seq_id} out of range [0, {cells.n_seq_max})")
        sel = np.flatnonzero((seq >> np.uint64(seq_id)) & np.uint64(1)).astype(np.int32)
    tok = np.asarray(list(tokens), dtype=np.int64)
    if tok.size and (tok.min() < -2**31 or tok.max() >= 2**31):
        raise StateError("save: token ids must fit in int32")
    n = sel.shape[0]
    body = [tok.astype("<i4").tobytes(), pos[sel].astype("<i4").tobytes(),
            (seq[sel] if seq_id < 0 else np.zeros(n, np.uint64)).astype("<u8").tobytes(),
            delta[sel].astype("<i4").tobytes()]
    for il in range(cache.n_layer):
        for buf in (cache.k[il], cache.v[il]):
            if buf is None:
                continue
            b = _bytes_rows(buf)
            rows = np.empty((n, b.shape[1]), np.uint8)  # [n_cells, row bytes]
            kvk.gather_rows(rows, b, sel)
            body.append(rows.reshape(-1).data)  # flat: an empty state has rows of shape (0, n)
    body_bytes = sum(memoryview(x).nbytes for x in body)
    head = _HDR.pack(MAGIC, VERSION, flags | (FLAG_SEQ if seq_id >= 0 else 0), cache.n_layer, cells.n_seq_max, n,
                     tok.shape[0], body_bytes) + _model_block(cache, arch, _n_rot(cache, n_rot))
    crc = zlib.crc32(head)
    for x in body:
        crc = zlib.crc32(x, crc)
    return [head, *body, struct.pack("<I", crc)]


def _check_model_id(f_arch: str, arch: str) -> None:
    if f_arch.split("@")[0] != arch.split("@")[0]:
        raise StateError(f"state: saved for architecture {f_arch.split('@')[0]!r}, this model is "
                         f"{arch.split('@')[0]!r}")
    if f_arch != arch:
        raise StateError(f"state: saved by another model file ({f_arch}), this one is {arch} "
                         f"(same architecture, different weights)")


def _model_id(mv) -> str | None:
    """The model id of a record whose sizes are consistent and whose checksum is right, else None (then
    _parse says what is wrong). The checksum is only computed for an id that differs from `arch`."""
    total = len(mv)
    if total < _HDR.size + 8 or bytes(mv[:4]) != MAGIC:
        return None
    magic, version, flags, n_layer, n_seq_max, n_cells, n_tokens, body_bytes = _HDR.unpack_from(mv, 0)
    (alen,) = struct.unpack_from("<I", mv, _HDR.size)
    off = _HDR.size + 4
    if version != VERSION or alen > 256 or total != off + alen + _TYPES.size + n_layer * _LAYER.size + body_bytes + 4:
        return None
    try:
        return bytes(mv[off:off + alen]).decode()
    except UnicodeDecodeError:
        return None


def _crc_ok(mv) -> bool:
    (crc,) = struct.unpack_from("<I", mv, len(mv) - 4)
    return zlib.crc32(mv[:len(mv) - 4]) == crc


class _Parsed:
    __slots__ = ("flags", "n_cells", "tokens", "pos", "seq", "delta", "rows")


def _parse(cache: KVCache, data, arch: str, n_rot: list[int]) -> _Parsed:
    """Validate everything and return views into data; raises StateError, touches nothing."""
    mv = memoryview(data).cast("B")
    total = len(mv)
    if total < _HDR.size + 4:
        raise StateError(f"state: {total} bytes is too short for a pyrt KV state (truncated?)")
    magic, version, flags, n_layer, n_seq_max, n_cells, n_tokens, body_bytes = _HDR.unpack_from(mv, 0)
    if magic != MAGIC:
        raise StateError(f"state: bad magic {bytes(magic)!r} (not a pyrt KV state file)")
    if version != VERSION:
        raise StateError(f"state: format version {version} is not supported (this build reads {VERSION})")
    if flags & ~(FLAG_SEQ | FLAG_SWA):
        raise StateError(f"state: unknown flags {flags:#x}")
    off = _HDR.size
    if total < off + 4:
        raise StateError("state: truncated model block")
    (alen,) = struct.unpack_from("<I", mv, off)
    off += 4
    if alen > 256 or total < off + alen + _TYPES.size + n_layer * _LAYER.size + 4:
        raise StateError("state: truncated or corrupt model block")
    try:
        f_arch = bytes(mv[off:off + alen]).decode()
    except UnicodeDecodeError:
        raise StateError("state: corrupt architecture name") from None
    off += alen
    # the checksum first: any flipped bit below is reported as corruption, not as a model mismatch
    if total != off + _TYPES.size + n_layer * _LAYER.size + body_bytes + 4:
        raise StateError(f"state: size {total} does not match the {body_bytes} bytes of data announced "
                         f"(truncated or trailing bytes)")
    (crc,) = struct.unpack_from("<I", mv, total - 4)
    if zlib.crc32(mv[:total - 4]) != crc:
        raise StateError("state: checksum mismatch (corrupted data)")
    _check_model_id(f_arch, arch)
    if n_layer != cache.n_layer:
        raise StateError(f"state: saved for a model with {n_layer} layers, this one has {cache.n_layer}")
    tk, tv = _TYPES.unpack_from(mv, off)
    off += _TYPES.size
    for what, fid, mine in (("K", tk, cache.type_k), ("V", tv, cache.type_v)):
        if fid != GGML_TYPE_ID[mine]:
            raise StateError(f"state: saved with {what} cache type {_TYPE_NAME.get(fid, f'id {fid}')}, "
                             f"this context uses {mine}")
    rows_spec = []
    for il in range(n_layer):
        ek, hk, rk, vs, ev, hv, rv, nr = _LAYER.unpack_from(mv, off)
        off += _LAYER.size
        has_v = cache.v[il] is not None
        if vs not in (V_ROWS, V_NONE):
            raise StateError(f"state: layer {il}: V layout {vs} is not supported (transposed V?)")
        if (vs == V_ROWS) != has_v:
            raise StateError(f"state: layer {il}: the file {'has' if vs == V_ROWS else 'has no'} V cache, "
                             f"this context {'has' if has_v else 'has none'}")
        if (ek, hk, rk) != (cache.n_embd_k[il], cache.head_dim_k[il], cache.row_bytes_k(il)):
            raise StateError(f"state: layer {il}: K rows of {ek} values ({rk} bytes) in the file, this model "
                             f"has {cache.n_embd_k[il]} ({cache.row_bytes_k(il)} bytes): another model")
        if has_v and (ev, hv, rv) != (cache.n_embd_v[il], cache.head_dim_v[il], cache.row_bytes_v(il)):
            raise StateError(f"state: layer {il}: V rows of {ev} values ({rv} bytes) in the file, this model "
                             f"has {cache.n_embd_v[il]} ({cache.row_bytes_v(il)} bytes): another model")
        if nr != n_rot[il]:
            raise StateError(f"state: layer {il}: {nr} rope dims in the file, this model has {n_rot[il]}")
        rows_spec.append((rk, rv if has_v else 0))
    seq_mode = bool(flags & FLAG_SEQ)
    if n_cells > cache.size:
        raise StateError(f"state: {n_cells} cells do not fit a cache of {cache.size} (saved by a context with a "
                         f"larger n_ctx?)")
    need = 4 * n_tokens + n_cells * (4 + 8 + 4) + sum(n_cells * (rk + rv) for rk, rv in rows_spec)
    if need != body_bytes:
        raise StateError(f"state: the data section has {body_bytes} bytes, its header needs {need}")
    p = _Parsed()
    p.flags, p.n_cells = flags, n_cells
    p.tokens = np.frombuffer(mv, "<i4", n_tokens, off)
    off += 4 * n_tokens
    p.pos = np.frombuffer(mv, "<i4", n_cells, off)
    off += 4 * n_cells
    p.seq = np.frombuffer(mv, "<u8", n_cells, off)
    off += 8 * n_cells
    p.delta = np.frombuffer(mv, "<i4", n_cells, off)
    off += 4 * n_cells
    if n_cells and p.pos.min() < 0:
        raise StateError("state: a saved cell has a negative position")
    if seq_mode:
        if np.any(p.seq != 0):
            raise StateError("state: a sequence state must not carry sequence ids")
    else:
        allowed = np.uint64(0xFFFFFFFFFFFFFFFF) if cache.n_seq_max == 64 else np.uint64((1 << cache.n_seq_max) - 1)
        if np.any(p.seq == 0) or np.any(p.seq & ~allowed):
            raise StateError(f"state: a cell has no sequence or one >= n_seq_max ({cache.n_seq_max}) "
                             f"(saved with n_seq_max = {n_seq_max})")
    p.rows = []
    for rk, rv in rows_spec:
        k = np.frombuffer(mv, np.uint8, n_cells * rk, off).reshape(n_cells, rk)
        off += n_cells * rk
        v = None
        if rv:
            v = np.frombuffer(mv, np.uint8, n_cells * rv, off).reshape(n_cells, rv)
            off += n_cells * rv
        p.rows.append((k, v))
    return p


def prune_window(cells: Cells, n_swa: int, p_next: dict | None = None) -> int:
    """Free what no current or future query of a sliding window of n_swa can see; returns cells freed.

    A sequence s whose next position is P (its largest cached position + 1, or p_next[s] when given and
    smaller) loses its cells at positions <= P - n_swa (llama.cpp's is_masked_swa with the window's
    standard type); a cell shared with other sequences keeps them. Only cells, no rows: freed rows are
    overwritten later.
    """
    if n_swa <= 0 or cells.used == 0:
        return 0
    used = cells.used
    p_next = p_next or {}
    for s in range(cells.n_seq_max):
        pmax = cells.seq_pos_max(s)
        if pmax < 0:
            continue
        nxt = min(pmax + 1, p_next.get(s, pmax + 1))
        if nxt - n_swa + 1 > 0:
            cells.seq_rm(s, -1, nxt - n_swa + 1)
    return used - cells.used


def _records(data) -> list:
    """The record(s) of a state: [whole data], or [full-attention record, window record] (FLAG_SWA)."""
    mv = memoryview(data).cast("B")
    total = len(mv)
    if total < _HDR.size + 4 or bytes(mv[:4]) != MAGIC:
        return [mv]  # _parse says what is wrong
    _, _, flags, n_layer, _, _, _, body_bytes = _HDR.unpack_from(mv, 0)
    if not flags & FLAG_SWA:
        return [mv]
    (alen,) = struct.unpack_from("<I", mv, _HDR.size)
    end = _HDR.size + 4 + alen + _TYPES.size + n_layer * _LAYER.size + body_bytes + 4
    if end >= total:
        raise StateError("state: truncated (the sliding-window cache record is missing)")
    return [mv[:end], mv[end:]]


class _Plan:
    __slots__ = ("cache", "parsed", "dst", "cells_state", "clear")


def _plan(cache: KVCache, p: _Parsed, seq_id: int, n_swa: int = 0) -> _Plan:
    """Where the parsed cells go (on scratch cells); raises StateError, touches nothing."""
    cells = cache.cells
    seq_mode = bool(p.flags & FLAG_SEQ)
    n = p.n_cells
    if seq_id < 0:
        if seq_mode:
            raise StateError("state: this is a one-sequence state; restore it with a sequence id")
        new_pos = np.full(cells.size, -1, np.int32)
        new_seq = np.zeros(cells.size, np.uint64)
        new_delta = np.zeros(cells.size, np.int32)
        dst = np.arange(n, dtype=np.int32)
        new_pos[:n], new_seq[:n], new_delta[:n] = p.pos, p.seq, p.delta
    else:
        if not seq_mode:
            raise StateError("state: this is a whole-cache state; restore it without a sequence id")
        if seq_id >= cells.n_seq_max:
            raise StateError(f"state: sequence {seq_id} out of range [0, {cells.n_seq_max})")
        # plan on a scratch copy of the cells: remove the sequence, then find (any) free cells
        scratch = Cells(cells.size, cells.n_seq_max)
        scratch.set_state(*cells.get_state())
        scratch.seq_rm(seq_id, -1, -1)
        if n_swa > 0 and n > cells.size - scratch.used:  # window cache: what nobody can see counts as free
            prune_window(scratch, n_swa)
        free = cells.size - scratch.used
        if n > free:
            raise StateError(f"state: {n} cells needed, only {free} of {cells.size} are free for sequence {seq_id}")
        dst = scratch.find_slot(p.pos, np.full(n, seq_id, np.int32)) if n else np.empty(0, np.int32)
        new_pos, new_seq, new_delta = scratch.get_state()
        new_delta[dst] = p.delta
    pl = _Plan()
    pl.cache, pl.parsed, pl.dst, pl.cells_state, pl.clear = cache, p, dst, (new_pos, new_seq, new_delta), seq_id < 0
    return pl


def _apply(pl: _Plan) -> None:
    cache = pl.cache
    if pl.clear:
        for buf in cache.k + cache.v:
            if buf is not None:
                buf.fill(0)
    cache.cells.set_state(*pl.cells_state)
    if pl.parsed.n_cells:
        for il, (k, v) in enumerate(pl.parsed.rows):
            kvk.scatter_rows(_bytes_rows(cache.k[il]), pl.dst, k)
            if v is not None:
                kvk.scatter_rows(_bytes_rows(cache.v[il]), pl.dst, v)


def load_state(cache: KVCache, data, seq_id: int = -1, arch: str = "", n_rot=None,
               cache_swa: KVCache | None = None, n_rot_swa=None, n_swa: int = 0) -> list[int]:
    """Restore a state made by save_state; returns its token ids.

    seq_id < 0: a whole-cache state replaces everything (cells at [0, n_cells)). seq_id >= 0: a
    sequence state replaces that sequence's cells (any free cells, not necessarily contiguous).
    cache_swa: the sliding-window layers' cache (window n_swa), restored from the second record.
    Validates both records completely first; on any problem raises StateError with both caches unchanged.
    """
    cache.require_host("restoring a KV state")
    recs = _records(data)
    fid = _model_id(recs[0])
    if fid is not None and fid != arch and _crc_ok(recs[0]):  # another model is the real cause of what follows
        _check_model_id(fid, arch)
    if (len(recs) == 2) != (cache_swa is not None):
        how = "load it into a context with the same n_ctx and swa_full / --swa-full as when saving"
        if len(recs) == 2:
            raise StateError(f"state: saved by a context with a separate sliding-window cache; this one keeps "
                             f"full-size caches (n_ctx = {cache.size} is within the window cache, or swa_full "
                             f"is set): {how}")
        if len(recs[0]) >= _HDR.size and bytes(recs[0][:4]) == MAGIC:
            raise StateError(f"state: saved by a context with full-size caches (swa_full, or an n_ctx within "
                             f"the window cache); this one has a separate sliding-window cache of "
                             f"{cache_swa.size} cells (n_ctx = {cache.size}): {how}")
    p = _parse(cache, recs[0], arch, _n_rot(cache, n_rot))
    plans = [_plan(cache, p, seq_id)]
    if cache_swa is not None:
        p2 = _parse(cache_swa, recs[1], arch, _n_rot(cache_swa, n_rot_swa))
        if p2.flags & FLAG_SWA or p2.tokens.shape[0] or (p2.flags & FLAG_SEQ) != (p.flags & FLAG_SEQ):
            raise StateError("state: the sliding-window cache record does not match the first one")
        plans.append(_plan(cache_swa, p2, seq_id, n_swa))
    # from here on nothing can fail on user data
    for pl in plans:
        _apply(pl)
    return [int(t) for t in p.tokens]


def _check_path(path) -> str:
    if not isinstance(path, (str, bytes, os.PathLike)):
        raise InvalidArgumentError(f"state file: expected a path (str or os.PathLike), got {type(path).__name__}")
    return os.fsdecode(path)


def save_file(path, cache: KVCache, tokens=(), seq_id: int = -1, arch: str = "", n_rot=None, **swa) -> int:
    """save_state to a file, replaced whole or not at all (pyrt.io.files); returns the bytes written.
    A file-system failure raises StateFileError (the OSError is its cause). swa: cache_swa, n_rot_swa as
    save_state."""
    path = _check_path(path)
    parts = _save_parts(cache, tokens, seq_id, arch, n_rot, **swa)
    return write_file_atomic(path, parts, what="state file", error=StateFileError)


def load_file(path, cache: KVCache, seq_id: int = -1, arch: str = "", n_rot=None, **swa) -> list[int]:
    """load_state from a file; a missing or unreadable file raises StateFileError. swa: as load_state."""
    path = _check_path(path)
    remove_stale_temps(path)
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise StateFileError.wrap(f"state: cannot read {path}", e) from e
    return load_state(cache, data, seq_id, arch, n_rot, **swa)
