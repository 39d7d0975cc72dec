"""Matmul over raw GGUF weight rows, embedding row lookup and dequantization: validation + kernel choice.

Everything is checked here before a Numba kernel (which has no bounds checks) sees it.
Device tensors go to their backend (pyrt.backends). Imports pyrt.formats, pyrt._kernels (through the
registry), pyrt.backends (cpu.py: the BLAS pool) and pyrt.errors only.
Shapes are numpy (row-major) order: weights are [n_out, row_bytes] uint8, y = x @ W.T.
"""

from __future__ import annotations

import math
import threading

import numpy as np

from ..backends import backend_of
from .._kernels.simd import HAS_VNNI
from ..backends.cpu import blas_pool, is_amd
from ..errors import InvalidArgumentError
from ..formats.qtypes import DOT_TYPES, QType, get_qtype
from . import paths

# From this many tokens on, a weight tile is dequantized to f32 and multiplied with OpenBLAS
# (np.matmul) instead of running the integer/half dot kernel: the crossover of the two paths per type and
# CPU, from `python bench/bench_kernels.py --crossover --threads 2` (2 threads, 5632x2048 and the
# MoE expert shapes 1408x2048 / 2048x1408); re-derive it when a dot kernel changes. Where the CPU has VNNI
# (AMD Zen 4/5, Intel Xeon since Cascade Lake), the Q8_0-family blocks' 8-row x 8-token integer tiles stay
# ahead of dequantize + sgemm at every size (Xeon with AMX, 5632x2048 Q4_0, 512 tokens: 266 against
# 140 GOP/s), so they never take the BLAS path. Without VNNI (the AVX2 code, vpmaddubsw, against OpenBLAS's
# Haswell sgemm, on a Xeon with the kernels compiled for haswell; bench/results/avx2-path-xeon-2026-12-06)
# the Q4_0/Q5_0 tiles still win at every size (1408x2048, 512 tokens: 232 against 145 GFLOP/s) and Q8_0's
# up to 128-192 tokens (139 against 85 at 32, 129 against 143 at 512). The K-quants' 8-row tiles (quants_k)
# stay ahead of it at every size on both code paths (1408x2048, 512 tokens: Q4_K 383 against 187 GFLOP/s on the
# AVX-512 code, 392 against 146 on the AVX2 code; Q6_K 389 against 246, 325 against 182).
NEVER = 1 << 62
BLAS_MIN_TOKENS_INTEL = {
    "F32": 24, "F16": 24, "BF16": 20,
    "Q8_0": 192, "Q4_0": NEVER, "Q5_0": NEVER,
    "Q4_K": NEVER, "Q5_K": NEVER, "Q6_K": NEVER,
}
BLAS_MIN_TOKENS_VNNI = dict(BLAS_MIN_TOKENS_INTEL, Q8_0=NEVER, Q4_0=NEVER, Q5_0=NEVER)


BLAS_MIN_TOKENS = BLAS_MIN_TOKENS_VNNI if (is_amd() or HAS_VNNI) else BLAS_MIN_TOKENS_INTEL

# Weight types whose prompt batches run on AMX-INT8 tiles where the CPU has them (pyrt._kernels.amx_matmul), from
# paths.amx_min_tokens (K-quants: amx_min_tokens_k) tokens on, several times the throughput of their integer
# dot kernel, with the row dots' bits.
AMX_TYPES = frozenset({"Q8_0", "Q4_0", "Q5_0", "Q4_K", "Q5_K", "Q6_K"})
_amx_state: list = []  # [(enabled, config bytes)] once asked


def amx_enabled() -> bool:
    """Whether this process runs AMX tiles (the CPU has AMX-INT8 and the kernel granted its state)."""
    if not _amx_state:
        from .._kernels import amx
        on = amx.enable()
        _amx_state.append((on, amx.config_bytes() if on else None))
    return _amx_state[0][0]


