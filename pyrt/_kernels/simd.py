"""Numba intrinsics that emit LLVM vector IR for the per-row dot products of the matmul kernels.

Leaf module (numpy, numba, llvmlite only). Pointers are passed as integer addresses; callers
(the kernels in quants_legacy.py) guarantee they are in range. With AVX2 the block dots use
pmaddubsw/pmaddwd like llama.cpp; elsewhere the same IR is written with portable vector ops.
The Numba disk cache does not notice edits here: clear NUMBA_CACHE_DIR after changing this file.
"""

import llvmlite.binding as llvm
from llvmlite import ir
from numba import types
from numba.core import cgutils, config
from numba.extending import intrinsic

_I1 = ir.IntType(1)
_I8 = ir.IntType(8)
_I16 = ir.IntType(16)
_I32 = ir.IntType(32)
_I64 = ir.IntType(64)
_F16 = ir.HalfType()
_F32 = ir.FloatType()


def _vec(t, n):
    return ir.VectorType(t, n)


def _target_features() -> set:
    """Features of the target Numba compiles for (honours NUMBA_CPU_NAME/NUMBA_CPU_FEATURES)."""
    if config.CPU_NAME and config.CPU_NAME != "host":
        feats = config.CPU_FEATURES or ""
        return {f[1:] for f in feats.split(",") if f.startswith("+")}
    return {k for k, v in llvm.get_host_cpu_features().items() if v}


_FEATS = _target_features()
HAS_AVX2 = "avx2" in _FEATS
HAS_F16C = "f16c" in _FEATS

# ---------------------------------------------------------------------------- IR helpers


def _load(builder, addr, ty):
    p = builder.inttoptr(addr, ir.PointerType(ty))
    return builder.load(p, typ=ty, align=1)


def _addr(builder, base, off):
    return builder.add(base, ir.Constant(_I64, off) if isinstance(off, int) else off)


def _splat(ty, n, v):
    return ir.Constant(_vec(ty, n), [v] * n)


def _call(builder, name, ret, args):
    fnty = ir.FunctionType(ret, [a.type for a in args])
    fn = cgutils.get_or_insert_function(builder.module, fnty, name)
    return builder.call(fn, args)


def _f16_scale(builder, addr):
    """fp16 at addr -> f32 (exact)."""
    return builder.fpext(builder.bitcast(_load(builder, addr, _I16), _F16), _F32)


def _hsum8(builder, v):
    """Fixed-order horizontal sum of an <8 x float>."""
    e = [builder.extract_element(v, ir.Constant(_I32, i)) for i in range(8)]
    a = [builder.fadd(e[i], e[i + 4]) for i in range(4)]
    b = [builder.fadd(a[0], a[2]), builder.fadd(a[1], a[3])]
    return builder.fadd(b[0], b[1])


def _fold(builder, v, n):
    """<n x float> -> <8 x float> by adding halves (fixed order)."""
    while n > 8:
        h = n // 2
        lo = builder.shuffle_vector(v, v, ir.Constant(_vec(_I32, h), list(range(h))))
        hi = builder.shuffle_vector(v, v, ir.Constant(_vec(_I32, h), list(range(h, n))))
        v = builder.fadd(lo, hi)
        n = h
    return v


# ------------------------------------------------------------------ weight block unpackers
# Each returns (d_w f32, <32 x i8> quants, bias): value = d_w * (quant - bias); bias 0 means the
# quants are signed int8, otherwise they are unsigned.


def _unpack_q8_0(builder, wb):
    # block_q8_0: f16 d, int8 qs[32]  (34 bytes)
    return _f16_scale(builder, wb), _load(builder, _addr(builder, wb, 2), _vec(_I8, 32)), 0


def _nibbles(builder, qs):
    lo = builder.and_(qs, _splat(_I8, 16, 0x0F))
    hi = builder.lshr(qs, _splat(_I8, 16, 4))
    return builder.shuffle_vector(lo, hi, ir.Constant(_vec(_I32, 32), list(range(32))))


def _unpack_q4_0(builder, wb):
    # block_q4_0: f16 d, u8 qs[16]; element j = low nibble of qs[j], j+16 = high nibble; bias 8
    qs = _load(builder, _addr(builder, wb, 2), _vec(_I8, 16))
    return _f16_scale(builder, wb), _nibbles(builder, qs), 8


