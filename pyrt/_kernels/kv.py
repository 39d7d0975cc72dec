"""KV cache row kernels: stores (f32 rows into f32 / f16 / bf16 / q8_0 / q8_KV rows), moves, K-shift.

Leaf kernel module (numpy, numba only). Cache buffers are [size, row] arrays (numpy row-major shapes);
f16 and bf16 rows are handled as uint16 bits, q8_0 and q8_KV rows as raw bytes. q8_0: n/32 blocks of
f16 d + 32 int8. q8_KV (ik_llama.cpp): per segment of `seg` values (one head), f32 d = amax/127, int32
sum of the quants, then seg int8 (q = nearest-even(x/d)). Conversions are bit-exact: f16 like numpy's
astype(float16), bf16 like ggml's GGML_FP32_TO_BF16, q8_0 like ggml's quantize_row_q8_0_ref.
"""

import numpy as np
from numba import njit, prange

from . import codes
from .config import FASTMATH
from .dots_q8_0 import dequant_row_q8_0
from .simd import bits_to_f32, dequant_row_f16, f16_to_f32

QK8_0 = 32
Q8_0_BLOCK_BYTES = 34
Q8_KV_HEADER = 8  # f32 d + int32 sum per segment

# storage kinds (codes.py)
KIND_F32, KIND_F16, KIND_BF16, KIND_Q8_0, KIND_Q8_KV = codes.F32, codes.F16, codes.BF16, codes.Q8_0, codes.Q8_KV


@njit(cache=True, nogil=True, fastmath=FASTMATH)
def _f32_bits_to_f16_bits(f):
    """uint32 bits of an f32 -> uint16 bits of the f16, round-to-nearest-even (numpy's npy_floatbits_to_halfbits)."""
    f = np.int64(f)
    h_sgn = (f & 0x80000000) >> 16
    f_exp = f & 0x7F800000
    if f_exp >= 0x47800000:  # overflow, inf or nan
        if f_exp == 0x7F800000:
            f_sig = f & 0x007FFFFF
            if f_sig != 0:
                ret = 0x7C00 + (f_sig >> 13)
                if ret == 0x7C00:  # keep a nan a nan when its payload is in the low bits
                    ret += 1
                return h_sgn + ret
        return h_sgn + 0x7C00
    if f_exp <= 0x38000000:  # f16 subnormal or zero
        if f_exp < 0x33000000:
            return h_sgn
        e = f_exp >> 23
        f_sig = 0x00800000 + (f & 0x007FFFFF)
        f_sig >>= 113 - e
        # ties-to-even; the shift may have dropped up to 11 low bits, which count as "above the tie"
        if (f_sig & 0x3FFF) != 0x1000 or (f & 0x7FF) != 0:
            f_sig += 0x1000
        return h_sgn + (f_sig >> 13)
    h_exp = (f_exp - 0x38000000) >> 13
    f_sig = f & 0x007FFFFF
    if (f_sig & 0x3FFF) != 0x1000:
        f_sig += 0x1000
    # a carry out of the significand correctly bumps the exponent (up to inf)
    return h_sgn + h_exp + (f_sig >> 13)


@njit(cache=True, nogil=True, fastmath=FASTMATH)
def _f32_bits_to_bf16_bits(u):
    """uint32 bits of an f32 -> uint16 bits of the bf16 (ggml: nan forced quiet, else round-to-nearest-even)."""
    u = np.int64(u)
    if (u & 0x7FFFFFFF) > 0x7F800000:
        return ((u >> 16) | 64) & 0xFFFF
    return ((u + (0x7FFF + ((u >> 16) & 1))) >> 16) & 0xFFFF


@njit(cache=True, nogil=True, fastmath=FASTMATH)
def store_rows_f32(dst, cells, src):
    """Copy token rows into cache rows.

    dst   [size, n] f32       cache buffer
    cells [n_tok] int32       destination cell of each token
    src   [n_tok, n] f32
    """
    n = src.shape[1]
    for t in range(cells.shape[0]):
        c = cells[t]
        for i in range(n):
            dst[c, i] = src[t, i]