def _path_for(qt: QType, n_tok: int) -> str:
    """"amx", "dot" (the quantized-activation kernel) or "blas" (dequantize + np.matmul) for n_tok tokens."""
    p = paths.current()
    if (qt.name in AMX_TYPES and p.amx and n_tok >= (p.amx_min_tokens_k if qt.dot_type == "Q8_K" else p.amx_min_tokens)
            and amx_enabled()):
        return "amx"
    return "blas" if n_tok >= BLAS_MIN_TOKENS.get(qt.name, 32) else "dot"


# From this many tokens on, activations are quantized to Q8_0 / Q8_K by all threads (one parallel launch).
PARALLEL_QUANTIZE_MIN_TOKENS = 8

_tls = threading.local()


def scratch(name: str, dtype, shape) -> np.ndarray:
    """A per-thread reusable buffer viewed as `shape` (grown when too small)."""
    n = math.prod(shape)
    buf = getattr(_tls, name, None)
    if buf is None or buf.dtype != dtype or buf.size < n:
        buf = np.empty(max(n, 1), dtype)
        setattr(_tls, name, buf)
    return buf[:n].reshape(shape)


def drop_scratch(*names: str) -> None:
    """Frees this thread's scratch buffers of those names (the next scratch() call allocates anew)."""
    for name in names:
        if getattr(_tls, name, None) is not None:
            setattr(_tls, name, None)


def _readonly(a: np.ndarray) -> np.ndarray:
    # One Numba specialization: the kernels take weights, and every array fixed at load, read-only (mapped from
    # the file they are; arrays made at load are frozen here). Numba compiles a signature per writability.
    if a.flags.writeable:
        a = a.view()
        a.flags.writeable = False
    return a


def _check_raw(raw, qt: QType, n_per_row: int, what: str) -> np.ndarray:
    if not isinstance(raw, np.ndarray) or raw.dtype != np.uint8:
        raise InvalidArgumentError(f"{what}: weight rows must be a uint8 array, got {getattr(raw, 'dtype', type(raw))}")
    rb = qt.row_bytes(n_per_row)
    if raw.ndim == 1 and raw.size % rb == 0:
        raw = raw.reshape(-1, rb)
    if raw.ndim != 2 or raw.shape[1] != rb:
        raise InvalidArgumentError(
            f"{what}: {qt.name} rows of {n_per_row} values take {rb} bytes, got weight shape {raw.shape}")
    if not raw.flags.c_contiguous:
        raise InvalidArgumentError(f"{what}: weight rows must be C-contiguous")
    return _readonly(np.asarray(raw))


def _quantize_activations(x: np.ndarray, qt: QType) -> np.ndarray:
    """x [n_tok, n_in] f32 -> the weight type's dot format ([n_tok, bytes] uint8 or [n_tok, n_in] u16/f32)."""
    dt = qt.dot_type
    if dt is None:
        return x
    if dt == "F16":
        return x.astype(np.float16).view(np.uint16)
    if dt == "BF16":
        return _f32_to_bf16(x)
    aq = DOT_TYPES[dt]
    xq = scratch("xq", np.uint8, (x.shape[0], aq.row_bytes(x.shape[1])))
    if dt == "Q8_0" and x.shape[0] >= PARALLEL_QUANTIZE_MIN_TOKENS:
        from .._kernels.matmul_q8_0 import quantize_rows_q8_0_par
        quantize_rows_q8_0_par(xq, x)
    elif dt == "Q8_K" and x.shape[0] >= PARALLEL_QUANTIZE_MIN_TOKENS:
        from .._kernels.quants_k import quantize_rows_q8_k_par
        quantize_rows_q8_k_par(xq, x)
    else:
        aq.kernel("quantize_rows")(xq, x)
    return xq


def _f32_to_bf16(x: np.ndarray) -> np.ndarray:
    """Round to nearest even like ggml's fp32->bf16 (NaN kept quiet). [n_tok, n] f32 -> uint16."""
    u = x.view(np.uint32)
    r = ((u + (np.uint32(0x7FFF) + ((u >> np.uint32(16)) & np.uint32(1)))) >> np.uint32(16)).astype(np.uint16)
    nan = (u & np.uint32(0x7FFFFFFF)) > np.uint32(0x7F800000)
    if nan.any():
        r[nan] = ((u[nan] >> np.uint32(16)) | np.uint32(64)).astype(np.uint16)
    return r


