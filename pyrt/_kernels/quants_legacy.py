"""Kernels for the float and legacy block formats: F32, F16, BF16, Q8_0, Q4_0, Q5_0.

Row dequantizers (bit-exact with gguf.quants.dequantize), the Q8_0 activation quantizer and the
matmuls over raw GGUF weight bytes. Leaf module: numpy, numba and sibling kernel modules only.
Shapes are numpy (row-major) order. Weights are uint8 [n_out, row_bytes] rows straight from the mmap.
"""

import numpy as np
from numba import njit, prange

from .config import FASTMATH
from .simd import AUX_BYTES, AUX_WORDS, NT, PREFETCH_BYTES, Q8_0_VNNI_BIAS
from .simd import dot2_q4_0_q8_0, dot2_q5_0_q8_0, dot2_q8_0_q8_0, dot4_q4_0_q8_0, dot4_q5_0_q8_0, dot4_q8_0_q8_0
from .simd import (dequant_row_f16, dequant_row_q4_0, dequant_row_q5_0, dequant_row_q8_0, dot_bf16_bf16,
                   dot_f16_f16, dot_f32_f32, dot_q4_0_q8_0, dot_q5_0_q8_0, dot_q8_0_q8_0, f16_to_f32, f32_to_f16)

QK = 32               # elements per legacy block
Q8_0_BYTES = 34       # f16 d + int8 qs[32]
Q4_0_BYTES = 18       # f16 d + u8 qs[16]
Q5_0_BYTES = 22       # f16 d + u32 qh + u8 qs[16]
ROW_TILE = 4          # output rows per parallel work item of the matmuls

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
        x = src[r]
        out = dst[r]
        qs = out.view(np.int8)
        for b in range(nb):
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
# memory once and then reused from L1 for every token. Every output is one fixed-order dot, so the
# result does not depend on the thread count.


@njit(cache=True, nogil=True)
def x_aux_q8_0(dst, xq, bias):
    """Per activation block, the words the block dots read besides the quants (simd.AUX_WORDS).

    dst[t, b, j] = -bias * sum(qs[4j:4j+4]) for j < 8: the bias term of weights stored as q + bias,
    which does not depend on the weight row, in the dots' lane layout; dst[t, b, 8:16] = dx as f32 bits.
    dst: [n_tok, nb, 16] int32; xq: [n_tok, nb*34] uint8 (block_q8_0); bias: Q4_0 8, Q5_0 16, Q8_0 128.
    """
    n_tok, nb = dst.shape[0], dst.shape[1]
    for t in range(n_tok):
        qs = xq[t].view(np.int8)
        dxf = dst[t, :, 8:].view(np.float32)
        for b in range(nb):
            o = b * Q8_0_BYTES
            dxf[b, :] = f16_to_f32(np.uint16(xq[t, o]) | (np.uint16(xq[t, o + 1]) << np.uint16(8)))
            for j in range(8):
                s = (np.int32(qs[o + 2 + 4 * j]) + np.int32(qs[o + 3 + 4 * j])
                     + np.int32(qs[o + 4 + 4 * j]) + np.int32(qs[o + 5 + 4 * j]))
                dst[t, b, j] = -bias * s