# No fastmath here or in the callers that quantize: `arcp` would turn amax/127 into amax*(1/127) and break
# bit-exactness with ggml.
@njit(cache=True, nogil=True)
def _quant_block_q8_0(row, b, x):
    """Block b of x [n] f32 -> bytes of block b of row [n/32*34] uint8 (quantize_row_q8_0_ref)."""
    amax = np.float32(0.0)
    for j in range(QK8_0):
        a = abs(x[b * QK8_0 + j])
        if a > amax:
            amax = a
    # the f32 quotient via f64 (correctly rounded even if a fastmath caller inlines this and turns
    # divisions into reciprocal multiplies)
    d = np.float32(np.float64(amax) / 127.0)
    idv = np.float32(1.0) / d if d != np.float32(0.0) else np.float32(0.0)
    tmp = np.empty(1, dtype=np.float32)
    tmp[0] = d
    h = _f32_bits_to_f16_bits(tmp.view(np.uint32)[0])
    o = b * Q8_0_BLOCK_BYTES
    row[o] = np.uint8(h & 0xFF)
    row[o + 1] = np.uint8(h >> 8)
    for j in range(QK8_0):
        x0 = np.float64(x[b * QK8_0 + j] * idv)  # f32 product, exact in f64
        # roundf: half away from zero (f64 keeps |x0| + 0.5 exact)
        r = np.int64(np.floor(abs(x0) + 0.5))
        if x0 < 0:
            r = -r
        row[o + 2 + j] = np.uint8(r & 0xFF)


# No fastmath: d = amax/127 and x*(1/d) must not be rewritten.
@njit(cache=True, nogil=True)
def _quant_seg_q8_kv(row, s, seg, x):
    """Segment s of x [n] f32 -> bytes of segment s of row [n/seg*(8+seg)] uint8 (q8_KV).

    Segment: f32 d = amax/127 (little-endian), int32 sum of q, then seg int8 q = nearest-even(x * (1/d)).
    """
    amax = np.float32(0.0)
    e0 = s * seg
    for j in range(seg):
        a = abs(x[e0 + j])
        if a > amax:
            amax = a
    d = np.float32(np.float64(amax) / 127.0)  # see _quant_block_q8_0
    idv = np.float32(1.0) / d if d != np.float32(0.0) else np.float32(0.0)
    o = s * (seg + Q8_KV_HEADER)
    total = 0
    for j in range(seg):
        q = np.int64(np.rint(np.float64(x[e0 + j] * idv)))
        if q > 127:
            q = 127
        elif q < -127:
            q = -127
        total += q
        row[o + Q8_KV_HEADER + j] = np.uint8(q & 0xFF)
    tmp = np.empty(2, dtype=np.float32)
    tmp[0] = d
    hdr = tmp.view(np.uint32)
    hdr[1] = np.uint32(total & 0xFFFFFFFF)
    hb = hdr.view(np.uint8)
    for j in range(Q8_KV_HEADER):
        row[o + j] = hb[j]


@njit(cache=True, nogil=True)
def store_rows(dst, cells, src, kind, seg):
    """Encode token rows into cache rows.

    dst   [size, row] uint16 (f16/bf16 bits) | uint8 (q8_0, q8_KV bytes), as decode_row's rows
    cells [n_tok] int32       destination cell of each token
    src   [n_tok, n] f32      n a multiple of 32 (q8_0) or of seg (q8_KV)
    kind  KIND_F16 | KIND_BF16 | KIND_Q8_0 | KIND_Q8_KV; seg: q8_KV segment length
    """
    n = src.shape[1]
    for t in range(cells.shape[0]):
        encode_row(dst[cells[t]], src[t], kind, seg, np.int64(0), n)


@njit(cache=True, nogil=True)
def store_rows_f16(dst, cells, src):
    """store_rows to f16 rows (dst [size, n] uint16)."""
    store_rows(dst, cells, src, np.int64(KIND_F16), np.int64(1))


@njit(cache=True, nogil=True)
def store_rows_bf16(dst, cells, src):
    """store_rows to bf16 rows (dst [size, n] uint16)."""
    store_rows(dst, cells, src, np.int64(KIND_BF16), np.int64(1))


@njit(cache=True, nogil=True)
def store_rows_q8_0(dst, cells, src):
    """store_rows to q8_0 rows (dst [size, n/32*34] uint8)."""
    store_rows(dst, cells, src, np.int64(KIND_Q8_0), np.int64(1))


@njit(cache=True, nogil=True)
def store_rows_q8_kv(dst, cells, src, seg):
    """store_rows to q8_KV rows (dst [size, n/seg*(8+seg)] uint8)."""
    store_rows(dst, cells, src, np.int64(KIND_Q8_KV), seg)