def _unpack_q5_0(builder, wb):
    # block_q5_0: f16 d, u32 qh, u8 qs[16]; bit j of qh is bit 4 of element j; bias 16
    qh = _load(builder, _addr(builder, wb, 2), _I32)
    qs = _load(builder, _addr(builder, wb, 6), _vec(_I8, 16))
    bits = builder.zext(builder.bitcast(qh, _vec(_I1, 32)), _vec(_I8, 32))
    hb = builder.shl(bits, _splat(_I8, 32, 4))
    return _f16_scale(builder, wb), builder.or_(_nibbles(builder, qs), hb), 16


# ------------------------------------------------------------------ block integer dots


def _idot_avx2(builder, w, x, bias):
    """<32 x i8> w (signed, or unsigned with bias), <32 x i8> x signed -> <8 x i32> partial sums."""
    v16 = _vec(_I16, 16)
    maddubs = "llvm.x86.avx2.pmadd.ub.sw"
    if bias:
        # w*x - bias*x, both terms fit int16 without saturation (|.| <= 31*127*2)
        p = _call(builder, maddubs, v16, [w, x])
        q = _call(builder, maddubs, v16, [_splat(_I8, 32, bias), x])
        s16 = builder.sub(p, q)
    else:
        # |w| * (x*sign(w)); x is in [-127, 127] so negation cannot overflow
        aw = _call(builder, "llvm.abs.v32i8", _vec(_I8, 32), [w, ir.Constant(_I1, 0)])
        neg = builder.icmp_signed("<", w, _splat(_I8, 32, 0))
        sx = builder.select(neg, builder.sub(_splat(_I8, 32, 0), x), x)
        s16 = _call(builder, maddubs, v16, [aw, sx])
    return _call(builder, "llvm.x86.avx2.pmadd.wd", _vec(_I32, 8), [s16, _splat(_I16, 16, 1)])


def _idot_generic(builder, w, x, bias):
    v32 = _vec(_I32, 32)
    if bias:
        wi = builder.sub(builder.zext(w, v32), _splat(_I32, 32, bias))
    else:
        wi = builder.sext(w, v32)
    prod = builder.mul(wi, builder.sext(x, v32))
    # pairwise fold to <8 x i32> (integer: order does not matter)
    lo = builder.shuffle_vector(prod, prod, ir.Constant(_vec(_I32, 16), list(range(16))))
    hi = builder.shuffle_vector(prod, prod, ir.Constant(_vec(_I32, 16), list(range(16, 32))))
    s = builder.add(lo, hi)
    lo = builder.shuffle_vector(s, s, ir.Constant(_vec(_I32, 8), list(range(8))))
    hi = builder.shuffle_vector(s, s, ir.Constant(_vec(_I32, 8), list(range(8, 16))))
    return builder.add(lo, hi)


def _block_step(builder, dw, wq, bias, xb, acc, use_avx2):
    """acc += (dw*dx) * isum(w*x) for one Q8_0 activation block at address xb (lane-wise)."""
    v8f = _vec(_F32, 8)
    dx = _f16_scale(builder, xb)
    xq = _load(builder, _addr(builder, xb, 2), _vec(_I8, 32))
    s32 = (_idot_avx2 if use_avx2 else _idot_generic)(builder, wq, xq, bias)
    d = builder.fmul(dw, dx)
    dv = builder.insert_element(ir.Constant(v8f, ir.Undefined), d, ir.Constant(_I32, 0))
    dv = builder.shuffle_vector(dv, dv, ir.Constant(_vec(_I32, 8), [0] * 8))
    prod = builder.fmul(dv, builder.sitofp(s32, v8f), flags=("contract",))
    builder.store(builder.fadd(builder.load(acc), prod, flags=("contract",)), acc)


PREFETCH_BYTES = 2048  # software prefetch distance on the weight stream (as in quants_k)


