"""k-quants: Q4_K/Q5_K/Q6_K weight rows (dequant, matmul against Q8_K activations) and Q8_K quantization.

Layouts and integer dot products follow llama.cpp (ggml-common.h, ggml-quants.c, ggml-cpu/quants.c). The row dots
and the Q4_K/Q5_K prompt tiles are LLVM IR emitted by Numba intrinsics: AVX2 pmaddubsw/pmaddwd when the target has
AVX2, portable vector IR otherwise. Leaf: imports numpy, numba, llvmlite, simd.py's IR toolkit and dots_q8_0's
tile helpers. Shapes are numpy (row-major) order.
"""

import numpy as np
from llvmlite import ir
from numba import njit, prange
from numba.core import cgutils, types
from numba.extending import intrinsic

from . import codes
from .config import FASTMATH
from .dots_q8_0 import _fma, _transpose8
from .simd import (HAS_AVX2, PREFETCH_BYTES, _F32, _I8, _I16, _I32, _I64, _call, _h2f, _load_ptr,
                   _mask, _splat, prefetch_ptr)

QK_K = 256
BLOCK_BYTES_Q4_K = 144  # f16 d, f16 dmin, u8 scales[12], u8 qs[128]
BLOCK_BYTES_Q5_K = 176  # f16 d, f16 dmin, u8 scales[12], u8 qh[32], u8 qs[128]
BLOCK_BYTES_Q6_K = 210  # u8 ql[128], u8 qh[64], i8 scales[16], f16 d
BLOCK_BYTES_Q8_K = 292  # f32 d, i8 qs[256], i16 bsums[16]
KIND_Q4_K, KIND_Q5_K, KIND_Q6_K = codes.Q4_K, codes.Q5_K, codes.Q6_K

# Output rows per prange work item of the matmuls.
_ROW_TILE = 16

# Dequant and quantize must be bit-exact against gguf-py / llama.cpp's reference: no contraction into FMAs,
# no reciprocal-for-division, no reassociation.
_EXACT_MATH = False


# ----------------------------------------------------------------------------------------------------------
# k-quant IR pieces (the shared toolkit and the target's features are simd.py's)
# ----------------------------------------------------------------------------------------------------------

_V32I8 = ir.VectorType(_I8, 32)
_V16I8 = ir.VectorType(_I8, 16)
_V16I16 = ir.VectorType(_I16, 16)
_V32I16 = ir.VectorType(_I16, 32)
_V8I32 = ir.VectorType(_I32, 8)
_V16I32 = ir.VectorType(_I32, 16)
_V4I32 = ir.VectorType(_I32, 4)
_V8F32 = ir.VectorType(_F32, 8)


def _byte_ptr(context, builder, aryty, ary, off):
    """i8* to byte `off` of a uint8 array's buffer."""
    data = context.make_array(aryty)(context, builder, ary).data
    data = builder.bitcast(data, _I8.as_pointer())
    return builder.gep(data, [off])


def _make_madd(intrinsic, in_ty, out_ty, wide_ty, unsigned_a):
    """An emitter of a pairwise multiply-add (out[i] = a[2i]*b[2i] + a[2i+1]*b[2i+1]): the AVX2 intrinsic when
    simd, else the same sums in portable vector IR (a zero- or sign-extended, b sign-extended)."""
    n = out_ty.count

    def madd(builder, a, b, simd):
        if simd:
            fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(out_ty, [in_ty, in_ty]), intrinsic)
            return builder.call(fn, [a, b])
        p = builder.mul(builder.zext(a, wide_ty) if unsigned_a else builder.sext(a, wide_ty), builder.sext(b, wide_ty))
        ev = builder.shuffle_vector(p, p, _mask(range(0, 2 * n, 2)))
        od = builder.shuffle_vector(p, p, _mask(range(1, 2 * n, 2)))
        return builder.add(ev, od)
    return madd


# pmaddubsw: u8 a[32] x i8 b[32] -> i16[16]; our operands never saturate (|sum| <= 2*63*127)
_maddubs = _make_madd("llvm.x86.avx2.pmadd.ub.sw", _V32I8, _V16I16, _V32I16, True)
# pmaddwd: i16 a[16] x i16 b[16] -> i32[8]
_maddwd = _make_madd("llvm.x86.avx2.pmadd.wd", _V16I16, _V8I32, _V16I32, False)