@njit(cache=True, nogil=True, fastmath=FASTMATH)
def move_rows(buf, src_cells, dst_cells):
    """Copy cache rows buf[src_cells[i]] -> buf[dst_cells[i]] in order (defrag / sequence moves).

    buf       [size, row] any dtype
    src_cells [n] int32
    dst_cells [n] int32
    """
    n = buf.shape[1]
    for i in range(src_cells.shape[0]):
        s = src_cells[i]
        d = dst_cells[i]
        if s != d:
            for j in range(n):
                buf[d, j] = buf[s, j]


@njit(cache=True, nogil=True, fastmath=FASTMATH)
def decode_row(dst, row, e0, n, kind, seg):
    """dst[:n] = values [e0, e0+n) of one cache row, as f32.

    dst [>= n] f32; row [row bytes / 2 / 4] uint32 (f32 bits) | uint16 (f16/bf16 bits) | uint8 (q8_0, q8_KV).
    q8_0: e0 and n multiples of 32. q8_KV: [e0, e0+n) inside one segment of seg values, or whole segments.
    """
    if kind == KIND_F32:
        src = row[e0:e0 + n]  # 1-D views with zero-based indices: the loops vectorize (offset indices do not)
        for i in range(n):
            dst[i] = bits_to_f32(src[i])
    elif kind == KIND_F16:
        src = row[e0:e0 + n]
        for i in range(n):
            dst[i] = f16_to_f32(src[i])
    elif kind == KIND_BF16:
        src = row[e0:e0 + n]
        for i in range(n):
            dst[i] = bits_to_f32(np.uint32(src[i]) << 16)
    elif kind == KIND_Q8_0 and dst.strides[0] == 4 and row.strides[0] == 1:  # 32 values a vector op
        dequant_row_q8_0(np.int64(dst.ctypes.data), np.int64(row.ctypes.data) + e0 // QK8_0 * Q8_0_BLOCK_BYTES,
                         np.int64(n // QK8_0))
    elif kind == KIND_Q8_0:
        o0 = e0 // QK8_0 * Q8_0_BLOCK_BYTES
        for b in range(n // QK8_0):
            blk = row[o0 + b * Q8_0_BLOCK_BYTES:o0 + (b + 1) * Q8_0_BLOCK_BYTES]
            d = f16_to_f32(np.uint16(blk[0]) | (np.uint16(blk[1]) << 8))
            qs = blk[2:]
            db = dst[b * QK8_0:(b + 1) * QK8_0]
            for i in range(QK8_0):
                db[i] = np.float32((np.int32(qs[i]) ^ 0x80) - 0x80) * d  # uint8 byte -> int8 value
    else:
        i0 = 0
        while i0 < n:
            s = (e0 + i0) // seg
            o = s * (seg + Q8_KV_HEADER)
            d = bits_to_f32(np.uint32(row[o]) | (np.uint32(row[o + 1]) << 8) | (np.uint32(row[o + 2]) << 16)
                            | (np.uint32(row[o + 3]) << 24))
            q0 = e0 + i0 - s * seg
            m = min(n - i0, seg - q0)
            qs = row[o + Q8_KV_HEADER + q0:o + Q8_KV_HEADER + q0 + m]
            ds = dst[i0:i0 + m]
            for i in range(m):
                ds[i] = np.float32((np.int32(qs[i]) ^ 0x80) - 0x80) * d
            i0 += m


@njit(cache=True, nogil=True, fastmath=FASTMATH)
def decode_tile(dst, buf, kv_idx, cb, nc, cvis, e0, n, kind, seg):
    """dst[j, :n] = values [e0, e0+n) of cache row buf[kv_idx[cb + j]] as f32, for the cells j < nc with cvis[j]
    (the others are left as they are): decode_row per cell, with the kind's branch taken once per tile.

    dst [>= nc, >= n] f32 with contiguous rows; buf, kind, seg, e0, n as decode_row's; kv_idx in range.
    """
    if kind == KIND_F16:  # one vectorized conversion per row, addressed directly (no row views)
        d_p, d_s = np.int64(dst.ctypes.data), np.int64(dst.strides[0])
        b_p, b_s = np.int64(buf.ctypes.data) + np.int64(e0) * 2, np.int64(buf.strides[0])
        for j in range(nc):
            if cvis[j]:
                dequant_row_f16(d_p + j * d_s, b_p + np.int64(kv_idx[cb + j]) * b_s, np.int64(n))
    elif kind == KIND_F32 or kind == KIND_BF16:
        sh = np.uint32(0) if kind == KIND_F32 else np.uint32(16)
        for j in range(nc):
            if cvis[j]:
                src = buf[kv_idx[cb + j], e0:e0 + n]
                d = dst[j]
                for i in range(n):
                    d[i] = bits_to_f32(np.uint32(src[i]) << sh)
    else:
        for j in range(nc):
            if cvis[j]:
                decode_row(dst[j], buf[kv_idx[cb + j]], e0, n, kind, seg)


@njit(cache=True, nogil=True)
def encode_row(row, x, kind, seg, lo, hi):
    """Write x [n] f32 into one cache row, encoding only the values/blocks/segments overlapping [lo, hi).

    row: as decode_row's; kind KIND_*; seg: the q8_KV segment length. f16 like numpy's astype(float16), bf16
    like GGML_FP32_TO_BF16, q8_0 like quantize_row_q8_0_ref, q8_KV as _quant_seg_q8_kv.
    """
    n = x.shape[0]
    if kind == KIND_F32:
        xb = x.view(np.uint32)
        for i in range(lo, hi):
            row[i] = xb[i]
    elif kind == KIND_F16:
        xb = x.view(np.uint32)
        for i in range(lo, hi):
            row[i] = _f32_bits_to_f16_bits(xb[i])
    elif kind == KIND_BF16:
        xb = x.view(np.uint32)
        for i in range(lo, hi):
            row[i] = _f32_bits_to_bf16_bits(xb[i])
    elif kind == KIND_Q8_0:
        for b in range(lo // QK8_0, min(n // QK8_0, (hi + QK8_0 - 1) // QK8_0)):
            _quant_block_q8_0(row, b, x)
    else:
        for s in range(lo // seg, min(n // seg, (hi + seg - 1) // seg)):
            _quant_seg_q8_kv(row, s, seg, x)


@njit(cache=True, nogil=True, fastmath=FASTMATH, parallel=True)
def kshift_rows(buf, kind, seg, n, cells, cos, sin, n_head, head_stride, off, neox):
    """Rotate the RoPE part of cached K rows by each cell's position delta (context shift).

    buf    [size, row] uint32 (f32 bits) | uint16 (f16/bf16 bits) | uint8 (q8_0 / q8_KV bytes)
    kind   KIND_*; seg: q8_KV segment length (values); n: values per cache row
    cells  [m] int32 cells to rotate (distinct)
    cos, sin [m, n_rot/2] f32   angle table of each cell's delta
    n_head, head_stride, off    head h's rope part is values [off + h*head_stride, ... + n_rot)
                                (MLA: n_head 1, rope part at a column offset of the 576-wide row)
    neox   0: rotate pairs (2i, 2i+1); 1: pairs (i, i + n_rot/2)
    Quantized rows are dequantized, rotated and requantized (only the touched blocks / segments).
    """
    half = cos.shape[1]
    n_rot = 2 * half
    lo = off
    hi = off + (n_head - 1) * head_stride + n_rot
    for t in prange(cells.shape[0]):
        c = cells[t]
        x = np.empty(n, dtype=np.float32)  # [n] f32 the dequantized row
        row = buf[c]
        decode_row(x, row, np.int64(0), n, kind, seg)
        for h in range(n_head):
            b = off + h * head_stride
            for i in range(half):
                cs = cos[t, i]
                sn = sin[t, i]
                if neox:
                    i0 = b + i
                    i1 = b + i + half
                else:
                    i0 = b + 2 * i
                    i1 = b + 2 * i + 1
                x0 = x[i0]
                x1 = x[i1]
                x[i0] = x0 * cs - x1 * sn
                x[i1] = x0 * sn + x1 * cs
        encode_row(row, x, kind, seg, lo, hi)


@njit(cache=True, nogil=True)
def dequant_rows(out, buf, kind, seg, cells):
    """out [m, n] f32 = values of cache rows buf[cells] (tests, debugging, state checks)."""
    for t in range(cells.shape[0]):
        decode_row(out[t], buf[cells[t]], np.int64(0), out.shape[1], kind, seg)


@njit(cache=True, nogil=True)
def gather_rows(out, buf, cells):
    """out [m, row] = buf[cells] (state save), any dtype."""
    n = buf.shape[1]
    for t in range(cells.shape[0]):
        c = cells[t]
        for j in range(n):
            out[t, j] = buf[c, j]


@njit(cache=True, nogil=True)
def scatter_rows(buf, cells, src):
    """buf[cells] = src [m, row] (state restore), any dtype."""
    n = buf.shape[1]
    for t in range(cells.shape[0]):
        c = cells[t]
        for j in range(n):
            buf[c, j] = src[t, j]