def _prefetch(builder, addr):
    """llvm.prefetch(read, high locality, data) of the byte at integer address `addr`."""
    fn = cgutils.get_or_insert_function(
        builder.module, ir.FunctionType(ir.VoidType(), [_I8.as_pointer(), _I32, _I32, _I32]), "llvm.prefetch.p0")
    ptr = builder.inttoptr(builder.add(addr, ir.Constant(_I64, PREFETCH_BYTES)), _I8.as_pointer())
    builder.call(fn, [ptr, ir.Constant(_I32, 0), ir.Constant(_I32, 3), ir.Constant(_I32, 1)])


def _row_dot_codegen(unpack, w_bytes, use_avx2):
    """codegen for f32 dot(weight row of nb blocks, Q8_0 activation row of nb blocks)."""

    def codegen(context, builder, signature, args):
        wp, xp, nb = args
        v8f = _vec(_F32, 8)
        acc = cgutils.alloca_once_value(builder, ir.Constant(v8f, [0.0] * 8))
        with cgutils.for_range(builder, nb) as loop:
            b = loop.index
            wb = builder.add(wp, builder.mul(b, ir.Constant(_I64, w_bytes)))
            _prefetch(builder, wb)  # the hardware prefetchers alone leave DRAM bandwidth unused
            dw, wq, bias = unpack(builder, wb)
            _block_step(builder, dw, wq, bias, builder.add(xp, builder.mul(b, ir.Constant(_I64, 34))), acc, use_avx2)
        return _hsum8(builder, builder.load(acc))

    return codegen


def _make_row_dot(unpack, w_bytes, use_avx2):
    cg = _row_dot_codegen(unpack, w_bytes, use_avx2)

    def typer(typingctx, wp, xp, nb):
        if not all(isinstance(a, types.Integer) for a in (wp, xp, nb)):
            return None
        return types.float32(types.int64, types.int64, types.int64), cg

    return typer


NT = 4  # tokens per call of the dot4_* intrinsics


def _row_dot4_codegen(unpack, w_bytes, use_avx2):
    """codegen: one weight row against NT activation rows (xp + t*xs), results stored as f32 at dp + t*ds.

    The weight block is unpacked once per NT tokens; each token's arithmetic is exactly that of
    the one-token dot, so results do not depend on how tokens are grouped.
    """

    def codegen(context, builder, signature, args):
        wp, xp, xs, nb, dp, ds = args
        v8f = _vec(_F32, 8)
        accs = [cgutils.alloca_once_value(builder, ir.Constant(v8f, [0.0] * 8)) for _ in range(NT)]
        with cgutils.for_range(builder, nb) as loop:
            b = loop.index
            wb = builder.add(wp, builder.mul(b, ir.Constant(_I64, w_bytes)))
            _prefetch(builder, wb)
            dw, wq, bias = unpack(builder, wb)
            xb = builder.add(xp, builder.mul(b, ir.Constant(_I64, 34)))
            for t in range(NT):
                xbt = builder.add(xb, builder.mul(xs, ir.Constant(_I64, t)))
                _block_step(builder, dw, wq, bias, xbt, accs[t], use_avx2)
        for t in range(NT):
            p = builder.inttoptr(builder.add(dp, builder.mul(ds, ir.Constant(_I64, 4 * t))), ir.PointerType(_F32))
            builder.store(_hsum8(builder, builder.load(accs[t])), p, align=4)
        return context.get_dummy_value()

    return codegen


def _make_row_dot4(unpack, w_bytes, use_avx2):
    cg = _row_dot4_codegen(unpack, w_bytes, use_avx2)

    def typer(typingctx, wp, xp, xs, nb, dp, ds):
        if not all(isinstance(a, types.Integer) for a in (wp, xp, xs, nb, dp, ds)):
            return None
        return types.none(*([types.int64] * 6)), cg

    return typer


# Host-selected variants (AVX2 when the compile target has it) and portable ones (for tests).
dot_q8_0_q8_0 = intrinsic(_make_row_dot(_unpack_q8_0, 34, HAS_AVX2))
dot_q4_0_q8_0 = intrinsic(_make_row_dot(_unpack_q4_0, 18, HAS_AVX2))
dot_q5_0_q8_0 = intrinsic(_make_row_dot(_unpack_q5_0, 22, HAS_AVX2))
dot4_q8_0_q8_0 = intrinsic(_make_row_dot4(_unpack_q8_0, 34, HAS_AVX2))
dot4_q4_0_q8_0 = intrinsic(_make_row_dot4(_unpack_q4_0, 18, HAS_AVX2))
dot4_q5_0_q8_0 = intrinsic(_make_row_dot4(_unpack_q5_0, 22, HAS_AVX2))
dot_q8_0_q8_0_generic = intrinsic(_make_row_dot(_unpack_q8_0, 34, False))
dot_q4_0_q8_0_generic = intrinsic(_make_row_dot(_unpack_q4_0, 18, False))
dot_q5_0_q8_0_generic = intrinsic(_make_row_dot(_unpack_q5_0, 22, False))