def matmul(x: np.ndarray, raw: np.ndarray, ggml_type: int, out: np.ndarray | None = None,
           *, path: str | None = None) -> np.ndarray:
    """y = x @ W.T for W stored as raw GGUF rows.

    x: [n_tok, n_in] f32 C-contiguous; raw: [n_out, row_bytes] uint8 (read-only mmap view, never
    copied); out: optional [n_tok, n_out] f32 C-contiguous. Returns out.
    path: None picks by n_tok; "dot" forces the quantized-activation kernel, "blas" forces
    dequantize-tile + np.matmul, "amx" the AMX tiles (AMX_TYPES where amx_enabled(); tests and benchmarks).
    """
    if type(x) is not np.ndarray and (b := backend_of(x)) is not None:
        return b.matmul(x, raw, ggml_type, out)
    qt = get_qtype(ggml_type)
    if not isinstance(x, np.ndarray) or x.dtype != np.float32 or x.ndim != 2 or not x.flags.c_contiguous:
        raise InvalidArgumentError(
            f"matmul: x must be a C-contiguous float32 [n_tok, n_in] array, got "
            f"{getattr(x, 'dtype', type(x))} {getattr(x, 'shape', '')}")
    n_tok, n_in = x.shape
    if n_in == 0:
        raise InvalidArgumentError("matmul: x has rows of 0 values")
    raw = _check_raw(raw, qt, n_in, "matmul")
    n_out = raw.shape[0]
    if out is None:
        out = np.empty((n_tok, n_out), np.float32)
    elif (not isinstance(out, np.ndarray) or out.dtype != np.float32 or out.shape != (n_tok, n_out)
          or not out.flags.c_contiguous or not out.flags.writeable):
        raise InvalidArgumentError(f"matmul: out must be a writable C-contiguous float32 array of shape {(n_tok, n_out)}")
    if n_tok == 0 or n_out == 0:
        return out
    if path is None:
        path = _path_for(qt, n_tok)
    if path == "blas":
        _matmul_blas(out, x, raw, qt)
    elif path in ("dot", "amx"):
        if path == "amx" and (qt.name not in AMX_TYPES or not amx_enabled()):
            raise InvalidArgumentError(f"matmul: no AMX path for {qt.name} weights on this machine")
        _matmul_q(out, raw, _quantize_activations(x, qt), qt, path)
    else:
        raise InvalidArgumentError(f"matmul: unknown path {path!r} (use 'dot', 'blas' or 'amx')")
    return out


def _matmul_q(out: np.ndarray, raw: np.ndarray, xq: np.ndarray, qt: QType, path: str) -> None:
    """out = x @ W.T from x's quantized rows xq: the AMX tiles (path "amx") or the dot kernel ("dot")."""
    if path == "amx":
        from .._kernels.amx_matmul import matmul_q_amx
        matmul_q_amx(out, raw, xq, qt.code, _amx_state[0][1])
    else:
        qt.kernel("matmul")(out, raw, xq)


def dot_path(ggml_type: int, n_tok: int) -> bool:
    """Whether matmul runs n_tok tokens through the per-token dot kernels (not AMX tiles, not dequantize + BLAS)."""
    return _path_for(get_qtype(ggml_type), n_tok) == "dot"


def quantized_path(ggml_type: int, n_tok: int) -> bool:
    """Whether matmul multiplies quantized activations for n_tok tokens (the dot kernels or AMX tiles)."""
    return _path_for(get_qtype(ggml_type), n_tok) != "blas"


