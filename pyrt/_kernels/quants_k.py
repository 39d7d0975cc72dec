"""k-quants: Q4_K/Q5_K/Q6_K weight rows (dequant, matmul against Q8_K activations) and Q8_K quantization.

Layouts and integer dot products follow llama.cpp (ggml-common.h, ggml-quants.c, ggml-cpu/quants.c). The row dots
are LLVM IR emitted by Numba intrinsics (ir_k's pieces): AVX2 pmaddubsw/pmaddwd when the target has AVX2 (Q4_K's on
512-bit vectors where it has AVX-512BW), portable vector IR otherwise; prompts of several tokens run on tiles_k's
tiles, with the same bits. Shapes are numpy (row-major) order.
"""

import numpy as np
from llvmlite import ir
from numba import njit, prange
from numba.core import cgutils, types
from numba.extending import intrinsic

from .config import FASTMATH
from .dots_q8_0 import _fma
from .ir_k import (BLOCK_BYTES_Q4_K, BLOCK_BYTES_Q5_K, BLOCK_BYTES_Q6_K, BLOCK_BYTES_Q8_K, KIND_Q4_K, KIND_Q5_K,
                   KIND_Q6_K, QK_K, _BLOCK_BYTES, _V16I8, _V16I16, _V32I8, _V32I16, _V64I8, _byte_ptr, _dpwssd512, _gep,
                   _is_u8_array, _k4_scale_bytes, _k4_scales_mins, _maddubs, _maddubs512, _maddwd, _maddwd512,
                   _pshufb512, _q6_k_quants, matmul_shapes_ok)
from .simd import (HAS_AVX2, HAS_AVX512BW, PREFETCH_BYTES, _F32, _I8, _I16, _I32, _I64, _call, _h2f, _load_ptr,
                   _mask, _shr_bytes, _splat, prefetch_ptr)
from .tiles_k import TILE_MIN_TOKENS, TILE_MIN_TOKENS_Q6_K, matmul_k_tiles

_V2I16 = ir.VectorType(_I16, 2)

# Output rows per prange work item of the matmuls.
_ROW_TILE = 16

# Dequant and quantize must be bit-exact against gguf-py / llama.cpp's reference: no contraction into FMAs,
# no reciprocal-for-division, no reassociation.
_EXACT_MATH = False


# ----------------------------------------------------------------------------------------------------------
# Row dots
# ----------------------------------------------------------------------------------------------------------


def _q8k_parts(builder, xp):
    """(d f32, pointer to qs, bsums i16[16]) of the Q8_K block at xp."""
    d = _load_ptr(builder, xp, _F32)
    qs = builder.gep(xp, [ir.Constant(_I64, 4)])
    bsums = _load_ptr(builder, builder.gep(xp, [ir.Constant(_I64, 4 + QK_K)]), _V16I16)
    return d, qs, bsums


def _sum_quants(builder, quants, q8, simd):
    """<8 x i32> sum over (u8 quants q [32], i16 scales sv [16], byte offset xo) of sv . pairsums(q * q8[xo:xo+32])."""
    acc = None
    for q, sv, xo in quants:
        xv = _load_ptr(builder, _gep(builder, q8, xo), _V32I8)
        part = _maddwd(builder, sv, _maddubs(builder, q, xv, simd), simd)
        acc = part if acc is None else builder.add(acc, part)
    return acc


