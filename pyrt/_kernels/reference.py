"""Scalar reference decoders of the GGUF block formats (ggml's `dequantize_row_*` generic logic).

Plain undecorated functions over uint8 byte arrays and integer offsets: the same source compiles under
`numba.njit` (the CPU test oracle) and `numba.cuda.jit(device=True)` (the GPU backend's block decoding).
So they use only integer arithmetic, `math.ldexp` and float32 scalars: no array views, no bit casts,
no allocation. A leaf: imports math and numpy only.

`value_<type>(src, blk, i)` is element i of the block that starts at byte `blk`; the float32 operations
and their order are ggml's (`d1 = d * sc; y = d1 * q - m1`), so results are bit-exact with
`gguf.quants.dequantize`. `decode_block_<type>(dst, dst_off, src, src_off)` writes a whole block.
`specialise(decorate)` compiles the set with one decorator (njit, or a CUDA device-function jit), the
helpers they call included.
"""

from __future__ import annotations

import math
import types

import numpy as np

QK_K = 256

# (block_size, type_size) per format, ggml's type traits
BLOCK = {
    "F32": (1, 4), "F16": (1, 2), "BF16": (1, 2),
    "Q8_0": (32, 34), "Q4_0": (32, 18), "Q5_0": (32, 22),
    "Q4_K": (256, 144), "Q5_K": (256, 176), "Q6_K": (256, 210),
}


def ieee_bits_to_f32(b, m_bits, e_bits):
    """The bits of an IEEE-style binary float with m_bits mantissa and e_bits exponent bits (sign above them)
    -> float32, exactly, by integer arithmetic (subnormals, infinities and NaN included)."""
    e_max = (1 << e_bits) - 1
    shift = (e_max >> 1) + m_bits  # exponent bias + mantissa bits
    e = (b >> m_bits) & e_max
    m = b & ((1 << m_bits) - 1)
    if e == 0:
        v = math.ldexp(np.float32(m), int(1 - shift))
    elif e == e_max:
        v = np.float32(np.inf) if m == 0 else np.float32(np.nan)
    else:
        v = math.ldexp(np.float32(m | (1 << m_bits)), int(e - shift))
    return np.float32(-v) if (b >> (m_bits + e_bits)) & 1 else np.float32(v)


def f16_bits_to_f32(h):
    """IEEE binary16 bits (an int in [0, 65536)) -> float32, exactly."""
    return ieee_bits_to_f32(h, 10, 5)


def bf16_bits_to_f32(h):
    """bfloat16 bits (the high half of a float32) -> float32, exactly."""
    return ieee_bits_to_f32(h, 7, 8)


def f32_bits_to_f32(b):
    """IEEE binary32 bits (an int in [0, 2**32)) -> float32, exactly."""
    return ieee_bits_to_f32(b, 23, 8)


def f32_to_f32_bits(x):
    """float32 -> its IEEE binary32 bits (exact; NaN as the quiet NaN 0x7FC00000)."""
    if x != x:
        return np.int64(0x7FC00000)
    s = np.int64(0x80000000) if math.copysign(1.0, x) < 0 else np.int64(0)
    a = abs(x)
    if a == np.inf:
        return s | 0x7F800000
    if a == 0:
        return s
    m, e = math.frexp(a)
    if e - 1 >= -126:
        return s | (np.int64(e + 126) << 23) | (np.int64(math.ldexp(m, 24)) - 0x800000)
    return s | np.int64(math.ldexp(a, 149))


def f32_to_ieee_bits(x, m_bits, e_bits):
    """float32 -> the bits of an IEEE-style binary float with m_bits mantissa and e_bits exponent bits, round
    to nearest even, by arithmetic; NaN becomes the quiet NaN (F16C / numpy's astype, ggml's fp32_to_bf16)."""
    bias = ((1 << e_bits) - 1) >> 1
    inf = ((1 << e_bits) - 1) << m_bits
    if x != x:
        return inf | (1 << (m_bits - 1))
    s = (1 << (m_bits + e_bits)) if math.copysign(1.0, x) < 0 else 0
    a = abs(x)
    if a == np.inf:
        return s | inf
    if a == 0:
        return s
    m, e = math.frexp(a)  # a = m * 2^e, m in [0.5, 1)
    if e - 1 >= 1 - bias:
        q = round(math.ldexp(m, m_bits + 1))  # m_bits + 1 significant bits, ties to even
        ex = e - 1
        if q == 1 << (m_bits + 1):
            q = 1 << m_bits
            ex += 1
        if ex > bias:
            return s | inf
        return s | ((ex + bias) << m_bits) | (q - (1 << m_bits))
    return s | round(math.ldexp(a, bias - 1 + m_bits))  # subnormal (k = 1 << m_bits encodes the smallest normal)