def matmul_id(x: np.ndarray, raw: np.ndarray, ggml_type: int, w_row0, x_row, n_out: int,
              out: np.ndarray | None = None) -> np.ndarray:
    """Grouped matmul (ggml's mul_mat_id): out[g] = x[x_row[g]] @ raw[w_row0[g] : w_row0[g] + n_out].T.

    One kernel launch for all groups: the experts a decoded token was routed to, or MLA's per-head
    W_UK / W_UV blocks. x: [n_x, n_in] f32; raw: [n_rows, row_bytes] uint8 (any row stride between
    groups: w_row0 holds each group's first row); w_row0, x_row: [n_group] ints. Returns [n_group, n_out] f32.
    Always the dot path (one activation row per group), as llama.cpp runs mul_mat_id for single tokens.
    """
    qt = get_qtype(ggml_type)
    if not isinstance(x, np.ndarray) or x.dtype != np.float32 or x.ndim != 2 or not x.flags.c_contiguous:
        raise InvalidArgumentError("matmul_id: x must be a C-contiguous float32 [n_x, n_in] array")
    n_x, n_in = x.shape
    raw = _check_raw(raw, qt, n_in, "matmul_id")
    w_row0 = np.ascontiguousarray(w_row0, dtype=np.int64).reshape(-1)
    x_row = np.ascontiguousarray(x_row, dtype=np.int64).reshape(-1)
    n_group = w_row0.shape[0]
    if x_row.shape[0] != n_group:
        raise InvalidArgumentError(f"matmul_id: {n_group} weight groups but {x_row.shape[0]} activation rows")
    if n_out <= 0 or (n_group and not _rows_in_range(w_row0, 0, raw.shape[0] - n_out)):
        raise InvalidArgumentError(f"matmul_id: groups of {n_out} rows must lie inside the {raw.shape[0]} weight rows")
    if n_group and not _rows_in_range(x_row, 0, n_x - 1):
        raise InvalidArgumentError(f"matmul_id: activation rows must be in [0, {n_x})")
    if out is None:
        out = np.empty((n_group, n_out), np.float32)
    elif (not isinstance(out, np.ndarray) or out.dtype != np.float32 or out.shape != (n_group, n_out)
          or not out.flags.c_contiguous or not out.flags.writeable):
        raise InvalidArgumentError(f"matmul_id: out must be a writable C-contiguous float32 {(n_group, n_out)} array")
    if n_group == 0:
        return out
    name, kind = ("matmul_id_k" if qt.dot_type == "Q8_K" else "matmul_id_q"), qt.code
    kernel = _KERNEL_CACHE_ID.get(name)
    if kernel is None:
        import importlib
        kernel = _KERNEL_CACHE_ID[name] = getattr(importlib.import_module(qt.module), name)
    xq = _quantize_activations(x, qt)
    kernel(out, raw, xq, w_row0, x_row, kind)
    return out


_KERNEL_CACHE_ID: dict[str, object] = {}


def _rows_in_range(a: np.ndarray, lo: int, hi: int) -> bool:
    """lo <= a[i] <= hi for all i: one pass (decode validates ~100 small index arrays per token)."""
    from .._kernels.matmul_q8_0 import all_in_range
    return bool(all_in_range(a, np.int64(lo), np.int64(hi)))


def matmul_multi(x: np.ndarray, weights) -> list[np.ndarray]:
    """[x @ W.T for W in weights] sharing the activation quantization between weights of one dot type.

    weights: sequence of (raw, ggml_type). Used for Q/K/V and gate/up, which read the same input.
    """
    if type(x) is not np.ndarray and (b := backend_of(x)) is not None:
        return b.matmul_multi(x, weights)
    n_tok = x.shape[0] if isinstance(x, np.ndarray) and x.ndim == 2 else 0
    outs: list = [None] * len(weights)
    shared: dict[str, np.ndarray] = {}
    for i, (raw, ggml_type) in enumerate(weights):
        qt = get_qtype(ggml_type)
        path = _path_for(qt, n_tok) if n_tok else "blas"
        if path != "blas" and qt.dot_type in DOT_TYPES:
            # validate as matmul would, then reuse one quantized copy of x per dot type
            if x.dtype != np.float32 or not x.flags.c_contiguous:
                raise InvalidArgumentError("matmul: x must be a C-contiguous float32 [n_tok, n_in] array")
            raw = _check_raw(raw, qt, x.shape[1], "matmul")
            xq = shared.get(qt.dot_type)
            if xq is None:
                xq = shared[qt.dot_type] = _quantize_activations(x, qt).copy()
            out = np.empty((n_tok, raw.shape[0]), np.float32)
            if raw.shape[0]:
                _matmul_q(out, raw, xq, qt, path)
            outs[i] = out
        else:
            outs[i] = matmul(x, raw, ggml_type)
    return outs