def _k4_scales_mins(builder, p):
    """Unpack the 12-byte 6-bit scales/mins of Q4_K/Q5_K at p -> i16[16]: lanes 0..7 scales, 8..15 mins."""
    u0 = _load_ptr(builder, p, _I32)
    u1 = _load_ptr(builder, builder.gep(p, [ir.Constant(_I64, 4)]), _I32)
    u2 = _load_ptr(builder, builder.gep(p, [ir.Constant(_I64, 8)]), _I32)
    c = lambda v: ir.Constant(_I32, v)  # noqa: E731
    km1, km2, km3 = c(0x3F3F3F3F), c(0x0F0F0F0F), c(0x03030303)
    t3 = builder.or_(
        builder.and_(builder.lshr(u2, c(4)), km2), builder.shl(builder.and_(builder.lshr(u1, c(6)), km3), c(4))
    )
    t2 = builder.and_(u1, km1)
    t1 = builder.or_(builder.and_(u2, km2), builder.shl(builder.and_(builder.lshr(u0, c(6)), km3), c(4)))
    t0 = builder.and_(u0, km1)
    v = ir.Constant(_V4I32, ir.Undefined)
    for i, t in enumerate((t0, t1, t2, t3)):
        v = builder.insert_element(v, t, c(i))
    return builder.zext(builder.bitcast(v, _V16I8), _V16I16)


def _q8k_parts(builder, xp):
    """(d f32, pointer to qs, bsums i16[16]) of the Q8_K block at xp."""
    d = _load_ptr(builder, xp, _F32)
    qs = builder.gep(xp, [ir.Constant(_I64, 4)])
    bsums = _load_ptr(builder, builder.gep(xp, [ir.Constant(_I64, 4 + QK_K)]), _V16I16)
    return d, qs, bsums


def _gep(builder, p, off):
    return builder.gep(p, [ir.Constant(_I64, off)])


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


def _reduce_i32(builder, v):
    """Sum of the lanes of an <8 x i32> (exact)."""
    return _call(builder, "llvm.vector.reduce.add.v8i32", _I32, [v])


def _q6_k_quants(builder, wp):
    """The 8 chunks of 32 quants (0..63, u8) of the Q6_K block at wp, in element order."""
    m4 = _splat(_I8, 32, 0x0F)
    m3 = _splat(_I8, 32, 0x03)
    out = []
    for h in range(2):
        ql0 = _load_ptr(builder, _gep(builder, wp, 64 * h), _V32I8)
        ql1 = _load_ptr(builder, _gep(builder, wp, 64 * h + 32), _V32I8)
        qh = _load_ptr(builder, _gep(builder, wp, 128 + 32 * h), _V32I8)
        quads = (
            (builder.and_(ql0, m4), 0),
            (builder.and_(ql1, m4), 2),
            (builder.lshr(ql0, _splat(_I8, 32, 4)), 4),
            (builder.lshr(ql1, _splat(_I8, 32, 4)), 6),
        )
        for low, shift in quads:
            hb = builder.and_(builder.lshr(qh, _splat(_I8, 32, shift)), m3) if shift else builder.and_(qh, m3)
            out.append(builder.or_(low, builder.shl(hb, _splat(_I8, 32, 4))))
    return out


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


def _is_u8_array(t):
    # C layout only: the intrinsics address rows as base + r * row_bytes
    return isinstance(t, types.Array) and t.dtype == types.uint8 and t.layout == "C"


def _emit_vdots(kind, builder, wp, xps, simd):
    if kind == "q4_k":
        return _emit_vdot_q4_k(builder, wp, xps, simd, False)
    if kind == "q5_k":
        return _emit_vdot_q4_k(builder, wp, xps, simd, True)
    return _emit_vdot_q6_k(builder, wp, xps, simd)


_BLOCK_BYTES = {"q4_k": BLOCK_BYTES_Q4_K, "q5_k": BLOCK_BYTES_Q5_K, "q6_k": BLOCK_BYTES_Q6_K}


