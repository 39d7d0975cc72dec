"""Kernels for the formats whose activations are Q8_0 or f32: Q8_0, Q4_0, Q5_0 (ggml's 32-value type-0
blocks) and F32, F16, BF16.

Row dequantizers (bit-exact with gguf.quants.dequantize), the Q8_0 activation quantizer and the
matmuls over raw GGUF weight bytes (the block dots are in dots_q8_0.py; the k-quants, whose activations
are Q8_K, in quants_k.py). Leaf module: numpy, numba and sibling kernel modules only.
Shapes are numpy (row-major) order. Weights are uint8 [n_out, row_bytes] rows straight from the mmap.
"""

import numpy as np
from numba import njit, prange

from . import codes
from .config import FASTMATH
from .simd import PREFETCH_BYTES, dequant_row_f16, dot_bf16_bf16, dot_f16_f16, dot_f32_f32, f32_to_f16
from .dots_q8_0 import AUX_BYTES, AUX_WORDS, NT, NT_WIDE, Q8_0_VNNI_BIAS, ROWS, WIDE_TILES
from .dots_q8_0 import aux_row_q8_0, quantize_row_q8_0
from .dots_q8_0 import dequant_row_q4_0, dequant_row_q5_0, dequant_row_q8_0, dot_q4_0_q8_0, dot_q5_0_q8_0, dot_q8_0_q8_0
from .dots_q8_0 import gemm16_q5_0_q8_0
from .dots_q8_0 import gemm4_q4_0_q8_0, gemm4_q5_0_q8_0, gemm4_q8_0_q8_0, gemm_q4_0_q8_0, gemm_q5_0_q8_0, gemm_q8_0_q8_0
from .dots_q8_0 import rows8_q4_0_q8_0, rows8_q5_0_q8_0, rows8_q8_0_q8_0
from .dots_q8_0 import gemm2_q4_0_q8_0, gemm2_q5_0_q8_0, gemm2_q8_0_q8_0

QK = 32               # elements per block
Q8_0_BYTES = 34       # f16 d + int8 qs[32]
Q4_0_BYTES = 18       # f16 d + u8 qs[16]
Q5_0_BYTES = 22       # f16 d + u32 qh + u8 qs[16]
ROW_TILE = 16         # output rows per parallel work item of the one-token matmuls (a multiple of ROWS)
# weight kinds of the kernels that take one (matmul_q, matmul_id_q, the fused MoE decode)
KIND_Q8_0, KIND_Q4_0, KIND_Q5_0 = codes.Q8_0, codes.Q4_0, codes.Q5_0
KIND_F16, KIND_BF16, KIND_F32 = codes.F16, codes.BF16, codes.F32

# Dequantize/quantize kernels run without fast-math: they must be bit-exact (arcp would turn
# amax/127 into amax*(1/127)); they vectorize without it since nothing is reduced.
# The dequantizers are serial: the BLAS path of ops.matmul runs them on its own worker threads.


# ------------------------------------------------------------------------------- dequant


@njit(cache=True, nogil=True)
def dequant_rows_f32(dst, src):
    """Copy raw F32 rows out as f32.

    dst: [n_rows, n] f32; src: [n_rows, 4*n] uint8.
    """
    for r in range(dst.shape[0]):
        dst[r, :] = src[r].view(np.float32)


@njit(cache=True, nogil=True)
def dequant_rows_f16(dst, src):
    """IEEE half rows -> f32 (signalling NaNs kept as numpy does).

    dst: [n_rows, n] f32; src: [n_rows, 2*n] uint8.
    """
    n = np.int64(dst.shape[1])
    for r in range(dst.shape[0]):
        dequant_row_f16(np.int64(dst[r].ctypes.data), np.int64(src[r].ctypes.data), n)