def quantized_rows(x: np.ndarray, ggml_type: int) -> np.ndarray | None:
    """x [n_tok, n_in] f32 in the activation format of ggml_type's dot kernels ([n_tok, bytes] uint8, a new
    array), or None where that type's kernels read f32/f16/bf16. Rows are quantized one by one, so a row
    gather of the result is the quantization of the gathered rows (for matmul_quantized)."""
    qt = get_qtype(ggml_type)
    if qt.dot_type not in DOT_TYPES:
        return None
    if not isinstance(x, np.ndarray) or x.dtype != np.float32 or x.ndim != 2 or not x.flags.c_contiguous:
        raise InvalidArgumentError("quantized_rows: x must be a C-contiguous float32 [n_tok, n_in] array")
    if x.shape[1] % DOT_TYPES[qt.dot_type].block_size:
        raise InvalidArgumentError(f"quantized_rows: {x.shape[1]} values per row is not a multiple of "
                                   f"{qt.dot_type}'s block of {DOT_TYPES[qt.dot_type].block_size}")
    return _quantize_activations(x, qt).copy()


def matmul_quantized(xq: np.ndarray, raw: np.ndarray, ggml_type: int, n_in: int) -> np.ndarray:
    """x @ W.T from x's rows as quantized_rows gave them (or a row gather of those): the bits matmul gives
    for x on its dot or AMX path. Raises where matmul would take the BLAS path for xq.shape[0] tokens
    (check quantized_path first). Returns [n_tok, n_out] f32."""
    qt = get_qtype(ggml_type)
    dt = DOT_TYPES.get(qt.dot_type)
    if (dt is None or not isinstance(xq, np.ndarray) or xq.dtype != np.uint8 or xq.ndim != 2
            or not xq.flags.c_contiguous or n_in % dt.block_size or xq.shape[1] != dt.row_bytes(n_in)):
        raise InvalidArgumentError(f"matmul_quantized: xq must be C-contiguous uint8 rows of {n_in} values in "
                                   f"{qt.dot_type} (quantized_rows)")
    raw = _check_raw(raw, qt, n_in, "matmul_quantized")
    n_tok = xq.shape[0]
    path = _path_for(qt, n_tok)
    if path == "blas":
        raise InvalidArgumentError(f"matmul_quantized: {qt.name} x {n_tok} tokens runs on the BLAS path")
    out = np.empty((n_tok, raw.shape[0]), np.float32)
    if n_tok and raw.shape[0]:
        _matmul_q(out, raw, xq, qt, path)
    return out


