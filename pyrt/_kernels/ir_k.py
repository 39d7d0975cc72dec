"""LLVM IR pieces of the K-quant kernels (quants_k's row dots, tiles_k's prompt tiles, amx's packing): the block
layouts of Q4_K/Q5_K/Q6_K/Q8_K (llama.cpp's ggml-common.h), the pairwise multiply-adds and the unpacking of scales
and quants. Leaf: numba, llvmlite and simd.py's IR toolkit only.
"""

from llvmlite import ir
from numba import njit
from numba.core import cgutils, types

from . import codes
from .simd import HAS_AVX512VNNI, _F32, _I8, _I16, _I32, _I64, _call, _load_ptr, _mask, _shr_bytes, _splat

QK_K = 256
BLOCK_BYTES_Q4_K = 144  # f16 d, f16 dmin, u8 scales[12], u8 qs[128]
BLOCK_BYTES_Q5_K = 176  # f16 d, f16 dmin, u8 scales[12], u8 qh[32], u8 qs[128]
BLOCK_BYTES_Q6_K = 210  # u8 ql[128], u8 qh[64], i8 scales[16], f16 d
BLOCK_BYTES_Q8_K = 292  # f32 d, i8 qs[256], i16 bsums[16]
KIND_Q4_K, KIND_Q5_K, KIND_Q6_K = codes.Q4_K, codes.Q5_K, codes.Q6_K
_BLOCK_BYTES = {"q4_k": BLOCK_BYTES_Q4_K, "q5_k": BLOCK_BYTES_Q5_K, "q6_k": BLOCK_BYTES_Q6_K}


@njit(cache=True, nogil=True, inline="always")
def is_k_quant(kind):
    """Whether kind is a K-quant weight format (KIND_Q4_K/Q5_K/Q6_K: dotted against Q8_K activations)."""
    return kind == KIND_Q4_K or kind == KIND_Q5_K or kind == KIND_Q6_K


@njit(cache=True, nogil=True, inline="always")
def matmul_shapes_ok(dst, w, xq, kind):
    """Whether dst [n_tok, n_out] f32, weights w [n_out, nb * block bytes] of K-quant kind and Q8_K activations
    xq [n_tok, nb * BLOCK_BYTES_Q8_K] fit one matmul (the kernels read no byte outside them)."""
    nb = xq.shape[1] // BLOCK_BYTES_Q8_K
    w_block = BLOCK_BYTES_Q4_K if kind == KIND_Q4_K else (BLOCK_BYTES_Q5_K if kind == KIND_Q5_K else BLOCK_BYTES_Q6_K)
    return (is_k_quant(kind) and xq.shape[1] == nb * BLOCK_BYTES_Q8_K and w.shape[1] == nb * w_block
            and dst.shape[0] == xq.shape[0] and dst.shape[1] == w.shape[0])


# ----------------------------------------------------------------------------------------------------------
# k-quant IR pieces (the shared toolkit and the target's features are simd.py's)
# ----------------------------------------------------------------------------------------------------------

_V32I8 = ir.VectorType(_I8, 32)
_V64I8 = ir.VectorType(_I8, 64)
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
# the same on 512-bit vectors (AVX-512BW): u8 a[64] x i8 b[64] -> i16[32]; i16 a[32] x i16 b[32] -> i32[16]
_maddubs512 = _make_madd("llvm.x86.avx512.pmaddubs.w.512", _V64I8, _V32I16, ir.VectorType(_I16, 64), True)
_maddwd512 = _make_madd("llvm.x86.avx512.pmaddw.d.512", _V32I16, _V16I32, ir.VectorType(_I32, 32), False)


def _pshufb512(builder, v, idx):
    """In-lane byte shuffle of <64 x i8> v (vpshufb, AVX-512BW): idx per byte, 0..15 within its 128-bit lane, -1
    for a zero."""
    ctl = ir.Constant(_V64I8, [ir.Constant(_I8, i & 0xFF) for i in idx])
    return _call(builder, "llvm.x86.avx512.pshuf.b.512", _V64I8, [v, ctl])


def _dpwssd512(builder, acc, a, b):
    """acc + pmaddwd(a, b) on <16 x i32>: one vpdpwssd with AVX512-VNNI (LLVM does not always fuse the two)."""
    if HAS_AVX512VNNI:
        return _call(builder, "llvm.x86.avx512.vpdpwssd.512", _V16I32, [acc, a, b])
    return builder.add(acc, _maddwd512(builder, a, b, True))


# _k4_scale_bytes' byte gathers (per 16 lanes): a, the bytes with each value's low bits (scales 0-3 in bytes 0-3,
# 4-7 in the low nibbles of 8-11; mins 0-3 in 4-7, 4-7 in the high nibbles of 8-11); b, the bytes whose bits 6-7
# are the top bits of scales 4-7 (bytes 0-3) and mins 4-7 (bytes 4-7), in the lanes of those values
_K4_LOW_BYTES = (0, 1, 2, 3, 8, 9, 10, 11, 4, 5, 6, 7, 8, 9, 10, 11)
_K4_TOP_BYTES = (0, 0, 0, 0, 0, 1, 2, 3, 0, 0, 0, 0, 4, 5, 6, 7)


def _k4_scale_bytes(builder, p, n):
    """The 6-bit scales/mins of Q4_K/Q5_K at p (12 bytes; 16 are read) unpacked with byte shuffles -> <n x u8>
    (n a multiple of 16): in each 16 lanes, 0..7 scales, 8..15 mins. Read at a block's byte 4, the 16 bytes end
    inside the block."""
    q = _load_ptr(builder, p, _V16I8)
    q = builder.shuffle_vector(q, q, _mask([i % 16 for i in range(n)]))
    rep = lambda v: ir.Constant(ir.VectorType(_I8, n), [ir.Constant(_I8, x) for x in v * (n // 16)])  # noqa: E731
    gather = lambda idx: builder.shuffle_vector(q, q, _mask([i - i % 16 + idx[i % 16] for i in range(n)]))  # noqa: E731
    a, b = gather(_K4_LOW_BYTES), gather(_K4_TOP_BYTES)
    low = builder.or_(builder.and_(a, rep([0x3F] * 4 + [0x0F] * 4 + [0x3F] * 4 + [0] * 4)),
                      builder.and_(_shr_bytes(builder, a, 4), rep([0] * 12 + [0x0F] * 4)))
    return builder.or_(low, builder.and_(_shr_bytes(builder, b, 2), rep(([0] * 4 + [0x30] * 4) * 2)))


def _k4_scales_mins(builder, p):
    """The 12-byte 6-bit scales/mins of Q4_K/Q5_K at p -> i16[16]: lanes 0..7 scales, 8..15 mins."""
    return builder.zext(_k4_scale_bytes(builder, p, 16), _V16I16)


def _gep(builder, p, off):
    return builder.gep(p, [ir.Constant(_I64, off)])


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


def _is_u8_array(t):
    # C layout only: the intrinsics address rows as base + r * row_bytes
    return isinstance(t, types.Array) and t.dtype == types.uint8 and t.layout == "C"