def _emit_vdot_q4_k(builder, wp, xps, simd, high_bits):
    """Dots of the Q4_K (high_bits=False) or Q5_K (True) block at wp with the Q8_K blocks at xps ->
    [(scaled quant sum i32, d*dx, min sum i32, -dmin*dx)] per activation block: the block's exact integer
    sums, which the caller folds in as acc = fma(d*dx, sum, acc), then acc = fma(-dmin*dx, min sum, acc)
    (the prompt tiles, _tile_codegen, do the same per row and token, so both give the same bits).

    The weight block is unpacked once and reused for every activation block (several tokens).
    """
    dw = _h2f(builder, _load_ptr(builder, wp, _I16))
    dminw = _h2f(builder, _load_ptr(builder, _gep(builder, wp, 2), _I16))
    sm = _k4_scales_mins(builder, _gep(builder, wp, 4))
    undef16 = ir.Constant(_V16I16, ir.Undefined)
    qs_off = 16
    if high_bits:
        qh = _load_ptr(builder, _gep(builder, wp, 16), _V32I8)
        qs_off = 48
    m4 = _splat(_I8, 32, 0x0F)
    quants = []  # (u8[32] quants, i16[16] broadcast scale, byte offset in the Q8_K qs)
    for j in range(QK_K // 64):
        bits = _load_ptr(builder, _gep(builder, wp, qs_off + 32 * j), _V32I8)
        lo = builder.and_(bits, m4)
        hi = builder.lshr(bits, _splat(_I8, 32, 4))
        if high_bits:
            one = _splat(_I8, 32, 1)
            h_lo = builder.and_(builder.lshr(qh, _splat(_I8, 32, 2 * j)), one)
            h_hi = builder.and_(builder.lshr(qh, _splat(_I8, 32, 2 * j + 1)), one)
            lo = builder.or_(lo, builder.shl(h_lo, _splat(_I8, 32, 4)))
            hi = builder.or_(hi, builder.shl(h_hi, _splat(_I8, 32, 4)))
        quants.append((lo, builder.shuffle_vector(sm, undef16, _mask([2 * j] * 16)), 64 * j))
        quants.append((hi, builder.shuffle_vector(sm, undef16, _mask([2 * j + 1] * 16)), 64 * j + 32))
    # mins term: sum_j m[j] * (bsums[2j] + bsums[2j+1])
    mins2 = builder.shuffle_vector(sm, undef16, _mask([8 + i // 2 for i in range(16)]))
    ndminw = builder.fneg(dminw)
    out = []
    for xp in xps:
        dx, q8, bsums = _q8k_parts(builder, xp)
        acc = _sum_quants(builder, quants, q8, simd)
        msum = _maddwd(builder, bsums, mins2, simd)
        out.append((_reduce_i32(builder, acc), builder.fmul(dw, dx), _reduce_i32(builder, msum), builder.fmul(ndminw, dx)))
    return out


def _add_lanes(builder, v, *perms):
    """v + v[perm] for each lane permutation in turn (sums of lane groups, exact)."""
    for perm in perms:
        v = builder.add(v, builder.shuffle_vector(v, v, _mask(perm)))
    return v


def _q4_k_zmm_block(builder, wp):
    """The Q4_K block at wp unpacked for _emit_vdot_q4_k_zmm: [(u8[64] quants of sub-blocks a and b, i16[32] their
    scales, (a, b))], the i16[16] mins for the bsums, <2 x f32> (d, dmin)."""
    r = _k4_scale_bytes(builder, _gep(builder, wp, 4), 64)
    m4 = _splat(_I8, 64, 0x0F)
    parts = []
    for h in range(2):  # quant bytes 64h..64h+63: sub-blocks 4h, 4h+2 in the low nibbles, 4h+1, 4h+3 in the high
        bits = _load_ptr(builder, _gep(builder, wp, 16 + 64 * h), _V64I8)
        parts.append((builder.and_(bits, m4), (4 * h, 4 * h + 2)))
        parts.append((_shr_bytes(builder, bits, 4), (4 * h + 1, 4 * h + 3)))
    quants = [(q, builder.bitcast(_pshufb512(builder, r, [a, -1] * 16 + [b, -1] * 16), _V32I16), (a, b))
              for q, (a, b) in parts]
    mins = _pshufb512(builder, r, [8 + i // 4 if i % 2 == 0 else -1 for i in range(64)])
    mins2 = builder.bitcast(builder.shuffle_vector(mins, mins, _mask(range(32))), _V16I16)
    return quants, mins2, _h2f(builder, _load_ptr(builder, wp, _V2I16), 2)


def _emit_vdot_q4_k_zmm(builder, wps, xpss):
    """Dots of the Q4_K blocks at wps (one or two) with the Q8_K blocks xpss[t][i] of each token t on 512-bit
    vectors (AVX-512BW) -> per token, per block (quant sum f32, d*dx, min sum f32, -dmin*dx): _emit_vdot_q4_k's
    exact integer sums, converted to f32 in a vector (sitofp rounds the same either way).

    Each 64 bytes of quants give two sub-blocks in their low nibbles and two in their high ones, dotted against
    the matching two 32-byte pieces of the Q8_K quants: four pmaddubsw/pmaddwd pairs a block. The scales are
    unpacked with byte shuffles; the quant and min sums of both blocks are reduced in one vector.
    """
    blocks = [_q4_k_zmm_block(builder, wp) for wp in wps]
    out = []
    for xps in xpss:
        accs, msums, dxs = [], [], []
        for (quants, mins2, _), xp in zip(blocks, xps):
            dx, q8, bsums = _q8k_parts(builder, xp)
            acc = None
            for q, sv, (a, b) in quants:
                xa = _load_ptr(builder, _gep(builder, q8, 32 * a), _V32I8)
                xb = _load_ptr(builder, _gep(builder, q8, 32 * b), _V32I8)
                qx = _maddubs512(builder, q, builder.shuffle_vector(xa, xb, _mask(range(64))), True)
                acc = _maddwd512(builder, qx, sv, True) if acc is None else _dpwssd512(builder, acc, qx, sv)
            accs.append(acc)
            msums.append(_maddwd(builder, bsums, mins2, True))
            dxs.append(dx)
        if len(wps) == 2:
            # y: 128-bit lanes (sums 0, 0, 1, 1) of the blocks' quant sums; then lanes of four: sums 0, 1, mins 0, 1
            y = builder.add(builder.shuffle_vector(accs[0], accs[1], _mask([*range(8), *range(16, 24)])),
                            builder.shuffle_vector(accs[0], accs[1], _mask([*range(8, 16), *range(24, 32)])))
            m = builder.shuffle_vector(msums[0], msums[1], _mask(range(16)))
            z = builder.add(builder.shuffle_vector(y, m, _mask([i + 4 * (i // 4) for i in range(16)])),
                            builder.shuffle_vector(y, m, _mask([i + 4 * (i // 4) + 4 for i in range(16)])))
            z = _add_lanes(builder, z, [i ^ 2 for i in range(16)], [i ^ 1 for i in range(16)])
            lanes = ((0, 8), (4, 12))
        else:
            y = builder.add(builder.shuffle_vector(accs[0], accs[0], _mask(range(8))),
                            builder.shuffle_vector(accs[0], accs[0], _mask(range(8, 16))))
            z = _add_lanes(builder, builder.shuffle_vector(y, msums[0], _mask(range(16))),
                           [i ^ 4 for i in range(16)], [i ^ 2 for i in range(16)], [i ^ 1 for i in range(16)])
            lanes = ((0, 8),)
        zf = builder.sitofp(z, ir.VectorType(_F32, 16))
        lane = lambda v, i: builder.extract_element(v, ir.Constant(_I32, i))  # noqa: E731
        res = []
        for (_, _, dd), dx, (ls, lm) in zip(blocks, dxs, lanes):
            dxx = builder.insert_element(builder.insert_element(dd, dx, ir.Constant(_I32, 0)), dx, ir.Constant(_I32, 1))
            ddx = builder.fmul(dd, dxx)
            res.append((lane(zf, ls), lane(ddx, 0), lane(zf, lm), builder.fneg(lane(ddx, 1))))
        out.append(res)
    return out


def _as_f32(builder, v):
    return v if v.type == _F32 else builder.sitofp(v, _F32)


def _reduce_i32(builder, v):
    """Sum of the lanes of an <8 x i32> (exact)."""
    return _call(builder, "llvm.vector.reduce.add.v8i32", _I32, [v])


def _emit_vdot_q6_k(builder, wp, xps, simd):
    """Dots of the Q6_K block at wp with the Q8_K blocks at xps -> [(quant sum i32, d*dx, None, None)] per
    activation block (quants -32 via the bsums): the block's exact integer sum, folded in by the caller as
    acc = fma(d*dx, sum, acc), as the prompt tiles do per row and token."""
    dw = _h2f(builder, _load_ptr(builder, _gep(builder, wp, 208), _I16))
    sc = builder.sext(_load_ptr(builder, _gep(builder, wp, 192), _V16I8), _V16I16)
    undef16 = ir.Constant(_V16I16, ir.Undefined)
    quants = []  # (u8[32] quants 0..63, i16[16] scales (8 lanes per 16 quants), byte offset in the Q8_K qs)
    for c, q in enumerate(_q6_k_quants(builder, wp)):
        sv = builder.shuffle_vector(sc, undef16, _mask([2 * c] * 8 + [2 * c + 1] * 8))
        quants.append((q, sv, 32 * c))
    out = []
    for xp in xps:
        dx, q8, bsums = _q8k_parts(builder, xp)
        acc = _sum_quants(builder, quants, q8, simd)
        off = _maddwd(builder, sc, bsums, simd)
        sumi = builder.sub(acc, builder.shl(off, _splat(_I32, 8, 5)))
        out.append((_reduce_i32(builder, sumi), builder.fmul(dw, dx), None, None))
    return out


def _emit_vdots(kind, builder, wp, xps, simd):
    if kind == "q4_k":
        return _emit_vdot_q4_k(builder, wp, xps, simd, False)
    if kind == "q5_k":
        return _emit_vdot_q4_k(builder, wp, xps, simd, True)
    return _emit_vdot_q6_k(builder, wp, xps, simd)


def _make_vdot_rows(kind, simd, n_x, n_w=1):
    """Intrinsic: dots of n_w weight rows with n_x Q8_K rows (n_w or n_x is 1), looping over the nb blocks in IR.

    (w, wo, x, xo, stride, nb): weight row j at byte wo + j*stride of w (n_w > 1), Q8_K row i at byte
    xo + i*stride of x (n_x > 1). Returns f32 (n_x == n_w == 1) or a tuple of n_x (or n_w) f32. A (row,
    token) adds each block's exact integer sums to one f32 (_emit_vdot_q4_k, _emit_vdot_q6_k), so its result
    does not depend on n_x, n_w or the thread count; rows dotted together share the activation loads and
    interleave their dependency chains.
    """
    assert n_x == 1 or n_w == 1
    bb = _BLOCK_BYTES[kind]
    zmm = kind == "q4_k" and simd and HAS_AVX512BW  # two blocks a step: _emit_vdot_q4_k_zmm

    def vdot_rows(typingctx, w, wo, x, xo, stride, nb):
        ints = (wo, xo, stride, nb)
        if not (_is_u8_array(w) and _is_u8_array(x) and all(isinstance(a, types.Integer) for a in ints)):
            return None
        n_out = n_x * n_w
        retty = types.float32 if n_out == 1 else types.UniTuple(types.float32, n_out)

        def codegen(context, builder, sig, args):
            i64 = [context.cast(builder, args[k], sig.args[k], types.int64) for k in (1, 3, 4, 5)]
            wo64, xo64, st64, nb64 = i64
            w_rows = [
                _byte_ptr(context, builder, sig.args[0], args[0], builder.add(wo64, builder.mul(st64, ir.Constant(_I64, j))))
                for j in range(n_w)
            ]
            x0 = [
                _byte_ptr(context, builder, sig.args[2], args[2], builder.add(xo64, builder.mul(st64, ir.Constant(_I64, i))))
                for i in range(n_x)
            ]
            accs = [cgutils.alloca_once_value(builder, ir.Constant(_F32, 0.0)) for _ in range(n_out)]

            def blocks(b, n):  # fold blocks b..b+n-1 into the accumulators, in block order
                sums = []
                for w0 in w_rows:
                    wps = [builder.gep(w0, [builder.mul(builder.add(b, ir.Constant(_I64, i)), ir.Constant(_I64, bb))])
                           for i in range(n)]
                    # software prefetch of the weight stream: the hardware prefetchers alone leave DRAM bandwidth
                    # unused
                    for k in range(0, n * bb + 63, 64):
                        prefetch_ptr(builder, _gep(builder, wps[0], PREFETCH_BYTES + k))
                    xoffs = [builder.mul(builder.add(b, ir.Constant(_I64, i)), ir.Constant(_I64, BLOCK_BYTES_Q8_K))
                             for i in range(n)]
                    xpss = [[builder.gep(p, [xo]) for xo in xoffs] for p in x0]
                    if zmm:
                        sums += _emit_vdot_q4_k_zmm(builder, wps, xpss)
                    else:
                        sums += [[t] for t in _emit_vdots(kind, builder, wps[0], [xps[0] for xps in xpss], simd)]
                for acc, per_block in zip(accs, sums):
                    a = builder.load(acc)
                    for si, d, mi, nm in per_block:
                        a = _fma(builder, d, _as_f32(builder, si), a)
                        a = a if mi is None else _fma(builder, nm, _as_f32(builder, mi), a)
                    builder.store(a, acc)

            step = 2 if zmm else 1
            with cgutils.for_range(builder, builder.udiv(nb64, ir.Constant(_I64, step))) as loop:
                blocks(builder.mul(loop.index, ir.Constant(_I64, step)), step)
            if step == 2:  # an odd block after the pairs
                odd = builder.trunc(nb64, ir.IntType(1))
                with builder.if_then(odd):
                    blocks(builder.sub(nb64, ir.Constant(_I64, 1)), 1)
            vals = [builder.load(acc) for acc in accs]
            return vals[0] if n_out == 1 else context.make_tuple(builder, retty, vals)

        return retty(w, wo, x, xo, stride, nb), codegen

    vdot_rows.__name__ = f"_vdot{n_x}x{n_w}_{kind}_{'simd' if simd else 'portable'}"
    return intrinsic(vdot_rows)


_vdot1_q4_k = _make_vdot_rows("q4_k", HAS_AVX2, 1)
_vdot1_q5_k = _make_vdot_rows("q5_k", HAS_AVX2, 1)
_vdot1_q6_k = _make_vdot_rows("q6_k", HAS_AVX2, 1)
_vdot1x2_q4_k = _make_vdot_rows("q4_k", HAS_AVX2, 1, 2)
_vdot1x2_q5_k = _make_vdot_rows("q5_k", HAS_AVX2, 1, 2)
_vdot1x2_q6_k = _make_vdot_rows("q6_k", HAS_AVX2, 1, 2)
_vdot4_q4_k = _make_vdot_rows("q4_k", HAS_AVX2, 4)
_vdot4_q5_k = _make_vdot_rows("q5_k", HAS_AVX2, 4)
_vdot4_q6_k = _make_vdot_rows("q6_k", HAS_AVX2, 4)
# Portable-IR variants, used by the tests to check the non-AVX2 code path on any machine.
_vdot1_q4_k_portable = _make_vdot_rows("q4_k", False, 1)
_vdot1_q5_k_portable = _make_vdot_rows("q5_k", False, 1)
_vdot1_q6_k_portable = _make_vdot_rows("q6_k", False, 1)


@intrinsic
def _load_f16(typingctx, a, off):
    """f32 value of the little-endian IEEE half at byte `off` of uint8 array `a`."""
    if not (_is_u8_array(a) and isinstance(off, types.Integer)):
        return None

    def codegen(context, builder, sig, args):
        p = _byte_ptr(context, builder, sig.args[0], args[0], context.cast(builder, args[1], sig.args[1], types.int64))
        return _h2f(builder, _load_ptr(builder, p, _I16))

    return types.float32(a, off), codegen


@intrinsic
def _f32_bits(typingctx, f):
    """Bit pattern of a float32 as int32."""
    if f != types.float32:
        return None

    def codegen(context, builder, sig, args):
        return builder.bitcast(args[0], _I32)

    return types.int32(f), codegen


# ----------------------------------------------------------------------------------------------------------
# Dequantization (bit-exact against gguf.quants.dequantize and llama.cpp's dequantize_row_*)
# ----------------------------------------------------------------------------------------------------------


@njit(cache=True, nogil=True, fastmath=_EXACT_MATH)
def _scale_min_k4(j, src, o):
    """6-bit (scale, min) j of the 12 scale bytes at src[o:o+12] (get_scale_min_k4)."""
    if j < 4:
        return src[o + j] & 63, src[o + j + 4] & 63
    sc = (src[o + j + 4] & 0xF) | ((src[o + j - 4] >> 6) << 4)
    mn = (src[o + j + 4] >> 4) | ((src[o + j] >> 6) << 4)
    return sc, mn


@njit(cache=True, nogil=True, fastmath=_EXACT_MATH)
def _dequant_rows_q45_k(dst, src, high_bits):
    n_rows, n_per_row = dst.shape
    bb = BLOCK_BYTES_Q5_K if high_bits else BLOCK_BYTES_Q4_K
    nb = n_per_row // QK_K
    if n_per_row % QK_K != 0 or src.shape[0] != n_rows or src.shape[1] != nb * bb:
        raise ValueError("dequant_rows_q4_k/q5_k: shape mismatch")
    qs_off = 48 if high_bits else 16
    # [64] i32 scratch: one 64-element chunk of quants, so the scaling loop below is branch-free and vectorizes
    q = np.empty(64, np.int32)
    for r in range(n_rows):
        s = src[r]
        y = dst[r]
        for b in range(nb):
            o = b * bb
            d = _load_f16(s, o)
            dmin = _load_f16(s, o + 2)
            for j in range(QK_K // 64):
                qo = o + qs_off + 32 * j
                for l in range(32):
                    q[l] = s[qo + l] & 0xF
                    q[32 + l] = s[qo + l] >> 4
                if high_bits:
                    for l in range(32):
                        h = s[o + 16 + l]
                        q[l] |= ((h >> (2 * j)) & 1) << 4
                        q[32 + l] |= ((h >> (2 * j + 1)) & 1) << 4
                sc, mn = _scale_min_k4(2 * j, s, o + 4)
                d1 = d * np.float32(sc)
                m1 = dmin * np.float32(mn)
                sc, mn = _scale_min_k4(2 * j + 1, s, o + 4)
                d2 = d * np.float32(sc)
                m2 = dmin * np.float32(mn)
                y0 = b * QK_K + 64 * j
                for l in range(32):
                    y[y0 + l] = d1 * np.float32(q[l]) - m1
                for l in range(32):
                    y[y0 + 32 + l] = d2 * np.float32(q[32 + l]) - m2


@njit(cache=True, nogil=True, fastmath=_EXACT_MATH)
def dequant_rows_q4_k(dst, src):
    """Dequantize Q4_K rows (block: f16 d, f16 dmin, 12 B 6-bit scales/mins, 128 B nibbles; x = d*sc*q - dmin*m).

    dst: [n_rows, n_per_row] f32, C-contiguous, n_per_row % 256 == 0
    src: [n_rows, n_per_row / 256 * 144] uint8 (GGUF bytes, may be read-only)
    """
    _dequant_rows_q45_k(dst, src, False)


@njit(cache=True, nogil=True, fastmath=_EXACT_MATH)
def dequant_rows_q5_k(dst, src):
    """Dequantize Q5_K rows (block: f16 d, f16 dmin, 12 B scales/mins, 32 B high bits, 128 B nibbles).

    dst: [n_rows, n_per_row] f32, C-contiguous, n_per_row % 256 == 0
    src: [n_rows, n_per_row / 256 * 176] uint8 (GGUF bytes, may be read-only)
    """
    _dequant_rows_q45_k(dst, src, True)


@njit(cache=True, nogil=True, fastmath=_EXACT_MATH)
def dequant_rows_q6_k(dst, src):
    """Dequantize Q6_K rows (block: 128 B low nibbles, 64 B high 2-bit pairs, 16 i8 scales, f16 d; x = d*sc*(q-32)).

    dst: [n_rows, n_per_row] f32, C-contiguous, n_per_row % 256 == 0
    src: [n_rows, n_per_row / 256 * 210] uint8 (GGUF bytes, may be read-only)
    """
    n_rows, n_per_row = dst.shape
    nb = n_per_row // QK_K
    if n_per_row % QK_K != 0 or src.shape[0] != n_rows or src.shape[1] != nb * BLOCK_BYTES_Q6_K:
        raise ValueError("dequant_rows_q6_k: shape mismatch")
    for r in range(n_rows):
        s = src[r]
        y = dst[r]
        for b in range(nb):
            o = b * BLOCK_BYTES_Q6_K
            d = _load_f16(s, o + 208)
            for n in range(2):
                ql = o + 64 * n
                qh = o + 128 + 32 * n
                sc = o + 192 + 8 * n
                y0 = b * QK_K + 128 * n
                for half in range(2):  # l in [16*half, 16*half+16) share one scale per quarter
                    d1 = d * np.float32(np.int8(s[sc + half]))
                    d2 = d * np.float32(np.int8(s[sc + half + 2]))
                    d3 = d * np.float32(np.int8(s[sc + half + 4]))
                    d4 = d * np.float32(np.int8(s[sc + half + 6]))
                    for l in range(16 * half, 16 * half + 16):
                        a = np.int32(s[ql + l])
                        c = np.int32(s[ql + l + 32])
                        h = np.int32(s[qh + l])
                        y[y0 + l] = d1 * np.float32(((a & 0xF) | ((h & 3) << 4)) - 32)
                        y[y0 + l + 32] = d2 * np.float32(((c & 0xF) | (((h >> 2) & 3) << 4)) - 32)
                        y[y0 + l + 64] = d3 * np.float32(((a >> 4) | (((h >> 4) & 3) << 4)) - 32)
                        y[y0 + l + 96] = d4 * np.float32(((c >> 4) | (((h >> 6) & 3) << 4)) - 32)


# ----------------------------------------------------------------------------------------------------------
# Q8_K activations
# ----------------------------------------------------------------------------------------------------------


@njit(cache=True, nogil=True, fastmath=_EXACT_MATH)
def quantize_rows_q8_k(dst, src):
    """Quantize f32 rows to Q8_K exactly as llama.cpp's quantize_row_q8_K_ref (block: f32 d, i8 qs[256], i16 bsums[16]).

    dst: [n_rows, n / 256 * 292] uint8, C-contiguous
    src: [n_rows, n] f32, n % 256 == 0
    """
    n_rows, n = src.shape
    nb = n // QK_K
    if n % QK_K != 0 or dst.shape[0] != n_rows or dst.shape[1] != nb * BLOCK_BYTES_Q8_K:
        raise ValueError("quantize_rows_q8_k: shape mismatch")
    q = np.empty(QK_K, np.int32)  # [256] i32 scratch: straight-line loops below vectorize
    for r in range(n_rows):
        row = dst[r]
        row_f32 = row.view(np.float32)  # [nb * 73] f32 (d at word 73*b)
        row_i16 = row.view(np.int16)  # [nb * 146] i16 (bsums at 146*b + 130)
        x = src[r]
        for b in range(nb):
            x0 = b * QK_K
            o = b * BLOCK_BYTES_Q8_K
            # max |x| on the bit patterns (integer max vectorizes; same order as floats for non-NaN values),
            # then the first element that reaches it, as the reference's strict '>' scan picks
            amax_bits = 0
            for j in range(QK_K):
                amax_bits = max(amax_bits, _f32_bits(x[x0 + j]) & 0x7FFFFFFF)
            if amax_bits == 0:
                for j in range(BLOCK_BYTES_Q8_K):
                    row[o + j] = 0
                continue
            mx = np.float32(0.0)
            for j in range(QK_K):
                if (_f32_bits(x[x0 + j]) & 0x7FFFFFFF) == amax_bits:
                    mx = x[x0 + j]
                    break
            iscale = np.float32(-127.0) / mx
            for j in range(QK_K):
                # nearest_int: round-half-even through the 1.5*2**23 trick, in f32
                val = iscale * x[x0 + j] + np.float32(12582912.0)
                q[j] = min(127, (_f32_bits(val) & 0x007FFFFF) - 0x00400000)
            for j in range(QK_K):
                row[o + 4 + j] = np.uint8(q[j] & 0xFF)
            for s in range(QK_K // 16):
                bsum = np.int32(0)
                for ii in range(16):
                    bsum += q[16 * s + ii]
                row_i16[(o + 4 + QK_K) // 2 + s] = bsum
            row_f32[o // 4] = np.float32(1.0) / iscale


@njit(cache=True, nogil=True, parallel=True)
def quantize_rows_q8_k_par(dst, src):
    """quantize_rows_q8_k with the rows spread over the threads (prompt batches); the same bytes."""
    n = src.shape[0]
    n_chunk = min(n, 64)
    for c in prange(n_chunk):
        r0 = c * n // n_chunk
        r1 = (c + 1) * n // n_chunk
        quantize_rows_q8_k(dst[r0:r1], src[r0:r1])


# ----------------------------------------------------------------------------------------------------------
# Matmuls: dst[t, r] = dot(dequant(w[r]), dequant(xq[t])) with integer block dots
# ----------------------------------------------------------------------------------------------------------


@njit(cache=True, nogil=True)
def _pad_tail_q8_k(xq, t0):
    """Q8_K rows t0.. of xq (2 or 3 of them) zero-padded to [4, bytes]; [0, bytes] for 0 or 1 rows.

    Their dots then run as one 4-token pass (a token's result does not depend on the pass width).
    Serial: in a parallel kernel the zero fill would be a parallel launch of its own."""
    m = xq.shape[0] - t0
    xq_pad = np.zeros((4 if m >= 2 else 0, xq.shape[1]), np.uint8)
    if m >= 2:
        for i in range(m):
            xq_pad[i] = xq[t0 + i]
    return xq_pad


@njit(cache=True, nogil=True, fastmath=FASTMATH, inline="always")
def _vdot4_k(kind, w, wo, xq, xo, xb, nb):
    """Dots of weight row w[wo:] (kind KIND_Q4_K/Q5_K/Q6_K) with the 4 Q8_K rows at xq[xo:] (stride xb)."""
    if kind == KIND_Q4_K:
        return _vdot4_q4_k(w, wo, xq, xo, xb, nb)
    if kind == KIND_Q5_K:
        return _vdot4_q5_k(w, wo, xq, xo, xb, nb)
    return _vdot4_q6_k(w, wo, xq, xo, xb, nb)


@njit(cache=True, nogil=True, fastmath=FASTMATH, inline="always")
def _vdot1_k(kind, w, wo, xq, xo, xb, nb):
    """Dot of weight row w[wo:] (kind KIND_Q4_K/Q5_K/Q6_K) with the Q8_K row at xq[xo:]."""
    if kind == KIND_Q4_K:
        return _vdot1_q4_k(w, wo, xq, xo, xb, nb)
    if kind == KIND_Q5_K:
        return _vdot1_q5_k(w, wo, xq, xo, xb, nb)
    return _vdot1_q6_k(w, wo, xq, xo, xb, nb)


@njit(cache=True, nogil=True, fastmath=FASTMATH, inline="always")
def _vdot1x2_k(kind, w, wo, wb, xq, xo, nb):
    """Dots of weight rows w[wo:] and w[wo + wb:] (kind KIND_Q4_K/Q5_K/Q6_K) with the Q8_K row at xq[xo:]."""
    if kind == KIND_Q4_K:
        return _vdot1x2_q4_k(w, wo, xq, xo, wb, nb)
    if kind == KIND_Q5_K:
        return _vdot1x2_q5_k(w, wo, xq, xo, wb, nb)
    return _vdot1x2_q6_k(w, wo, xq, xo, wb, nb)


@njit(cache=True, nogil=True, fastmath=FASTMATH)
def rows_k1(kind, w, row0, r0, r1, xq, xo, nb, dst):
    """dst[r] = dot(w[row0 + r], the Q8_K row at xq[xo:]) for r in [r0, r1), two rows a call then the odd one:
    the same bits as one row a call."""
    wb = w.shape[1]
    r = r0
    while r + 2 <= r1:
        a, b = _vdot1x2_k(kind, w, (row0 + r) * wb, wb, xq, xo, nb)
        dst[r] = a
        dst[r + 1] = b
        r += 2
    if r < r1:
        dst[r] = _vdot1_k(kind, w, (row0 + r) * wb, xq, xo, 0, nb)


@njit(cache=True, nogil=True, fastmath=FASTMATH, parallel=True)
def matmul_k(dst, w, xq, kind):
    """dst = xq @ w.T for k-quant weights and Q8_K activations (llama.cpp vec_dot_q{4,5,6}_K_q8_K per block).

    dst:  [n_tok, n_out] f32
    w:    [n_out, n_in / 256 * BLOCK_BYTES_Q{4,5,6}_K] uint8 (GGUF bytes, may be read-only)
    xq:   [n_tok, n_in / 256 * 292] uint8 (quantize_rows_q8_k)
    kind: KIND_Q4_K | KIND_Q5_K | KIND_Q6_K
    """
    n_tok = xq.shape[0]
    n_out = w.shape[0]
    nb = xq.shape[1] // BLOCK_BYTES_Q8_K
    if not matmul_shapes_ok(dst, w, xq, kind):
        raise ValueError("matmul_k: shape mismatch")
    wb = w.shape[1]
    xb = xq.shape[1]
    n_tiles = (n_out + _ROW_TILE - 1) // _ROW_TILE
    n_tok4 = n_tok - n_tok % 4
    xq_pad = _pad_tail_q8_k(xq, n_tok4)  # 2-3 leftover tokens: one padded 4-token pass
    for it in prange(n_tiles):
        r0, r1 = it * _ROW_TILE, min(n_out, (it + 1) * _ROW_TILE)
        for r in range(r0, r1):
            # 4 tokens per pass: each weight block is unpacked once per 4 tokens; the row stays in L1
            for t in range(0, n_tok4, 4):
                a0, a1, a2, a3 = _vdot4_k(kind, w, r * wb, xq, t * xb, xb, nb)
                dst[t, r] = a0
                dst[t + 1, r] = a1
                dst[t + 2, r] = a2
                dst[t + 3, r] = a3
            if xq_pad.shape[0]:
                a0, a1, a2, a3 = _vdot4_k(kind, w, r * wb, xq_pad, 0, xb, nb)
                dst[n_tok4, r] = a0
                dst[n_tok4 + 1, r] = a1
                if n_tok4 + 2 < n_tok:
                    dst[n_tok4 + 2, r] = a2
        if xq_pad.shape[0] == 0 and n_tok4 < n_tok:  # one leftover token (a decoded one): rows in pairs
            rows_k1(kind, w, np.int64(0), r0, r1, xq, n_tok4 * xb, nb, dst[n_tok4])


@njit(cache=True, nogil=True)
def _matmul_k_auto(dst, w, xq, kind):
    """One token on the row dot (matmul_k); more on the prompt tiles (same bits)."""
    if xq.shape[0] >= (TILE_MIN_TOKENS_Q6_K if kind == KIND_Q6_K else TILE_MIN_TOKENS):
        matmul_k_tiles(dst, w, xq, kind)
    else:
        matmul_k(dst, w, xq, kind)


@njit(cache=True, nogil=True)
def matmul_q4_k(dst, w, xq):
    """Q4_K weights x Q8_K activations (_matmul_k_auto)."""
    _matmul_k_auto(dst, w, xq, np.int64(KIND_Q4_K))


@njit(cache=True, nogil=True)
def matmul_q5_k(dst, w, xq):
    """Q5_K weights x Q8_K activations (_matmul_k_auto)."""
    _matmul_k_auto(dst, w, xq, np.int64(KIND_Q5_K))


@njit(cache=True, nogil=True)
def matmul_q6_k(dst, w, xq):
    """Q6_K weights x Q8_K activations (_matmul_k_auto)."""
    _matmul_k_auto(dst, w, xq, np.int64(KIND_Q6_K))


@njit(cache=True, nogil=True, fastmath=FASTMATH)
def _matmul_k_portable(dst, w, xq, kind):
    """Serial matmul through the portable-IR block dots (kind KIND_Q4_K/Q5_K/Q6_K); test aid for CPUs without AVX2."""
    nb = xq.shape[1] // BLOCK_BYTES_Q8_K
    wb = w.shape[1]
    xb = xq.shape[1]
    for r in range(w.shape[0]):
        for t in range(xq.shape[0]):
            if kind == KIND_Q4_K:
                dst[t, r] = _vdot1_q4_k_portable(w, r * wb, xq, t * xb, xb, nb)
            elif kind == KIND_Q5_K:
                dst[t, r] = _vdot1_q5_k_portable(w, r * wb, xq, t * xb, xb, nb)
            else:
                dst[t, r] = _vdot1_q6_k_portable(w, r * wb, xq, t * xb, xb, nb)


# ------------------------------------------------------------------------- grouped matmul



@njit(cache=True, nogil=True, fastmath=FASTMATH, parallel=True)
def matmul_id_k(dst, w, xq, w_row0, x_row, kind):
    """dst[g, r] = dot(w[w_row0[g] + r], xq[x_row[g]]) for k-quant weights (kind: KIND_Q4_K/Q5_K/Q6_K).

    dst: [n_group, n_out] f32; w: [n_rows, row_bytes] uint8; xq: [n_x, n_in / 256 * 292] uint8 (Q8_K);
    w_row0, x_row: [n_group] int64, validated by ops.matmul.
    """
    n_group, n_out = dst.shape
    nb = xq.shape[1] // BLOCK_BYTES_Q8_K
    xb = xq.shape[1]
    n_tiles = (n_out + _ROW_TILE - 1) // _ROW_TILE
    for it in prange(n_group * n_tiles):
        g = it // n_tiles
        r0 = (it % n_tiles) * _ROW_TILE
        rows_k1(kind, w, w_row0[g], r0, min(n_out, r0 + _ROW_TILE), xq, x_row[g] * xb, nb, dst[g])