# ------------------------------------------------------------------ float row dots


def _to_f32_f16(builder, v, n):
    return builder.fpext(builder.bitcast(v, _vec(_F16, n)), _vec(_F32, n))


def _to_f32_bf16(builder, v, n):
    w = builder.shl(builder.zext(v, _vec(_I32, n)), _splat(_I32, n, 16))
    return builder.bitcast(w, _vec(_F32, n))


def _float_dot_codegen(elem, to_f32):
    """codegen for f32 dot of two rows of n elements (elem: storage int type or f32).

    32 lanes per step (four 8-wide accumulators after legalization), products accumulated in f32,
    then a scalar tail; the reduction order is fixed.
    """
    L = 32

    def conv(builder, v, n):
        return v if to_f32 is None else to_f32(builder, v, n)

    def codegen(context, builder, signature, args):
        wp, xp, n = args
        esz = 4 if elem is _F32 else 2
        vty = _vec(_F32, L)
        acc = cgutils.alloca_once_value(builder, ir.Constant(vty, [0.0] * L))
        nvec = builder.udiv(n, ir.Constant(_I64, L))
        step = ir.Constant(_I64, L * esz)
        with cgutils.for_range(builder, nvec) as loop:
            off = builder.mul(loop.index, step)
            w = conv(builder, _load(builder, builder.add(wp, off), _vec(elem, L)), L)
            x = conv(builder, _load(builder, builder.add(xp, off), _vec(elem, L)), L)
            prod = builder.fmul(w, x, flags=("contract",))
            builder.store(builder.fadd(builder.load(acc), prod, flags=("contract",)), acc)
        tacc = cgutils.alloca_once_value(builder, ir.Constant(_F32, 0.0))
        start = builder.mul(nvec, ir.Constant(_I64, L))
        with cgutils.for_range(builder, builder.sub(n, start)) as loop:
            off = builder.mul(builder.add(start, loop.index), ir.Constant(_I64, esz))
            w = conv(builder, _load(builder, builder.add(wp, off), _vec(elem, 1)), 1)
            x = conv(builder, _load(builder, builder.add(xp, off), _vec(elem, 1)), 1)
            p = builder.extract_element(builder.fmul(w, x), ir.Constant(_I32, 0))
            builder.store(builder.fadd(builder.load(tacc), p), tacc)
        s = _hsum8(builder, _fold(builder, builder.load(acc), L))
        return builder.fadd(s, builder.load(tacc))

    return codegen


def _make_float_dot(elem, to_f32):
    cg = _float_dot_codegen(elem, to_f32)

    def typer(typingctx, wp, xp, n):
        if not all(isinstance(a, types.Integer) for a in (wp, xp, n)):
            return None
        return types.float32(types.int64, types.int64, types.int64), cg

    return typer


dot_f16_f16 = intrinsic(_make_float_dot(_I16, _to_f32_f16))
dot_bf16_bf16 = intrinsic(_make_float_dot(_I16, _to_f32_bf16))
dot_f32_f32 = intrinsic(_make_float_dot(_F32, None))

# ------------------------------------------------------------------ scalar conversions


@intrinsic
def f16_to_f32(typingctx, h):
    """uint16 bit pattern of an IEEE half -> float32 (exact, incl. subnormals/inf/nan)."""
    if not isinstance(h, types.Integer):
        return None

    def codegen(context, builder, signature, args):
        v = builder.trunc(args[0], _I16) if args[0].type.width > 16 else args[0]
        return builder.fpext(builder.bitcast(v, _F16), _F32)

    return types.float32(types.uint16), codegen


@intrinsic
def f32_to_f16(typingctx, x):
    """float32 -> uint16 bit pattern of the nearest half (round to nearest even, like F16C)."""
    if not isinstance(x, types.Float):
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(builder.fptrunc(args[0], _F16), _I16)

    return types.uint16(types.float32), codegen