def _make_vdot_rows(kind, simd, n_x):
    """Intrinsic: dots of one weight row with n_x Q8_K rows, looping over the nb blocks in IR.

    (w, wo, x, xo, xstride, nb): weight row at byte wo of w; Q8_K row i at byte xo + i*xstride of x.
    Returns f32 (n_x == 1) or a tuple of n_x f32. A token adds each block's exact integer sums to one f32
    (_emit_vdot_q4_k, _emit_vdot_q6_k), so its result does not depend on n_x or on the thread count.
    """
    bb = _BLOCK_BYTES[kind]

    def vdot_rows(typingctx, w, wo, x, xo, xstride, nb):
        ints = (wo, xo, xstride, nb)
        if not (_is_u8_array(w) and _is_u8_array(x) and all(isinstance(a, types.Integer) for a in ints)):
            return None
        retty = types.float32 if n_x == 1 else types.UniTuple(types.float32, n_x)

        def codegen(context, builder, sig, args):
            i64 = [context.cast(builder, args[k], sig.args[k], types.int64) for k in (1, 3, 4, 5)]
            wo64, xo64, xs64, nb64 = i64
            w0 = _byte_ptr(context, builder, sig.args[0], args[0], wo64)
            x0 = [
                _byte_ptr(context, builder, sig.args[2], args[2], builder.add(xo64, builder.mul(xs64, ir.Constant(_I64, i))))
                for i in range(n_x)
            ]
            accs = [cgutils.alloca_once_value(builder, ir.Constant(_F32, 0.0)) for _ in range(n_x)]
            with cgutils.for_range(builder, nb64) as loop:
                b = loop.index
                wp = builder.gep(w0, [builder.mul(b, ir.Constant(_I64, bb))])
                # software prefetch of the weight stream: the hardware prefetchers alone leave DRAM bandwidth unused
                for k in range(0, bb + 63, 64):
                    prefetch_ptr(builder, _gep(builder, wp, PREFETCH_BYTES + k))
                xoff = builder.mul(b, ir.Constant(_I64, BLOCK_BYTES_Q8_K))
                xps = [builder.gep(p, [xoff]) for p in x0]
                for acc, (si, d, mi, nm) in zip(accs, _emit_vdots(kind, builder, wp, xps, simd)):
                    a = _fma(builder, d, builder.sitofp(si, _F32), builder.load(acc))
                    builder.store(a if mi is None else _fma(builder, nm, builder.sitofp(mi, _F32), a), acc)
            vals = [builder.load(acc) for acc in accs]
            return vals[0] if n_x == 1 else context.make_tuple(builder, retty, vals)

        return retty(w, wo, x, xo, xstride, nb), codegen

    vdot_rows.__name__ = f"_vdot{n_x}_{kind}_{'simd' if simd else 'portable'}"
    return intrinsic(vdot_rows)


_vdot1_q4_k = _make_vdot_rows("q4_k", HAS_AVX2, 1)
_vdot1_q5_k = _make_vdot_rows("q5_k", HAS_AVX2, 1)
_vdot1_q6_k = _make_vdot_rows("q6_k", HAS_AVX2, 1)
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
# Prompt tiles (Q4_K / Q5_K / Q6_K): 8 weight rows x TILE_TOKENS tokens. A group of 8 rows is unpacked once per call
# into a buffer (L1/L2-resident) laid out for the tiles: lane r of every vector is row r, so one broadcast
# activation dword serves 8 rows and a sub-block's scale applies once per 32 values, not once per row.
# ----------------------------------------------------------------------------------------------------------

# One packed superblock of 8 rows: the quants as 8 chunks of 32 x 8 vectors (vector k, lane r: quants 4k..4k+3 of
# the chunk in row r); the sub-block scales as i16 pairs (sc_r, sc_r), one vector per sub-block (Q4_K/Q5_K: 8 of
# 32 values, Q6_K: 16 of 16); i16 pairs of neighbouring sub-blocks' mins (Q4_K/Q5_K: (m_r[2k], m_r[2k+1]), 4
# vectors) or scales (Q6_K: (sc_r[2k], sc_r[2k+1]), 8 vectors), dotted with the activations' sub-block sums;
# then the rows' d (and -dmin) as f32.
_Q_OFF = 0
_SC_OFF = _Q_OFF + 8 * 8 * 32
_PAIRS_OFF = {False: _SC_OFF + 8 * 32, True: _SC_OFF + 16 * 32}  # by q6
_D_OFF = {False: _PAIRS_OFF[False] + 4 * 32, True: _PAIRS_OFF[True] + 8 * 32}
_NDMIN_OFF = _D_OFF[False] + 32
PACK_BYTES = max(_NDMIN_OFF, _D_OFF[True]) + 32  # per superblock
TILE_ROWS = 8
# Tokens of a tile: its 16-bit pair sums and 32-bit block sums (two vectors a token) stay in the 16 ymm registers.
TILE_TOKENS = 4
# Matmuls of this many tokens or more run on the tiles: Q4_K/Q5_K from 2 (1.4x the row dot of matmul_k; one
# token: 0.75x), Q6_K, whose packing costs more, from 8 (1.15x; 4 tokens: 0.93x).
TILE_MIN_TOKENS = 2
TILE_MIN_TOKENS_Q6_K = 8
# Partial sums of 8 (Q4_K: 4-bit quants), 4 (Q5_K) or 2 (Q6_K) pmaddubsw results stay inside int16:
# 8 * 2 * 15 * 128, 4 * 2 * 31 * 128 and 2 * 2 * 63 * 127 are all below 32768 (|Q8_K quants| <= 127).
_GROUP = {"q4_k": 8, "q5_k": 4, "q6_k": 2}