@njit(cache=True, nogil=True, fastmath=FASTMATH, parallel=True)
def matmul_q8_0(dst, w, xq):
    """Q8_0 weights x Q8_0 activations: per block isum(qw*qx) * (dw*dx), summed in f32.

    dst: [n_tok, n_out] f32; w: [n_out, n_in/32*34] uint8; xq: [n_tok, n_in/32*34] uint8.
    """
    n_tok, n_out = dst.shape
    nb = np.int64(xq.shape[1] // Q8_0_BYTES)
    wp, ws = np.int64(w.ctypes.data), np.int64(w.strides[0])
    xp, xs = np.int64(xq.ctypes.data), np.int64(xq.strides[0])
    xc = np.empty((n_tok, nb, AUX_WORDS), np.int32)  # [n_tok, nb, 16] i32 aux words
    x_aux_q8_0(xc, xq, np.int32(Q8_0_VNNI_BIAS))
    cs = np.int64(nb * AUX_BYTES)
    pf = np.int64(PREFETCH_BYTES)
    dp = np.int64(dst.ctypes.data)  # dst is C-contiguous (checked by ops.matmul)
    for it in prange((n_out + ROW_TILE - 1) // ROW_TILE):
        cp = np.int64(xc.ctypes.data)  # taken here so that xc stays alive until the loop ends
        r0, r1 = it * ROW_TILE, min(it * ROW_TILE + ROW_TILE, n_out)
        for r in range(r0, r1):
            for t in range(0, n_tok - NT + 1, NT):  # NT tokens per pass over the (L1-resident) weight row
                dot4_q8_0_q8_0(wp + r * ws, xp + t * xs, xs, cp + t * cs, cs, nb, dp + (t * n_out + r) * 4, n_out,
                               pf)
        for t in range(n_tok - n_tok % NT, n_tok):  # the other tokens: two rows per pass
            r = r0
            while r + 2 <= r1:
                dot2_q8_0_q8_0(wp + r * ws, ws, xp + t * xs, cp + t * cs, nb, dp + (t * n_out + r) * 4, pf)
                r += 2
            if r < r1:
                dst[t, r] = dot_q8_0_q8_0(wp + r * ws, xp + t * xs, cp + t * cs, nb, pf)


@njit(cache=True, nogil=True, fastmath=FASTMATH, parallel=True)
def matmul_q4_0(dst, w, xq):
    """Q4_0 weights x Q8_0 activations (llama.cpp vec_dot_q4_0_q8_0).

    dst: [n_tok, n_out] f32; w: [n_out, n_in/32*18] uint8; xq: [n_tok, n_in/32*34] uint8.
    """
    n_tok, n_out = dst.shape
    nb = np.int64(xq.shape[1] // Q8_0_BYTES)
    xc = np.empty((n_tok, nb, AUX_WORDS), np.int32)  # [n_tok, nb, 16] i32 aux words
    x_aux_q8_0(xc, xq, np.int32(8))
    wp, ws = np.int64(w.ctypes.data), np.int64(w.strides[0])
    xp, xs = np.int64(xq.ctypes.data), np.int64(xq.strides[0])
    cs = np.int64(nb * AUX_BYTES)
    pf = np.int64(PREFETCH_BYTES)
    dp = np.int64(dst.ctypes.data)  # dst is C-contiguous (checked by ops.matmul)
    for it in prange((n_out + ROW_TILE - 1) // ROW_TILE):
        cp = np.int64(xc.ctypes.data)  # taken here so that xc stays alive until the loop ends
        r0, r1 = it * ROW_TILE, min(it * ROW_TILE + ROW_TILE, n_out)
        for r in range(r0, r1):
            for t in range(0, n_tok - NT + 1, NT):  # NT tokens per pass over the (L1-resident) weight row
                dot4_q4_0_q8_0(wp + r * ws, xp + t * xs, xs, cp + t * cs, cs, nb, dp + (t * n_out + r) * 4, n_out,
                               pf)
        for t in range(n_tok - n_tok % NT, n_tok):  # the other tokens: two rows per pass
            r = r0
            while r + 2 <= r1:
                dot2_q4_0_q8_0(wp + r * ws, ws, xp + t * xs, cp + t * cs, nb, dp + (t * n_out + r) * 4, pf)
                r += 2
            if r < r1:
                dst[t, r] = dot_q4_0_q8_0(wp + r * ws, xp + t * xs, cp + t * cs, nb, pf)


@njit(cache=True, nogil=True, fastmath=FASTMATH, parallel=True)
def matmul_q5_0(dst, w, xq):
    """Q5_0 weights x Q8_0 activations (llama.cpp vec_dot_q5_0_q8_0).

    dst: [n_tok, n_out] f32; w: [n_out, n_in/32*22] uint8; xq: [n_tok, n_in/32*34] uint8.
    """
    n_tok, n_out = dst.shape
    nb = np.int64(xq.shape[1] // Q8_0_BYTES)
    xc = np.empty((n_tok, nb, AUX_WORDS), np.int32)  # [n_tok, nb, 16] i32 aux words
    x_aux_q8_0(xc, xq, np.int32(16))
    wp, ws = np.int64(w.ctypes.data), np.int64(w.strides[0])
    xp, xs = np.int64(xq.ctypes.data), np.int64(xq.strides[0])
    cs = np.int64(nb * AUX_BYTES)
    pf = np.int64(PREFETCH_BYTES)
    dp = np.int64(dst.ctypes.data)  # dst is C-contiguous (checked by ops.matmul)
    for it in prange((n_out + ROW_TILE - 1) // ROW_TILE):
        cp = np.int64(xc.ctypes.data)  # taken here so that xc stays alive until the loop ends
        r0, r1 = it * ROW_TILE, min(it * ROW_TILE + ROW_TILE, n_out)
        for r in range(r0, r1):
            for t in range(0, n_tok - NT + 1, NT):  # NT tokens per pass over the (L1-resident) weight row
                dot4_q5_0_q8_0(wp + r * ws, xp + t * xs, xs, cp + t * cs, cs, nb, dp + (t * n_out + r) * 4, n_out,
                               pf)
        for t in range(n_tok - n_tok % NT, n_tok):  # the other tokens: two rows per pass
            r = r0
            while r + 2 <= r1:
                dot2_q5_0_q8_0(wp + r * ws, ws, xp + t * xs, cp + t * cs, nb, dp + (t * n_out + r) * 4, pf)
                r += 2
            if r < r1:
                dst[t, r] = dot_q5_0_q8_0(wp + r * ws, xp + t * xs, cp + t * cs, nb, pf)


@njit(cache=True, nogil=True, fastmath=FASTMATH, parallel=True)
def matmul_f16(dst, w, x):
    """F16 weights x f16 activations, products accumulated in f32 (ggml_vec_dot_f16).

    dst: [n_tok, n_out] f32; w: [n_out, 2*n_in] uint8; x: [n_tok, n_in] uint16 (half bits).
    """
    n_tok, n_out = dst.shape
    n = np.int64(x.shape[1])
    wp, ws = np.int64(w.ctypes.data), np.int64(w.strides[0])
    xp, xs = np.int64(x.ctypes.data), np.int64(x.strides[0])
    for it in prange((n_out + ROW_TILE - 1) // ROW_TILE):
        for r in range(it * ROW_TILE, min(it * ROW_TILE + ROW_TILE, n_out)):
            for t in range(n_tok):
                dst[t, r] = dot_f16_f16(wp + r * ws, xp + t * xs, n)


@njit(cache=True, nogil=True, fastmath=FASTMATH, parallel=True)
def matmul_bf16(dst, w, x):
    """BF16 weights x bf16 activations, products accumulated in f32 (ggml_vec_dot_bf16).

    dst: [n_tok, n_out] f32; w: [n_out, 2*n_in] uint8; x: [n_tok, n_in] uint16 (bf16 bits).
    """
    n_tok, n_out = dst.shape
    n = np.int64(x.shape[1])
    wp, ws = np.int64(w.ctypes.data), np.int64(w.strides[0])
    xp, xs = np.int64(x.ctypes.data), np.int64(x.strides[0])
    for it in prange((n_out + ROW_TILE - 1) // ROW_TILE):
        for r in range(it * ROW_TILE, min(it * ROW_TILE + ROW_TILE, n_out)):
            for t in range(n_tok):
                dst[t, r] = dot_bf16_bf16(wp + r * ws, xp + t * xs, n)


@njit(cache=True, nogil=True, fastmath=FASTMATH, parallel=True)
def matmul_f32(dst, w, x):
    """F32 weights x f32 activations.

    dst: [n_tok, n_out] f32; w: [n_out, 4*n_in] uint8; x: [n_tok, n_in] f32.
    """
    n_tok, n_out = dst.shape
    n = np.int64(x.shape[1])
    wp, ws = np.int64(w.ctypes.data), np.int64(w.strides[0])
    xp, xs = np.int64(x.ctypes.data), np.int64(x.strides[0])
    for it in prange((n_out + ROW_TILE - 1) // ROW_TILE):
        for r in range(it * ROW_TILE, min(it * ROW_TILE + ROW_TILE, n_out)):
            for t in range(n_tok):
                dst[t, r] = dot_f32_f32(wp + r * ws, xp + t * xs, n)


# ------------------------------------------------------------------------- grouped matmul
# ggml's mul_mat_id for one activation row per group: MoE experts of a decoded token, MLA's per-head
# W_UK / W_UV. One parallel launch for every group instead of one call per group.

KIND_Q8_0, KIND_Q4_0, KIND_Q5_0, KIND_F16, KIND_BF16, KIND_F32 = 0, 1, 2, 3, 4, 5


@njit(cache=True, nogil=True)
def all_in_range(a, lo, hi):
    """Whether lo <= a[i] <= hi for every i (the grouped matmul's index check). a: [n] int64."""
    for i in range(a.shape[0]):
        if a[i] < lo or a[i] > hi:
            return False
    return True


@njit(cache=True, nogil=True, fastmath=FASTMATH, parallel=True)
def matmul_id_legacy(dst, w, xq, w_row0, x_row, kind):
    """dst[g, r] = dot(w[w_row0[g] + r], xq[x_row[g]]) for the float and legacy formats (kind: KIND_*).

    dst: [n_group, n_out] f32; w: [n_rows, row_bytes] uint8; xq: [n_x, ...] the dot-type activations
    (Q8_0 bytes, f16/bf16 bits or f32); w_row0, x_row: [n_group] int64, validated by ops.matmul.
    """
    n_group, n_out = dst.shape
    wp, ws = np.int64(w.ctypes.data), np.int64(w.strides[0])
    xp, xs = np.int64(xq.ctypes.data), np.int64(xq.strides[0])
    dp = np.int64(dst.ctypes.data)
    pf = np.int64(PREFETCH_BYTES)
    if kind <= KIND_Q5_0:
        nb = np.int64(xq.shape[1] // Q8_0_BYTES)
        bias = np.int32(Q8_0_VNNI_BIAS) if kind == KIND_Q8_0 else (np.int32(8) if kind == KIND_Q4_0 else np.int32(16))
    else:
        nb = np.int64(xq.shape[1])  # elements per row
        bias = np.int32(0)
    xc = np.empty((xq.shape[0], max(nb, 1) if kind <= KIND_Q5_0 else 1, AUX_WORDS), np.int32)
    if kind <= KIND_Q5_0:
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
        cp = cp0 + x_row[g] * cs
        dg = dp + g * n_out * 4
        r = r0
        if kind <= KIND_Q5_0:
            while r + 2 <= r1:
                if kind == KIND_Q4_0:
                    dot2_q4_0_q8_0(wg + r * ws, ws, xg, cp, nb, dg + r * 4, pf)
                elif kind == KIND_Q8_0:
                    dot2_q8_0_q8_0(wg + r * ws, ws, xg, cp, nb, dg + r * 4, pf)
                else:
                    dot2_q5_0_q8_0(wg + r * ws, ws, xg, cp, nb, dg + r * 4, pf)
                r += 2
        for rr in range(r, r1):
            if kind == KIND_Q4_0:
                v = dot_q4_0_q8_0(wg + rr * ws, xg, cp, nb, pf)
            elif kind == KIND_Q8_0:
                v = dot_q8_0_q8_0(wg + rr * ws, xg, cp, nb, pf)
            elif kind == KIND_Q5_0:
                v = dot_q5_0_q8_0(wg + rr * ws, xg, cp, nb, pf)
            elif kind == KIND_F16:
                v = dot_f16_f16(wg + rr * ws, xg, nb)
            elif kind == KIND_BF16:
                v = dot_bf16_bf16(wg + rr * ws, xg, nb)
            else:
                v = dot_f32_f32(wg + rr * ws, xg, nb)
            dst[g, rr] = v