# ------------------------------------------------------------------ row dequantizers
# Exact: d * (q - bias) is exact in f32 (11 + 6 significant bits), like gguf's numpy code.


def _dequant_row_codegen(unpack, w_bytes):
    def codegen(context, builder, signature, args):
        dp, sp, nb = args
        v32f = _vec(_F32, 32)
        with cgutils.for_range(builder, nb) as loop:
            b = loop.index
            d, q, bias = unpack(builder, builder.add(sp, builder.mul(b, ir.Constant(_I64, w_bytes))))
            if bias:
                qi = builder.sub(builder.zext(q, _vec(_I32, 32)), _splat(_I32, 32, bias))
            else:
                qi = builder.sext(q, _vec(_I32, 32))
            dv = builder.insert_element(ir.Constant(v32f, ir.Undefined), d, ir.Constant(_I32, 0))
            dv = builder.shuffle_vector(dv, dv, ir.Constant(_vec(_I32, 32), [0] * 32))
            val = builder.fmul(dv, builder.sitofp(qi, v32f))
            p = builder.inttoptr(builder.add(dp, builder.mul(b, ir.Constant(_I64, 128))), ir.PointerType(v32f))
            builder.store(val, p, align=4)
        return context.get_dummy_value()

    return codegen


def _make_dequant_row(unpack, w_bytes):
    cg = _dequant_row_codegen(unpack, w_bytes)

    def typer(typingctx, dp, sp, nb):
        if not all(isinstance(a, types.Integer) for a in (dp, sp, nb)):
            return None
        return types.none(types.int64, types.int64, types.int64), cg

    return typer


dequant_row_q8_0 = intrinsic(_make_dequant_row(_unpack_q8_0, 34))
dequant_row_q4_0 = intrinsic(_make_dequant_row(_unpack_q4_0, 18))
dequant_row_q5_0 = intrinsic(_make_dequant_row(_unpack_q5_0, 22))


def _f16_row_codegen(context, builder, signature, args):
    """n halves at sp -> n f32 at dp, bit-exact with numpy (signalling NaNs stay signalling)."""
    dp, sp, n = args

    def step(off_el, width):
        h = _load(builder, builder.add(sp, builder.mul(off_el, ir.Constant(_I64, 2))), _vec(_I16, width))
        f = builder.bitcast(_to_f32_f16(builder, h, width), _vec(_I32, width))
        hi = builder.zext(h, _vec(_I32, width))
        exp = builder.and_(hi, _splat(_I32, width, 0x7C00))
        man = builder.and_(hi, _splat(_I32, width, 0x3FF))
        is_nan = builder.and_(builder.icmp_unsigned("==", exp, _splat(_I32, width, 0x7C00)),
                              builder.icmp_unsigned("!=", man, _splat(_I32, width, 0)))
        fix = builder.or_(builder.or_(builder.shl(builder.and_(hi, _splat(_I32, width, 0x8000)), _splat(_I32, width, 16)),
                                      _splat(_I32, width, 0x7F800000)),
                          builder.shl(man, _splat(_I32, width, 13)))
        out = builder.select(is_nan, fix, f)
        p = builder.inttoptr(builder.add(dp, builder.mul(off_el, ir.Constant(_I64, 4))), ir.PointerType(_vec(_I32, width)))
        builder.store(out, p, align=4)

    L = 32
    nvec = builder.udiv(n, ir.Constant(_I64, L))
    with cgutils.for_range(builder, nvec) as loop:
        step(builder.mul(loop.index, ir.Constant(_I64, L)), L)
    start = builder.mul(nvec, ir.Constant(_I64, L))
    with cgutils.for_range(builder, builder.sub(n, start)) as loop:
        step(builder.add(start, loop.index), 1)
    return context.get_dummy_value()


@intrinsic
def dequant_row_f16(typingctx, dp, sp, n):
    """n IEEE halves at address sp -> n f32 at address dp (exact, NaN payloads kept)."""
    if not all(isinstance(a, types.Integer) for a in (dp, sp, n)):
        return None
    return types.none(types.int64, types.int64, types.int64), _f16_row_codegen
