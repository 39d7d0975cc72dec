"""KV cache row stores and moves: f32 rows into cache rows of type f32 / f16 / bf16 / q8_0.

Leaf kernel module (numpy, numba only). Cache buffers are [size, row] arrays (numpy row-major shapes);
f16 and bf16 rows are handled as uint16 bits, q8_0 rows as raw bytes (n/32 blocks of f16 d + 32 int8).
Conversions are bit-exact: f16 like numpy's astype(float16), bf16 like ggml's GGML_FP32_TO_BF16,
q8_0 like ggml's quantize_row_q8_0_ref.
"""

import numpy as np
from numba import njit

from .config import FASTMATH

QK8_0 = 32
Q8_0_BLOCK_BYTES = 34


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


@njit(cache=True, nogil=True, fastmath=FASTMATH)
def store_rows_f16(dst, cells, src):
    """Convert token rows to f16 (round-to-nearest-even) into cache rows.

    dst   [size, n] uint16    f16 bits
    cells [n_tok] int32
    src   [n_tok, n] f32
    """
    bits = src.view(np.uint32)  # [n_tok, n] uint32
    n = src.shape[1]
    for t in range(cells.shape[0]):
        c = cells[t]
        for i in range(n):
            dst[c, i] = np.uint16(_f32_bits_to_f16_bits(bits[t, i]))


@njit(cache=True, nogil=True, fastmath=FASTMATH)
def store_rows_bf16(dst, cells, src):
    """Convert token rows to bf16 (ggml's rounding) into cache rows.

    dst   [size, n] uint16    bf16 bits
    cells [n_tok] int32
    src   [n_tok, n] f32
    """
    bits = src.view(np.uint32)  # [n_tok, n] uint32
    n = src.shape[1]
    for t in range(cells.shape[0]):
        c = cells[t]
        for i in range(n):
            dst[c, i] = np.uint16(_f32_bits_to_bf16_bits(bits[t, i]))


# No fastmath here: `arcp` would turn amax/127 into amax*(1/127) and break bit-exactness with ggml.
@njit(cache=True, nogil=True)
def store_rows_q8_0(dst, cells, src):
    """Quantize token rows to Q8_0 into cache rows (ggml's quantize_row_q8_0_ref).

    dst   [size, n/32*34] uint8   per block: f16 d (little-endian), then 32 int8 qs
    cells [n_tok] int32
    src   [n_tok, n] f32          n a multiple of 32
    Block: d = amax/127 (stored as f16), q = roundf(x * (1/d)) with the f32 d, 0 for an all-zero block.
    """
    n = src.shape[1]
    nb = n // QK8_0
    tmp = np.empty(1, dtype=np.float32)
    tmp_bits = tmp.view(np.uint32)
    for t in range(cells.shape[0]):
        c = cells[t]
        for b in range(nb):
            amax = np.float32(0.0)
            for j in range(QK8_0):
                a = abs(src[t, b * QK8_0 + j])
                if a > amax:
                    amax = a
            d = amax / np.float32(127.0)
            idv = np.float32(1.0) / d if d != np.float32(0.0) else np.float32(0.0)
            tmp[0] = d
            h = _f32_bits_to_f16_bits(tmp_bits[0])
            o = b * Q8_0_BLOCK_BYTES
            dst[c, o] = np.uint8(h & 0xFF)
            dst[c, o + 1] = np.uint8(h >> 8)
            for j in range(QK8_0):
                x0 = np.float64(src[t, b * QK8_0 + j] * idv)  # f32 product, exact in f64
                # roundf: half away from zero (f64 keeps |x0| + 0.5 exact)
                r = np.int64(np.floor(abs(x0) + 0.5))
                if x0 < 0:
                    r = -r
                dst[c, o + 2 + j] = np.uint8(r & 0xFF)


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