def _activations_as_dotted(x: np.ndarray, qt: QType) -> np.ndarray:
    """x rounded through the weight type's activation format and back to f32.

    llama.cpp quantizes activations for prompt chunks too (vec_dot and llamafile sgemm alike), so the
    BLAS path multiplies the same values the integer kernel would: prefill matches single decodes and
    llama.cpp's prompt logits much more closely than raw f32 activations would.
    """
    dt = qt.dot_type
    if dt is None:
        return x
    if dt == "F16":
        return x.astype(np.float16).astype(np.float32)
    if dt == "BF16":
        return (_f32_to_bf16(x).astype(np.uint32) << np.uint32(16)).view(np.float32)
    xq = _quantize_activations(x, qt)  # [n_tok, nb*block_bytes] uint8
    n_tok, n_in = x.shape
    aq = DOT_TYPES[dt]
    if dt == "Q8_0":   # the Numba dequantizer: bit-exact, and no numpy temporaries
        out = np.empty((n_tok, n_in), np.float32)
        aq.kernel("dequant_rows")(out, xq)
        return out
    blocks = xq.reshape(n_tok, n_in // aq.block_size, aq.type_size)
    if dt == "Q8_K":  # f32 d, int8 qs[256], int16 bsums[16]
        d = blocks[:, :, 0:4].copy().view(np.float32)
        qs = blocks[:, :, 4:260].view(np.int8)
    else:
        raise InvalidArgumentError(f"no activation round trip for {dt}")
    return np.ascontiguousarray((d * qs).reshape(n_tok, n_in), dtype=np.float32)


# The BLAS path's row tiles: at most blas_tile_bytes of f32 weights each, and at least BLAS_MIN_TILES tiles
# (fewer only where the matrix has fewer 16-row groups), the groups dealt out evenly, so that the pool's
# workers finish together (2 MiB tiles of a 1024 x 640 matrix would be 819 + 205 rows). The tiles follow from
# the shape alone: the result does not depend on the thread count.
BLAS_MIN_TILES = 4


def _blas_tiles(n_out: int, n_in: int) -> list[tuple[int, int]]:
    n_grp = -(-n_out // 16)
    if n_grp == 0:
        return []
    per = max(1, min(n_grp, paths.current().blas_tile_bytes // (4 * n_in) // 16))
    n_tiles = max(-(-n_grp // per), min(n_grp, BLAS_MIN_TILES))
    bounds = [min(n_out, i * n_grp // n_tiles * 16) for i in range(n_tiles + 1)]
    return list(zip(bounds[:-1], bounds[1:]))


def _matmul_blas(out: np.ndarray, x: np.ndarray, raw: np.ndarray, qt: QType) -> None:
    import numba

    x = _activations_as_dotted(x, qt)
    n_out, n_in = raw.shape[0], x.shape[1]
    deq = qt.kernel("dequant_rows")

    def run(rows):
        r0, r1 = rows
        wt = scratch("wtile", np.float32, (r1 - r0, n_in))  # [tile, n_in] f32, per worker thread
        deq(wt, raw[r0:r1])
        np.matmul(x, wt.T, out=out[:, r0:r1])

    tiles = _blas_tiles(n_out, n_in)
    blas_pool().map(run, min(numba.get_num_threads(), len(tiles)), tiles)


def warmup(weights: dict) -> None:
    """Loads (or compiles) the dot and BLAS kernels of each weight type: {(ggml_type, n_in): raw}.

    Runs on a one-row slice of each weight (same Numba types as the real calls), so it costs almost
    nothing beyond the kernel loading itself.
    """
    for (ggml_type, n_in), raw in weights.items():
        x = np.zeros((1, n_in), np.float32)
        rows = raw[:1]
        matmul(x, rows, ggml_type, path="dot")
        matmul(x, rows, ggml_type, path="blas")


def get_rows(raw: np.ndarray, ggml_type: int, ids, n_per_row: int) -> np.ndarray:
    """Embedding lookup: dequantize only the rows `ids` of raw. Returns [len(ids), n_per_row] f32
    (on the device of ids when ids is a device tensor)."""
    if type(ids) is not np.ndarray and (b := backend_of(ids)) is not None:
        return b.get_rows(raw, ggml_type, ids, n_per_row)
    qt = get_qtype(ggml_type)
    raw = _check_raw(raw, qt, n_per_row, "get_rows")
    ids = np.asarray(ids)
    if ids.ndim != 1 or not (np.issubdtype(ids.dtype, np.integer) or ids.size == 0):
        raise InvalidArgumentError(f"get_rows: ids must be a 1-D integer array, got {ids.dtype} {ids.shape}")
    if ids.size and (ids.min() < 0 or ids.max() >= raw.shape[0]):
        bad = ids[(ids < 0) | (ids >= raw.shape[0])][0]
        raise InvalidArgumentError(f"get_rows: row id {int(bad)} out of range [0, {raw.shape[0]})")
    out = np.empty((ids.size, n_per_row), np.float32)
    if ids.size:
        qt.kernel("dequant_rows")(out, _readonly(raw[ids.astype(np.int64)]))
    return out


def dequantize(raw: np.ndarray, ggml_type: int, n_per_row: int) -> np.ndarray:
    """All rows of raw as f32 [n_rows, n_per_row] (raw: [n_rows, row_bytes] or flat uint8)."""
    qt = get_qtype(ggml_type)
    raw = _check_raw(raw, qt, n_per_row, "dequantize")
    out = np.empty((raw.shape[0], n_per_row), np.float32)
    if raw.shape[0]:
        qt.kernel("dequant_rows")(out, raw)
    return out