@njit(cache=True, nogil=True)
def dequant_rows_bf16(dst, src):
    """bfloat16 rows -> f32 (the top 16 bits of an f32).

    dst: [n_rows, n] f32; src: [n_rows, 2*n] uint8.
    """
    for r in range(dst.shape[0]):
        s = src[r].view(np.uint16)
        d = dst[r].view(np.uint32)
        for i in range(d.shape[0]):
            d[i] = np.uint32(s[i]) << np.uint32(16)


@njit(cache=True, nogil=True)
def dequant_rows_q8_0(dst, src):
    """Q8_0 rows -> f32: x = d * q.

    dst: [n_rows, n] f32; src: [n_rows, n/32*34] uint8 (block_q8_0: f16 d, int8 qs[32]).
    """
    nb = np.int64(dst.shape[1] // QK)
    for r in range(dst.shape[0]):
        dequant_row_q8_0(np.int64(dst[r].ctypes.data), np.int64(src[r].ctypes.data), nb)


@njit(cache=True, nogil=True)
def dequant_rows_q4_0(dst, src):
    """Q4_0 rows -> f32: x[j] = d*((qs[j]&15)-8), x[j+16] = d*((qs[j]>>4)-8).

    dst: [n_rows, n] f32; src: [n_rows, n/32*18] uint8 (block_q4_0: f16 d, u8 qs[16]).
    """
    nb = np.int64(dst.shape[1] // QK)
    for r in range(dst.shape[0]):
        dequant_row_q4_0(np.int64(dst[r].ctypes.data), np.int64(src[r].ctypes.data), nb)


@njit(cache=True, nogil=True)
def dequant_rows_q5_0(dst, src):
    """Q5_0 rows -> f32: 4 low bits from the nibbles as Q4_0, bit 4 of element j is bit j of qh; minus 16.

    dst: [n_rows, n] f32; src: [n_rows, n/32*22] uint8 (block_q5_0: f16 d, u32 qh, u8 qs[16]).
    """
    nb = np.int64(dst.shape[1] // QK)
    for r in range(dst.shape[0]):
        dequant_row_q5_0(np.int64(dst[r].ctypes.data), np.int64(src[r].ctypes.data), nb)


@njit(cache=True, nogil=True)
def quantize_rows_q8_0(dst, src):
    """f32 rows -> Q8_0 as llama.cpp's x86 (AVX/AVX2) quantize_row_q8_0 does it.

    d = amax/127 stored as f16 (round to nearest even), q = rint(x * (127/amax)) with ties to even.
    (quantize_row_q8_0_ref instead multiplies by 1/d and rounds ties away from zero; the two
    differ by one unit on rare ties. We follow the path llama.cpp runs on this hardware.)
    dst: [n_rows, n/32*34] uint8; src: [n_rows, n] f32.
    """
    nb = src.shape[1] // QK
    for r in range(src.shape[0]):
        _quantize_blocks_q8_0(dst[r], src[r], np.int64(0), nb)


@njit(cache=True, nogil=True, parallel=True)
def quantize_rows_q8_0_par(dst, src):
    """quantize_rows_q8_0 with the rows spread over the threads (prompt batches)."""
    nb = src.shape[1] // QK
    for r in prange(src.shape[0]):
        _quantize_blocks_q8_0(dst[r], src[r], np.int64(0), nb)


@njit(cache=True, nogil=True)
def _quantize_blocks_q8_0(out, x, b0, b1):
    """Blocks [b0, b1) of one row: x [n] f32 -> out [n/32*34] uint8 (quantize_rows_q8_0's arithmetic:
    the vector intrinsic where the row is contiguous, else this loop)."""
    if x.strides[0] == 4 and b1 > b0:
        quantize_row_q8_0(np.int64(out.ctypes.data) + b0 * Q8_0_BYTES, np.int64(x.ctypes.data) + b0 * QK * 4,
                          np.int64(b1 - b0))
        return
    qs = out.view(np.int8)
    for b in range(b0, b1):
        amax = np.float32(0.0)
        for j in range(QK):
            amax = max(amax, abs(x[b * QK + j]))
        d = amax / np.float32(127.0)
        h = f32_to_f16(d)
        o = b * Q8_0_BYTES
        out[o] = np.uint8(h & np.uint16(0xFF))
        out[o + 1] = np.uint8(h >> np.uint16(8))
        idv = np.float32(127.0) / amax if amax != np.float32(0.0) else np.float32(0.0)
        for j in range(QK):
            qs[o + 2 + j] = np.int8(np.rint(x[b * QK + j] * idv))


# ------------------------------------------------------------------------------ matmuls
# dst[t, r] = dot(w[r], x[t]). Parallel over tiles of output rows; each weight row is read from
# memory once and then reused from the caches for every token. Every output is one fixed-order dot,
# so the result does not depend on the thread count (nor, for the block formats, on the batching).


@njit(cache=True, nogil=True)
def x_aux_q8_0(dst, xq, bias):
    """Per activation block, the words the block dots read besides the quants (dots_q8_0.AUX_WORDS).

    dst[t, b, 0] = -bias * sum(qs): the bias term of weights stored as q + bias, which does not depend
    on the weight row; dst[t, b, 1] = dx as f32 bits.
    dst: [n_tok, nb, 2] int32; xq: [n_tok, nb*34] uint8 (block_q8_0); bias: Q4_0 8, Q5_0 16, Q8_0 128.
    """
    for t in range(dst.shape[0]):
        _x_aux_blocks(dst[t], xq[t], bias, np.int64(0), dst.shape[1])


@njit(cache=True, nogil=True)
def _x_aux_blocks(dst, xq, bias, b0, b1):
    """Blocks [b0, b1) of one row of x_aux_q8_0: dst [nb, 2] int32 (C-contiguous), xq [nb*34] uint8."""
    if b1 > b0:
        aux_row_q8_0(np.int64(dst.ctypes.data) + b0 * AUX_BYTES, np.int64(xq.ctypes.data) + b0 * Q8_0_BYTES,
                     np.int64(b1 - b0), np.int64(bias))


# Prompt-sized batches run in cache blocks: a work item is a tile of output rows (about TILE_BYTES of
# weights, reused from L2 for every token chunk) and walks the tokens in chunks whose activations
# (quants + aux words, about CHUNK_BYTES) stay in L2 while every 8-row group of the tile passes over
# them; the gemm_* intrinsics then multiply ROWS rows x NT tokens per pass.
# A matrix's rows split into at least MIN_ITEMS items (fewer only where it has fewer 8-row groups), the
# groups dealt out evenly: the parallel loop's equal split of the items is then an equal split of the work
# on any thread count (3 tiles of TILE_BYTES on 2 threads would be a 2:1 split).
TILE_BYTES = 48 << 10
CHUNK_BYTES = 128 << 10
MIN_ITEMS = 16


@njit(cache=True, nogil=True)
def _pad_tail(xq, xc, t0, m, n_pad):
    """Zero-padded copies of tokens t0 .. t0+m of xq [n_tok, bytes] and xc [n_tok, nb, 2]: [n_pad, ...]
    ([0, ...] when m = 0). Serial: in a parallel kernel each fill would be a parallel launch of its own."""
    n = n_pad if m > 0 else 0
    xq_pad = np.zeros((n, xq.shape[1]), np.uint8)
    xc_pad = np.zeros((n, xc.shape[1], xc.shape[2]), np.int32)
    for i in range(m):
        xq_pad[i] = xq[t0 + i]
        xc_pad[i] = xc[t0 + i]
    return xq_pad, xc_pad


@njit(cache=True, nogil=True)
def keep_alive(a, b, c=None):
    """A use of the arrays whose addresses a parallel loop took: call it after the loop (Numba frees an array
    after the last use of its name, so an address kept in an int would otherwise point at reused memory)."""
    n = a.size + b.size
    if c is not None:
        n += c.size
    return n


@njit(cache=True, nogil=True)
def _pad_out(n_it):
    """[n_it, 4, ROWS] f32 outputs of the padded passes, one slot per work item."""
    return np.empty((n_it, 4, ROWS), np.float32)


@njit(cache=True, nogil=True, fastmath=FASTMATH, parallel=True)
def matmul_q(dst, w, xq, kind, tile_bytes, chunk_bytes):
    """dst[t, r] = dot(w[r], xq[t]) for Q8_0/Q4_0/Q5_0 weights (kind: KIND_*) and Q8_0 activations:
    per block the exact isum(qw*qx), times dw*dx, accumulated in f32 (dots_q8_0's block dots).

    dst: [n_tok, n_out] f32 (C-contiguous, checked by ops.matmul); w: [n_out, row_bytes] uint8;
    xq: [n_tok, n_in/32*34] uint8; tile_bytes, chunk_bytes: the cache blocking (TILE_BYTES, CHUNK_BYTES).

    Every 8-row group takes the tokens NT_WIDE at a time (Q5_0 where WIDE_TILES), NT at a time, then 4,
    then 2, then a last single token alone; a last 3 tokens are one 4-token pass over zero-padded copies of
    their activations (the padding columns' outputs are dropped): each weight block is unpacked once per
    pass, a padded 4-token pass costs less than 2 + 1, while an NT-token pass for 5-7 tokens costs more than
    4 + the rest, and a 2-token pass costs about one token's (a padded 4-token pass for 2 costs more). Each
    token's column of a tile is computed alone, so its bits do not depend on the pass it is in.
    """
    n_tok, n_out = dst.shape
    nb = np.int64(xq.shape[1] // Q8_0_BYTES)
    xc = np.empty((n_tok, nb, AUX_WORDS), np.int32)  # [n_tok, nb, 2] i32 aux words
    x_aux_q8_0(xc, xq, _q_bias(kind))
    # the padded tail: its m tokens (t_pad ..) in one 4-token pass (m = 0: none)
    m = 3 if n_tok % 4 == 3 else 0
    t_pad = n_tok - m if m > 0 else n_tok  # (n_tok: no token starts the padded pass)
    xq_pad, xc_pad = _pad_tail(xq, xc, t_pad, m, np.int64(4))
    wp, ws = np.int64(w.ctypes.data), np.int64(w.strides[0])
    xp, xs = np.int64(xq.ctypes.data), np.int64(xq.strides[0])
    xps = np.int64(xq_pad.strides[0])
    cs = np.int64(nb * AUX_BYTES)
    pf = np.int64(PREFETCH_BYTES)
    dp = np.int64(dst.ctypes.data)
    n_grp = (n_out + ROWS - 1) // ROWS
    if n_tok < 2:  # one-token dots: small tiles spread the weight stream over the threads
        per = ROW_TILE // ROWS
    else:
        per = max(1, min(n_grp, tile_bytes // max(ws, 1) // ROWS))
    # work item i: the 8-row groups [i*n_grp//n_it, (i+1)*n_grp//n_it)
    n_it = max((n_grp + per - 1) // per, min(n_grp, MIN_ITEMS))
    nt = NT_WIDE if WIDE_TILES and kind == KIND_Q5_0 else NT  # tokens of the widest pass
    chunk = max(nt, chunk_bytes // (nb * (Q8_0_BYTES + AUX_BYTES)) // nt * nt)
    out_pad = _pad_out(n_it if m > 0 else 0)  # [work item, token, row] outputs of the padded pass
    # addresses taken once, not per work item (each .ctypes is a reference count update shared by the threads)
    xpp, cpp, opp0 = np.int64(xq_pad.ctypes.data), np.int64(xc_pad.ctypes.data), np.int64(out_pad.ctypes.data)
    for it in prange(n_it):
        cp = np.int64(xc.ctypes.data)  # taken here so that xc stays alive until the loop ends
        opp = opp0 + it * (4 * ROWS * 4)
        r0, r1 = it * n_grp // n_it * ROWS, min((it + 1) * n_grp // n_it * ROWS, n_out)
        for t0 in range(0, n_tok, chunk):
            t1 = min(t0 + chunk, n_tok)
            r = r0
            while r + ROWS <= r1:
                t = t0
                while t < t1:  # nt tokens per pass, then NT, 4, the padded tail or the one token
                    if t == t_pad:
                        n, x0, xs0, c0, d0, ds0 = 4, xpp, xps, cpp, opp, np.int64(ROWS)
                    else:
                        n = tile_tokens(t1 - t, nt)
                        x0, xs0, c0 = xp + t * xs, xs, cp + t * cs
                        d0, ds0 = dp + (t * n_out + r) * 4, np.int64(n_out)
                    _tile_q(kind, n, wp + r * ws, ws, x0, xs0, c0, cs, nb, d0, ds0, pf)
                    if t == t_pad:
                        for i in range(m):
                            for j in range(ROWS):
                                dst[t + i, r + j] = out_pad[it, i, j]
                        n = m
                    t += n
                r += ROWS
            if r < r1:  # the last rows of the matrix, one by one
                for t in range(t0, t1):
                    _rows_q(kind, wp, ws, r, r1, xp + t * xs, cp + t * cs, nb, dst[t], pf)
    keep_alive(xq_pad, xc_pad, out_pad)


@njit(cache=True, nogil=True, inline="always")
def tile_tokens(left, widest):
    """Tokens of the next _tile_q pass with `left` tokens to go: widest (NT_WIDE or NT), NT, 4, 2 or 1."""
    if left >= widest:
        return widest
    return NT if left >= NT else (4 if left >= 4 else (2 if left >= 2 else 1))


@njit(cache=True, nogil=True, fastmath=FASTMATH, inline="always")
def _tile_q(kind, n, wp, ws, xp, xs, cp, cs, nb, dp, ds, pf):
    """ROWS rows x n tokens (NT_WIDE for Q5_0, NT, 4, 2 or 1) of kind KIND_Q8_0/Q4_0/Q5_0 (simd gemm16_q5_0,
    gemm_*, gemm4_*, gemm2_*, rows8_*)."""
    if kind == KIND_Q4_0:
        if n == NT:
            gemm_q4_0_q8_0(wp, ws, xp, xs, cp, cs, nb, dp, ds, pf)
        elif n == 4:
            gemm4_q4_0_q8_0(wp, ws, xp, xs, cp, cs, nb, dp, ds, pf)
        elif n == 2:
            gemm2_q4_0_q8_0(wp, ws, xp, xs, cp, cs, nb, dp, ds, pf)
        else:
            rows8_q4_0_q8_0(wp, ws, xp, xs, cp, cs, nb, dp, ds, pf)
    elif kind == KIND_Q8_0:
        if n == NT:
            gemm_q8_0_q8_0(wp, ws, xp, xs, cp, cs, nb, dp, ds, pf)
        elif n == 4:
            gemm4_q8_0_q8_0(wp, ws, xp, xs, cp, cs, nb, dp, ds, pf)
        elif n == 2:
            gemm2_q8_0_q8_0(wp, ws, xp, xs, cp, cs, nb, dp, ds, pf)
        else:
            rows8_q8_0_q8_0(wp, ws, xp, xs, cp, cs, nb, dp, ds, pf)
    else:
        if n == NT_WIDE:
            gemm16_q5_0_q8_0(wp, ws, xp, xs, cp, cs, nb, dp, ds, pf)
        elif n == NT:
            gemm_q5_0_q8_0(wp, ws, xp, xs, cp, cs, nb, dp, ds, pf)
        elif n == 4:
            gemm4_q5_0_q8_0(wp, ws, xp, xs, cp, cs, nb, dp, ds, pf)
        elif n == 2:
            gemm2_q5_0_q8_0(wp, ws, xp, xs, cp, cs, nb, dp, ds, pf)
        else:
            rows8_q5_0_q8_0(wp, ws, xp, xs, cp, cs, nb, dp, ds, pf)


@njit(cache=True, nogil=True)
def matmul_q8_0(dst, w, xq):
    """Q8_0 weights x Q8_0 activations (matmul_q)."""
    matmul_q(dst, w, xq, np.int64(KIND_Q8_0), np.int64(TILE_BYTES), np.int64(CHUNK_BYTES))


@njit(cache=True, nogil=True)
def matmul_q4_0(dst, w, xq):
    """Q4_0 weights x Q8_0 activations (matmul_q)."""
    matmul_q(dst, w, xq, np.int64(KIND_Q4_0), np.int64(TILE_BYTES), np.int64(CHUNK_BYTES))


@njit(cache=True, nogil=True)
def matmul_q5_0(dst, w, xq):
    """Q5_0 weights x Q8_0 activations (matmul_q)."""
    matmul_q(dst, w, xq, np.int64(KIND_Q5_0), np.int64(TILE_BYTES), np.int64(CHUNK_BYTES))


@njit(cache=True, nogil=True, fastmath=FASTMATH, inline="always")
def _dot_float(kind, wp, xp, n):
    """Dot of the n-element rows at addresses wp and xp, both of float kind KIND_F16 | KIND_BF16 | KIND_F32,
    products accumulated in f32 (ggml_vec_dot_f16 / _bf16)."""
    if kind == KIND_F16:
        return dot_f16_f16(wp, xp, n)
    if kind == KIND_BF16:
        return dot_bf16_bf16(wp, xp, n)
    return dot_f32_f32(wp, xp, n)


@njit(cache=True, nogil=True, fastmath=FASTMATH, parallel=True)
def matmul_float(dst, w, x, kind):
    """Float weights x activations of the same float kind (KIND_F16 | KIND_BF16 | KIND_F32).

    dst: [n_tok, n_out] f32; w: [n_out, n_in * elem bytes] uint8; x: [n_tok, n_in] uint16 (f16/bf16 bits) | f32.
    """
    n_tok, n_out = dst.shape
    n = np.int64(x.shape[1])
    wp, ws = np.int64(w.ctypes.data), np.int64(w.strides[0])
    xp, xs = np.int64(x.ctypes.data), np.int64(x.strides[0])
    for it in prange((n_out + ROW_TILE - 1) // ROW_TILE):
        for r in range(it * ROW_TILE, min(it * ROW_TILE + ROW_TILE, n_out)):
            for t in range(n_tok):
                dst[t, r] = _dot_float(kind, wp + r * ws, xp + t * xs, n)


@njit(cache=True, nogil=True)
def matmul_f16(dst, w, x):
    """F16 weights x f16 activations (matmul_float)."""
    matmul_float(dst, w, x, np.int64(KIND_F16))


@njit(cache=True, nogil=True)
def matmul_bf16(dst, w, x):
    """BF16 weights x bf16 activations (matmul_float)."""
    matmul_float(dst, w, x, np.int64(KIND_BF16))


@njit(cache=True, nogil=True)
def matmul_f32(dst, w, x):
    """F32 weights x f32 activations (matmul_float)."""
    matmul_float(dst, w, x, np.int64(KIND_F32))


# ------------------------------------------------------------------------- grouped matmul
# ggml's mul_mat_id for one activation row per group: MoE experts of a decoded token, MLA's per-head
# W_UK / W_UV. One parallel launch for every group instead of one call per group.


@njit(cache=True, nogil=True)
def all_in_range(a, lo, hi):
    """Whether lo <= a[i] <= hi for every i (the grouped matmul's index check). a: [n] int64."""
    for i in range(a.shape[0]):
        if a[i] < lo or a[i] > hi:
            return False
    return True


@njit(cache=True, nogil=True, fastmath=FASTMATH, parallel=True)
def matmul_id_q(dst, w, xq, w_row0, x_row, kind):
    """dst[g, r] = dot(w[w_row0[g] + r], xq[x_row[g]]) for the float and Q8_0-family formats (kind: KIND_*).

    dst: [n_group, n_out] f32; w: [n_rows, row_bytes] uint8; xq: [n_x, ...] the dot-type activations
    (Q8_0 bytes, f16/bf16 bits or f32); w_row0, x_row: [n_group] int64, validated by ops.matmul.
    """
    n_group, n_out = dst.shape
    wp, ws = np.int64(w.ctypes.data), np.int64(w.strides[0])
    xp, xs = np.int64(xq.ctypes.data), np.int64(xq.strides[0])
    pf = np.int64(PREFETCH_BYTES)
    if _is_block_q(kind):
        nb = np.int64(xq.shape[1] // Q8_0_BYTES)
        bias = _q_bias(kind)
    else:
        nb = np.int64(xq.shape[1])  # elements per row
        bias = np.int32(0)
    xc = np.empty((xq.shape[0], max(nb, 1) if _is_block_q(kind) else 1, AUX_WORDS), np.int32)
    if _is_block_q(kind):
        x_aux_q8_0(xc, xq, bias)
    cs = np.int64(xc.shape[1] * AUX_BYTES)
    n_tiles = (n_out + ROW_TILE - 1) // ROW_TILE
    for it in prange(n_group * n_tiles):
        cp0 = np.int64(xc.ctypes.data)
        g = it // n_tiles
        r0 = (it % n_tiles) * ROW_TILE
        r1 = min(r0 + ROW_TILE, n_out)
        wg = wp + w_row0[g] * ws
        xg = xp + x_row[g] * xs
        if _is_block_q(kind):
            _rows_q(kind, wg, ws, r0, r1, xg, cp0 + x_row[g] * cs, nb, dst[g], pf)
        else:
            for rr in range(r0, r1):
                dst[g, rr] = _dot_float(kind, wg + rr * ws, xg, nb)


@njit(cache=True, nogil=True, inline="always")
def _is_block_q(kind):
    """Whether kind is a block format dotted against Q8_0 activations (KIND_Q8_0 | KIND_Q4_0 | KIND_Q5_0)."""
    return kind == KIND_Q8_0 or kind == KIND_Q4_0 or kind == KIND_Q5_0


@njit(cache=True, nogil=True)
def _q_bias(kind):
    """The offset stored in a block's values (x_aux_q8_0's bias): Q8_0 (VNNI unsigned trick), Q4_0, Q5_0."""
    return np.int32(Q8_0_VNNI_BIAS) if kind == KIND_Q8_0 else (np.int32(8) if kind == KIND_Q4_0 else np.int32(16))


@njit(cache=True, nogil=True, fastmath=FASTMATH)
def _rows_q(kind, wg, ws, r0, r1, xg, cp, nb, dst, pf):
    """dst[r] = dot(row r of the weight block at wg, the Q8_0 activation row at xg) for r in [r0, r1).

    kind: KIND_Q8_0/Q4_0/Q5_0; wg: address of the block's row 0, ws its row stride; xg, cp: addresses of
    the activation row and of its aux words (x_aux_q8_0 with the kind's bias); nb: blocks per row;
    dst: [>= r1] f32 (C-contiguous); pf: prefetch distance in bytes. ROWS rows per pass, then one by one.
    """
    dp = np.int64(dst.ctypes.data)
    r = r0
    while r + ROWS <= r1:
        _tile_q(kind, 1, wg + r * ws, ws, xg, 0, cp, 0, nb, dp + r * 4, 0, pf)
        r += ROWS
    while r < r1:
        if kind == KIND_Q4_0:
            dst[r] = dot_q4_0_q8_0(wg + r * ws, xg, cp, nb, pf)
        elif kind == KIND_Q8_0:
            dst[r] = dot_q8_0_q8_0(wg + r * ws, xg, cp, nb, pf)
        else:
            dst[r] = dot_q5_0_q8_0(wg + r * ws, xg, cp, nb, pf)
        r += 1