_V8I16 = ir.VectorType(_I16, 8)


def _store(builder, v, p, off):
    builder.store(v, builder.bitcast(_gep(builder, p, off), v.type.as_pointer()), align=1)


def _bcast32(builder, v):
    """<8 x i32> of the i32 v in every lane."""
    e = builder.insert_element(ir.Constant(_V8I32, ir.Undefined), v, ir.Constant(_I32, 0))
    return builder.shuffle_vector(e, ir.Constant(_V8I32, ir.Undefined), _mask([0] * 8))


def _scale_pairs(builder, rows, op, n_sub, pairs_off):
    """Stores the tile's scale vectors from the 8 rows' <16 x i16> (lanes 0..n_sub-1 the sub-block scales, then
    Q4_K/Q5_K's mins): sub-block s's (sc_r, sc_r) at _SC_OFF + 32s, the neighbour pairs of _transpose8's vectors
    (n_sub == 8: the min pairs, vectors 4..7; 16: the scale pairs, all 8) from pairs_off."""
    st = [builder.bitcast(v, _V16I16) for v in _transpose8(builder, [builder.bitcast(r, _V32I8) for r in rows])]
    for k in range(n_sub // 2):
        for h in range(2):  # sub-block 2k + h: its scale in both i16 lanes of row r's pair
            _store(builder, builder.shuffle_vector(st[k], st[k], _mask([2 * (i // 2) + h for i in range(16)])),
                   op, _SC_OFF + 32 * (2 * k + h))
    first = 4 if n_sub == 8 else 0
    for k in range(first, 8):
        _store(builder, st[k], op, pairs_off + 32 * (k - first))


def _half_scales(builder, wps, off):
    """<8 x f32> of the f16 at byte off of each of the 8 blocks at wps."""
    h = ir.Constant(_V8I16, ir.Undefined)
    for j, wp in enumerate(wps):
        h = builder.insert_element(h, _load_ptr(builder, _gep(builder, wp, off), _I16), ir.Constant(_I32, j))
    return _h2f(builder, h, 8)


def _chunks_q45_k(builder, wp, j4, high_bits, qh):
    """Q4_K/Q5_K chunks 2*j4 and 2*j4+1 (32 quants each) of the block at wp."""
    bits = _load_ptr(builder, _gep(builder, wp, (48 if high_bits else 16) + 32 * j4), _V32I8)
    a, c = builder.and_(bits, _splat(_I8, 32, 0x0F)), builder.lshr(bits, _splat(_I8, 32, 4))
    if high_bits:
        one = _splat(_I8, 32, 1)
        a = builder.or_(a, builder.shl(builder.and_(builder.lshr(qh, _splat(_I8, 32, 2 * j4)), one), _splat(_I8, 32, 4)))
        c = builder.or_(c, builder.shl(builder.and_(builder.lshr(qh, _splat(_I8, 32, 2 * j4 + 1)), one),
                                       _splat(_I8, 32, 4)))
    return a, c


def _pack_codegen(kind):
    bb = _BLOCK_BYTES[kind]
    q6 = kind == "q6_k"

    def codegen(context, builder, sig, args):
        wo, ws, nr, nb = [context.cast(builder, args[k], sig.args[k], types.int64) for k in (2, 3, 4, 5)]
        bp = _byte_ptr(context, builder, sig.args[0], args[0], ir.Constant(_I64, 0))
        last = builder.sub(nr, ir.Constant(_I64, 1))
        # rows past the matrix's end repeat its last row (their lanes are computed and dropped)
        rows = []
        for j in range(TILE_ROWS):
            jj = ir.Constant(_I64, j)
            r = builder.select(builder.icmp_signed("<", jj, nr), jj, last)
            rows.append(_byte_ptr(context, builder, sig.args[1], args[1], builder.add(wo, builder.mul(r, ws))))
        with cgutils.for_range(builder, nb) as loop:
            b = loop.index
            wps = [builder.gep(p, [builder.mul(b, ir.Constant(_I64, bb))]) for p in rows]
            op = builder.gep(bp, [builder.mul(b, ir.Constant(_I64, PACK_BYTES))])
            if q6:
                sc = [builder.sext(_load_ptr(builder, _gep(builder, wp, 192), _V16I8), _V16I16) for wp in wps]
                _scale_pairs(builder, sc, op, 16, _PAIRS_OFF[True])
                _store(builder, _half_scales(builder, wps, 208), op, _D_OFF[True])
                chunks = [_q6_k_quants(builder, wp) for wp in wps]  # [row][chunk]
                for c in range(8):
                    for k, v in enumerate(_transpose8(builder, [chunks[j][c] for j in range(TILE_ROWS)])):
                        _store(builder, v, op, _Q_OFF + 32 * (8 * c + k))
            else:
                high_bits = kind == "q5_k"
                _scale_pairs(builder, [_k4_scales_mins(builder, _gep(builder, wp, 4)) for wp in wps], op, 8,
                             _PAIRS_OFF[False])
                _store(builder, _half_scales(builder, wps, 0), op, _D_OFF[False])
                _store(builder, builder.fneg(_half_scales(builder, wps, 2)), op, _NDMIN_OFF)
                qh = [_load_ptr(builder, _gep(builder, wp, 16), _V32I8) if high_bits else None for wp in wps]
                for j4 in range(4):
                    lo, hi = zip(*[_chunks_q45_k(builder, wp, j4, high_bits, qh[j]) for j, wp in enumerate(wps)])
                    for h, vs in enumerate((lo, hi)):
                        for k, v in enumerate(_transpose8(builder, list(vs))):
                            _store(builder, v, op, _Q_OFF + 32 * (8 * (2 * j4 + h) + k))
        return context.get_dummy_value()

    return codegen


def _tile_codegen(kind, n_tok, simd):
    group = _GROUP[kind]
    q6 = kind == "q6_k"
    n_pairs = 8 if q6 else 4

    def codegen(context, builder, sig, args):
        xo, xs, nb = [context.cast(builder, args[k], sig.args[k], types.int64) for k in (2, 3, 4)]
        bp = _byte_ptr(context, builder, sig.args[0], args[0], ir.Constant(_I64, 0))
        outp = builder.bitcast(_byte_ptr(context, builder, sig.args[5], args[5], ir.Constant(_I64, 0)),
                               _V8F32.as_pointer())
        xts = [_byte_ptr(context, builder, sig.args[1], args[1], builder.add(xo, builder.mul(xs, ir.Constant(_I64, t))))
               for t in range(n_tok)]
        accs = [cgutils.alloca_once_value(builder, ir.Constant(_V8F32, None)) for _ in range(n_tok)]
        ones = _splat(_I16, 16, 1)
        with cgutils.for_range(builder, nb) as loop:
            b = loop.index
            op = builder.gep(bp, [builder.mul(b, ir.Constant(_I64, PACK_BYTES))])
            xbs = [builder.gep(p, [builder.mul(b, ir.Constant(_I64, BLOCK_BYTES_Q8_K))]) for p in xts]
            sums = [None] * n_tok
            for c in range(8):  # chunks of 32 quants
                part = [None] * n_tok
                for k in range(8):
                    wv = _load_ptr(builder, _gep(builder, op, _Q_OFF + 32 * (8 * c + k)), _V32I8)
                    for t in range(n_tok):
                        xv = _bcast32(builder, _load_ptr(builder, _gep(builder, xbs[t], 4 + 32 * c + 4 * k), _I32))
                        p = _maddubs(builder, wv, builder.bitcast(xv, _V32I8), simd)
                        part[t] = p if part[t] is None else builder.add(part[t], p)
                    if (k + 1) % group == 0:
                        sub = 2 * c + k // 4 if q6 else c  # Q6_K: 16-value sub-blocks, dwords 0-3 and 4-7
                        sc = _load_ptr(builder, _gep(builder, op, _SC_OFF + 32 * sub), _V16I16)
                        for t in range(n_tok):
                            v = _maddwd(builder, part[t], sc, simd)
                            sums[t] = v if sums[t] is None else builder.add(sums[t], v)
                            part[t] = None
            pv = [_load_ptr(builder, _gep(builder, op, _PAIRS_OFF[q6] + 32 * k), _V16I16) for k in range(n_pairs)]
            dv = _load_ptr(builder, _gep(builder, op, _D_OFF[q6]), _V8F32)
            ndv = None if q6 else _load_ptr(builder, _gep(builder, op, _NDMIN_OFF), _V8F32)
            for t in range(n_tok):
                # the activations' sub-block sums as i16 pairs per dword: Q8_K's 16-value bsums (Q6_K), or
                # the sums of their pairs (the 32-value sub-blocks of Q4_K/Q5_K)
                bs = _load_ptr(builder, _gep(builder, xbs[t], 4 + QK_K), _V16I16)
                if q6:
                    bsd = builder.bitcast(bs, _V8I32)
                else:
                    bsd = builder.bitcast(builder.trunc(_maddwd(builder, bs, ones, simd), _V8I16), _V4I32)
                psum = None
                for k in range(n_pairs):
                    bk = builder.bitcast(_bcast32(builder, builder.extract_element(bsd, ir.Constant(_I32, k))), _V16I16)
                    v = _maddwd(builder, pv[k], bk, simd)
                    psum = v if psum is None else builder.add(psum, v)
                dx = builder.bitcast(_bcast32(builder, _load_ptr(builder, xbs[t], _I32)), _V8F32)
                if q6:  # quants are stored +32: subtract 32 * sum_s sc[s] * bsums[s]
                    si = builder.sub(sums[t], builder.shl(psum, _splat(_I32, 8, 5)))
                    acc = _fma(builder, builder.fmul(dv, dx), builder.sitofp(si, _V8F32), builder.load(accs[t]))
                else:
                    acc = _fma(builder, builder.fmul(dv, dx), builder.sitofp(sums[t], _V8F32), builder.load(accs[t]))
                    acc = _fma(builder, builder.fmul(ndv, dx), builder.sitofp(psum, _V8F32), acc)
                builder.store(acc, accs[t])
        for t in range(n_tok):
            builder.store(builder.load(accs[t]), builder.gep(outp, [ir.Constant(_I64, t)]), align=4)
        return context.get_dummy_value()

    return codegen


def _is_c_array(t, dtype):
    return isinstance(t, types.Array) and t.dtype == dtype and t.layout == "C"


def _make_pack(kind):
    def pack(typingctx, buf, w, wo, ws, nr, nb):
        """Packs rows wo + r*ws (r < nr; later lanes repeat the last row) of w, nb superblocks, into buf."""
        if not (_is_c_array(buf, types.uint8) and _is_c_array(w, types.uint8)
                and all(isinstance(a, types.Integer) for a in (wo, ws, nr, nb))):
            return None
        return types.none(buf, w, wo, ws, nr, nb), _pack_codegen(kind)

    return intrinsic(pack)


def _make_tile(kind, n_tok, simd):
    def tile(typingctx, buf, x, xo, xs, nb, out):
        """out[t*8 + r] = row r of the packed buf . Q8_K row at x[xo + t*xs:], t < n_tok."""
        if not (_is_c_array(buf, types.uint8) and _is_c_array(x, types.uint8) and _is_c_array(out, types.float32)
                and all(isinstance(a, types.Integer) for a in (xo, xs, nb))):
            return None
        return types.none(buf, x, xo, xs, nb, out), _tile_codegen(kind, n_tok, simd)

    return intrinsic(tile)


_pack_q4_k = _make_pack("q4_k")
_pack_q5_k = _make_pack("q5_k")
_pack_q6_k = _make_pack("q6_k")
_tile_q4_k = _make_tile("q4_k", TILE_TOKENS, HAS_AVX2)
_tile1_q4_k = _make_tile("q4_k", 1, HAS_AVX2)
_tile_q5_k = _make_tile("q5_k", TILE_TOKENS, HAS_AVX2)
_tile1_q5_k = _make_tile("q5_k", 1, HAS_AVX2)
_tile_q6_k = _make_tile("q6_k", TILE_TOKENS, HAS_AVX2)
_tile1_q6_k = _make_tile("q6_k", 1, HAS_AVX2)
# Portable-IR variants, used by the tests to check the non-AVX2 code path on any machine.
_tile_q4_k_portable = _make_tile("q4_k", TILE_TOKENS, False)
_tile_q5_k_portable = _make_tile("q5_k", TILE_TOKENS, False)
_tile_q6_k_portable = _make_tile("q6_k", TILE_TOKENS, False)


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


@njit(cache=True, nogil=True, inline="always")
def is_k_quant(kind):
    """Whether kind is a K-quant weight format (KIND_Q4_K/Q5_K/Q6_K: dotted against Q8_K activations)."""
    return kind == KIND_Q4_K or kind == KIND_Q5_K or kind == KIND_Q6_K


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
    w_block = BLOCK_BYTES_Q4_K if kind == KIND_Q4_K else (BLOCK_BYTES_Q5_K if kind == KIND_Q5_K else BLOCK_BYTES_Q6_K)
    if (
        xq.shape[1] != nb * BLOCK_BYTES_Q8_K
        or w.shape[1] != nb * w_block
        or dst.shape[0] != n_tok
        or dst.shape[1] != n_out
    ):
        raise ValueError("matmul_k: shape mismatch")
    wb = w.shape[1]
    xb = xq.shape[1]
    n_tiles = (n_out + _ROW_TILE - 1) // _ROW_TILE
    n_tok4 = n_tok - n_tok % 4
    xq_pad = _pad_tail_q8_k(xq, n_tok4)  # 2-3 leftover tokens: one padded 4-token pass
    for it in prange(n_tiles):
        for r in range(it * _ROW_TILE, min(n_out, (it + 1) * _ROW_TILE)):
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
            elif n_tok4 < n_tok:
                dst[n_tok4, r] = _vdot1_k(kind, w, r * wb, xq, n_tok4 * xb, xb, nb)


@njit(cache=True, nogil=True, fastmath=FASTMATH, parallel=True)
def matmul_k_tiles(dst, w, xq, kind):
    """dst = xq @ w.T for k-quant weights (kind KIND_Q4_K / KIND_Q5_K / KIND_Q6_K) and Q8_K activations.

    Shapes as matmul_k. Per (row, token) the same bits as the row dot (_make_vdot_rows): each superblock's
    integer sums exact, then acc = fma(d*dx, sum, acc) (Q4_K/Q5_K: and acc = fma(-dmin*dx, min sum, acc)) in f32.
    """
    n_tok = xq.shape[0]
    n_out = w.shape[0]
    nb = xq.shape[1] // BLOCK_BYTES_Q8_K
    w_block = BLOCK_BYTES_Q4_K if kind == KIND_Q4_K else (BLOCK_BYTES_Q5_K if kind == KIND_Q5_K else BLOCK_BYTES_Q6_K)
    if not is_k_quant(kind) or xq.shape[1] != nb * BLOCK_BYTES_Q8_K or w.shape[1] != nb * w_block \
            or dst.shape[0] != n_tok or dst.shape[1] != n_out:
        raise ValueError("matmul_k_tiles: shape mismatch")
    wb = w.shape[1]
    xb = xq.shape[1]
    n_groups = (n_out + TILE_ROWS - 1) // TILE_ROWS
    n_items = (n_groups + 1) // 2  # two 8-row groups a work item: one buffer allocation serves both
    n_tok_t = n_tok - n_tok % TILE_TOKENS
    for it in prange(n_items):
        buf = np.empty(nb * PACK_BYTES, np.uint8)
        out = np.empty(TILE_TOKENS * TILE_ROWS, np.float32)
        for g in range(2 * it, min(n_groups, 2 * it + 2)):
            r0 = g * TILE_ROWS
            nr = min(TILE_ROWS, n_out - r0)
            _pack_k(kind, buf, w, r0 * wb, wb, nr, nb)
            for t0 in range(0, n_tok, TILE_TOKENS):
                m = TILE_TOKENS if t0 < n_tok_t else 1
                for t in range(t0, min(n_tok, t0 + TILE_TOKENS), m):
                    _tile_k(kind, m, buf, xq, t * xb, xb, nb, out)
                    _tile_out(dst, out, t, m, r0, nr)


@njit(cache=True, nogil=True, inline="always")
def _pack_k(kind, buf, w, wo, ws, nr, nb):
    """Rows wo + r*ws (r < nr) of k-quant weights w packed into buf for the prompt tiles."""
    if kind == KIND_Q4_K:
        _pack_q4_k(buf, w, wo, ws, nr, nb)
    elif kind == KIND_Q5_K:
        _pack_q5_k(buf, w, wo, ws, nr, nb)
    else:
        _pack_q6_k(buf, w, wo, ws, nr, nb)


@njit(cache=True, nogil=True, inline="always")
def _tile_k(kind, m, buf, xq, xo, xs, nb, out):
    """m tokens (TILE_TOKENS or 1) of the packed rows in buf (kind KIND_Q4_K/Q5_K/Q6_K)."""
    if kind == KIND_Q4_K:
        if m == TILE_TOKENS:
            _tile_q4_k(buf, xq, xo, xs, nb, out)
        else:
            _tile1_q4_k(buf, xq, xo, xs, nb, out)
    elif kind == KIND_Q5_K:
        if m == TILE_TOKENS:
            _tile_q5_k(buf, xq, xo, xs, nb, out)
        else:
            _tile1_q5_k(buf, xq, xo, xs, nb, out)
    elif m == TILE_TOKENS:
        _tile_q6_k(buf, xq, xo, xs, nb, out)
    else:
        _tile1_q6_k(buf, xq, xo, xs, nb, out)


@njit(cache=True, nogil=True, inline="always")
def _tile_out(dst, out, t, m, r0, nr):
    """A tile's m tokens x nr rows (out, token-major, TILE_ROWS a token) to dst[t:t+m, r0:r0+nr]."""
    for i in range(m):
        for r in range(nr):
            dst[t + i, r0 + r] = out[i * TILE_ROWS + r]


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
    _matmul_k_auto(dst, w, xq, KIND_Q4_K)


@njit(cache=True, nogil=True)
def matmul_q5_k(dst, w, xq):
    """Q5_K weights x Q8_K activations (_matmul_k_auto)."""
    _matmul_k_auto(dst, w, xq, KIND_Q5_K)


@njit(cache=True, nogil=True)
def matmul_q6_k(dst, w, xq):
    """Q6_K weights x Q8_K activations (_matmul_k_auto)."""
    _matmul_k_auto(dst, w, xq, KIND_Q6_K)


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


@njit(cache=True, nogil=True, fastmath=FASTMATH)
def _matmul_k_tiles_portable(dst, w, xq, kind):
    """Serial matmul_k_tiles through the portable-IR tiles (n_tok a multiple of TILE_TOKENS); a test aid."""
    nb = xq.shape[1] // BLOCK_BYTES_Q8_K
    wb = w.shape[1]
    xb = xq.shape[1]
    buf = np.empty(nb * PACK_BYTES, np.uint8)
    out = np.empty(TILE_TOKENS * TILE_ROWS, np.float32)
    for r0 in range(0, w.shape[0], TILE_ROWS):
        nr = min(TILE_ROWS, w.shape[0] - r0)
        _pack_k(kind, buf, w, r0 * wb, wb, nr, nb)
        for t in range(0, xq.shape[0], TILE_TOKENS):
            if kind == KIND_Q4_K:
                _tile_q4_k_portable(buf, xq, t * xb, xb, nb, out)
            elif kind == KIND_Q5_K:
                _tile_q5_k_portable(buf, xq, t * xb, xb, nb, out)
            else:
                _tile_q6_k_portable(buf, xq, t * xb, xb, nb, out)
            _tile_out(dst, out, t, TILE_TOKENS, r0, nr)


# ------------------------------------------------------------------------- grouped matmul



@njit(cache=True, nogil=True, fastmath=FASTMATH, parallel=True)
def matmul_id_k(dst, w, xq, w_row0, x_row, kind):
    """dst[g, r] = dot(w[w_row0[g] + r], xq[x_row[g]]) for k-quant weights (kind: KIND_Q4_K/Q5_K/Q6_K).

    dst: [n_group, n_out] f32; w: [n_rows, row_bytes] uint8; xq: [n_x, n_in / 256 * 292] uint8 (Q8_K);
    w_row0, x_row: [n_group] int64, validated by ops.matmul.
    """
    n_group, n_out = dst.shape
    nb = xq.shape[1] // BLOCK_BYTES_Q8_K
    wb = w.shape[1]
    xb = xq.shape[1]
    n_tiles = (n_out + _ROW_TILE - 1) // _ROW_TILE
    for it in prange(n_group * n_tiles):
        g = it // n_tiles
        r0 = (it % n_tiles) * _ROW_TILE
        xo = x_row[g] * xb
        for r in range(r0, min(n_out, r0 + _ROW_TILE)):
            wo = (w_row0[g] + r) * wb
            dst[g, r] = _vdot1_k(kind, w, wo, xq, xo, xb, nb)