def f32_to_f16_bits(x):
    """float32 -> IEEE binary16 bits."""
    return f32_to_ieee_bits(x, 10, 5)


def f32_to_bf16_bits(x):
    """float32 -> bfloat16 bits."""
    return f32_to_ieee_bits(x, 7, 8)


def read_u16(src, off):
    return np.int32(src[off]) | (np.int32(src[off + 1]) << 8)


def read_f16(src, off):
    return f16_bits_to_f32(read_u16(src, off))


def read_i8(src, off):
    v = np.int32(src[off])
    return v - 256 if v > 127 else v


def value_f32(src, blk, i):
    b = (np.int64(src[blk]) | (np.int64(src[blk + 1]) << 8) | (np.int64(src[blk + 2]) << 16)
         | (np.int64(src[blk + 3]) << 24))
    return f32_bits_to_f32(b)


def value_f16(src, blk, i):
    return read_f16(src, blk)


def value_bf16(src, blk, i):
    return bf16_bits_to_f32(read_u16(src, blk))


def value_q8_0(src, blk, i):
    """Q8_0 block (34 bytes): d f16, qs[32] int8. y = d * q."""
    return read_f16(src, blk) * np.float32(read_i8(src, blk + 2 + i))


def value_q4_0(src, blk, i):
    """Q4_0 block (18 bytes): d f16, qs[16]; low nibbles are y[0:16], high nibbles y[16:32], offset 8."""
    j = i & 15
    q = np.int32(src[blk + 2 + j])
    q = (q & 0xF) if i < 16 else (q >> 4)
    return read_f16(src, blk) * np.float32(q - 8)


def value_q5_0(src, blk, i):
    """Q5_0 block (22 bytes): d f16, qh u32 (bit i = 5th bit of y[i]), qs[16] as Q4_0; offset 16."""
    j = i & 15
    q = np.int32(src[blk + 6 + j])
    q = (q & 0xF) if i < 16 else (q >> 4)
    h = (np.int32(src[blk + 2 + (i >> 3)]) >> (i & 7)) & 1
    return read_f16(src, blk) * np.float32((q | (h << 4)) - 16)


def scale_min_k4(src, scales, j):
    """ggml's get_scale_min_k4: the 6-bit scale and min of sub-block j (0..7) from the 12 packed bytes."""
    if j < 4:
        sc = np.int32(src[scales + j]) & 63
        mn = np.int32(src[scales + j + 4]) & 63
    else:
        sc = (np.int32(src[scales + j + 4]) & 0xF) | ((np.int32(src[scales + j - 4]) >> 6) << 4)
        mn = (np.int32(src[scales + j + 4]) >> 4) | ((np.int32(src[scales + j]) >> 6) << 4)
    return sc, mn


def value_q4_k(src, blk, i):
    """Q4_K block (144 bytes): d f16, dmin f16, scales[12], qs[128]. 8 sub-blocks of 32; sub-blocks 2k and
    2k+1 share the bytes qs[32k:32k+32] (low, high nibble). y = d*sc * q - dmin*m."""
    g = i >> 5
    sc, mn = scale_min_k4(src, blk + 4, g)
    d1 = read_f16(src, blk) * np.float32(sc)
    m1 = read_f16(src, blk + 2) * np.float32(mn)
    q = np.int32(src[blk + 16 + (g >> 1) * 32 + (i & 31)])
    q = (q >> 4) if g & 1 else (q & 0xF)
    return d1 * np.float32(q) - m1


def value_q5_k(src, blk, i):
    """Q5_K block (176 bytes): d, dmin f16, scales[12], qh[32] (bit g of qh[l] = 5th bit of sub-block g),
    qs[128] as Q4_K."""
    g = i >> 5
    l = i & 31
    sc, mn = scale_min_k4(src, blk + 4, g)
    d1 = read_f16(src, blk) * np.float32(sc)
    m1 = read_f16(src, blk + 2) * np.float32(mn)
    q = np.int32(src[blk + 48 + (g >> 1) * 32 + l])
    q = (q >> 4) if g & 1 else (q & 0xF)
    h = (np.int32(src[blk + 16 + l]) >> g) & 1
    return d1 * np.float32(q + (h << 4)) - m1


def value_q6_k(src, blk, i):
    """Q6_K block (210 bytes): ql[128], qh[64], scales[16] int8, d f16. Two halves of 128; in a half,
    group k (0..3) of 32 takes ql[l + 32*(k&1)] (low nibble for k<2, high for k>=2) and bits 2k..2k+1
    of qh[l]; scale index 8*half + l//16 + 2k; offset 32."""
    n = i >> 7
    k = (i >> 5) & 3
    l = i & 31
    ql = np.int32(src[blk + n * 64 + l + (k & 1) * 32])
    ql = (ql >> 4) if k >= 2 else (ql & 0xF)
    qh = (np.int32(src[blk + 128 + n * 32 + l]) >> (2 * k)) & 3
    sc = read_i8(src, blk + 192 + n * 8 + (l >> 4) + 2 * k)
    d = read_f16(src, blk + 208) * np.float32(sc)
    return d * np.float32((ql | (qh << 4)) - 32)


def decode_block_f32(dst, dst_off, src, src_off):
    dst[dst_off] = value_f32(src, src_off, 0)


def decode_block_f16(dst, dst_off, src, src_off):
    dst[dst_off] = value_f16(src, src_off, 0)


def decode_block_bf16(dst, dst_off, src, src_off):
    dst[dst_off] = value_bf16(src, src_off, 0)


def decode_block_q8_0(dst, dst_off, src, src_off):
    for i in range(32):
        dst[dst_off + i] = value_q8_0(src, src_off, i)


def decode_block_q4_0(dst, dst_off, src, src_off):
    for i in range(32):
        dst[dst_off + i] = value_q4_0(src, src_off, i)


def decode_block_q5_0(dst, dst_off, src, src_off):
    for i in range(32):
        dst[dst_off + i] = value_q5_0(src, src_off, i)


def decode_block_q4_k(dst, dst_off, src, src_off):
    for i in range(QK_K):
        dst[dst_off + i] = value_q4_k(src, src_off, i)


def decode_block_q5_k(dst, dst_off, src, src_off):
    for i in range(QK_K):
        dst[dst_off + i] = value_q5_k(src, src_off, i)


def decode_block_q6_k(dst, dst_off, src, src_off):
    for i in range(QK_K):
        dst[dst_off + i] = value_q6_k(src, src_off, i)


VALUE = {"F32": value_f32, "F16": value_f16, "BF16": value_bf16, "Q8_0": value_q8_0, "Q4_0": value_q4_0,
         "Q5_0": value_q5_0, "Q4_K": value_q4_k, "Q5_K": value_q5_k, "Q6_K": value_q6_k}
DECODE_BLOCK = {"F32": decode_block_f32, "F16": decode_block_f16, "BF16": decode_block_bf16,
                "Q8_0": decode_block_q8_0, "Q4_0": decode_block_q4_0, "Q5_0": decode_block_q5_0,
                "Q4_K": decode_block_q4_k, "Q5_K": decode_block_q5_k, "Q6_K": decode_block_q6_k}


def specialise(decorate) -> types.SimpleNamespace:
    """Every function of this module, rebound so that the calls between them reach the decorated versions.

    decorate: e.g. `numba.njit` or `lambda f: numba.cuda.jit(device=True)(f)`. Numba resolves a function's
    globals when it compiles, so each copy gets a globals dict holding the decorated helpers.
    """
    g = {"math": math, "np": np, "QK_K": QK_K}
    out = {}
    for name, fn in list(globals().items()):
        if isinstance(fn, types.FunctionType) and fn.__module__ == __name__ and name != "specialise":
            out[name] = g[name] = decorate(types.FunctionType(fn.__code__, g, name, fn.__defaults__))
    ns = types.SimpleNamespace(**out)
    ns.VALUE = {k: out[f.__name__] for k, f in VALUE.items()}
    ns.DECODE_BLOCK = {k: out[f.__name__] for k, f in DECODE_BLOCK.items()}
    return ns
