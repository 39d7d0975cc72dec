"""Numba intrinsics that emit LLVM vector IR: the target's features, IR helpers, software prefetch, float
row dots, half/bfloat conversions, the f16 row dequantizer and scratch arrays on cache lines. The block dots
and tiles of Q8_0/Q4_0/Q5_0 weights (Q8_0 activations) are in dots_q8_0.py, built on the helpers here.

Leaf module (numpy, numba, llvmlite only); pointers are integer addresses the calling kernels keep in range.
"""

import llvmlite.binding as llvm
import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils, config
from numba.extending import intrinsic

from .config import NO_SIMD

_I1 = ir.IntType(1)
_I8 = ir.IntType(8)
_I16 = ir.IntType(16)
_I32 = ir.IntType(32)
_I64 = ir.IntType(64)
_F16 = ir.HalfType()
_F32 = ir.FloatType()


def _int_typer(n, codegen):
    """An @intrinsic typer of n int64 operands (addresses, strides, counts) emitted by codegen. Numba reads the
    operands from the typer's own signature, so each arity gets a function of its own."""
    def check(args):
        if not all(isinstance(a, types.Integer) for a in args):
            return None
        return types.none(*([types.int64] * n)), codegen

    names = ", ".join(f"a{i}" for i in range(n))
    scope = {"check": check}
    exec(f"def typer(typingctx{', ' if n else ''}{names}):\n    return check(({names}{',' if n else ''}))", scope)
    return scope["typer"]


def _vec(t, n):
    return ir.VectorType(t, n)


def _target_features() -> set:
    """Features of the target Numba compiles for (honours NUMBA_CPU_NAME/NUMBA_CPU_FEATURES); empty under
    PYRT_NO_SIMD=1, which selects the portable IR (its own cache directory: see config.CACHE_VARIANT)."""
    if NO_SIMD:
        return set()
    if config.CPU_NAME and config.CPU_NAME != "host":
        feats = config.CPU_FEATURES or ""
        return {f[1:] for f in feats.split(",") if f.startswith("+")}
    if not llvm.get_process_triple().startswith(("x86_64", "i686", "i386")):
        return set()
    return {k for k, v in llvm.get_host_cpu_features().items() if v}


_FEATS = _target_features()
HAS_AVX2 = "avx2" in _FEATS
HAS_F16C = "f16c" in _FEATS
HAS_FMA = "fma" in _FEATS
HAS_AVX512BW = "avx512bw" in _FEATS
HAS_AVX512VNNI = HAS_AVX512BW and "avx512vnni" in _FEATS  # vpdpwssd / vpdpbusd on zmm
# vpdpbusd on ymm: AVX-VNNI (VEX) or AVX512-VNNI with AVX512VL (EVEX); same LLVM intrinsic
HAS_VNNI = HAS_AVX2 and ("avxvnni" in _FEATS or ("avx512vnni" in _FEATS and "avx512vl" in _FEATS))

# ---------------------------------------------------------------------------- scratch on cache lines

LINE = 64  # bytes: a 64-byte vector or tile row that starts on a line reads and writes one line, else two


@njit(cache=True, nogil=True, inline="always")
def empty_lined(n, dtype):
    """np.empty(n, dtype) starting on a LINE-byte boundary (Numba aligns its arrays to 32 bytes)."""
    buf = np.empty(n + LINE, dtype)
    off = (-buf.ctypes.data) % LINE // buf.itemsize
    return buf[off:off + n]


@njit(cache=True, nogil=True, inline="always")
def zeros_lined(n, dtype):
    """np.zeros(n, dtype) starting on a LINE-byte boundary."""
    a = empty_lined(n, dtype)
    a[:] = 0
    return a


# ---------------------------------------------------------------------------- IR helpers


def _load(builder, addr, ty):
    p = builder.inttoptr(addr, ir.PointerType(ty))
    return builder.load(p, typ=ty, align=1)


def _load_ptr(builder, p, ty):
    """Unaligned load of a ty at pointer p."""
    return builder.load(builder.bitcast(p, ty.as_pointer()), align=1)


def _mask(idx):
    """Shuffle mask (an <n x i32> constant) of the lane indices idx."""
    return ir.Constant(_vec(_I32, len(idx)), [ir.Constant(_I32, i) for i in idx])


def _addr(builder, base, off):
    return builder.add(base, ir.Constant(_I64, off) if isinstance(off, int) else off)


def _splat(ty, n, v):
    return ir.Constant(_vec(ty, n), [v] * n)


def _bcast(builder, x, n):
    """<n x T> of the scalar x (type T) in every lane: one broadcast (vpbroadcast/vbroadcastss, or an embedded
    {1toN} operand where x is a load)."""
    undef = ir.Constant(_vec(x.type, n), ir.Undefined)
    return builder.shuffle_vector(builder.insert_element(undef, x, ir.Constant(_I32, 0)), undef, _mask([0] * n))


def _shr_bytes(builder, v, n):
    """Each byte of <k x i8> v shifted right by n (logical): one 16-bit word shift and a byte mask. LLVM lowers a
    byte-vector lshr to vgf2p8affineqb where the target has GFNI, on the pipes the multiply-adds need."""
    k = v.type.count
    w = builder.lshr(builder.bitcast(v, _vec(_I16, k // 2)), _splat(_I16, k // 2, n))
    return builder.and_(builder.bitcast(w, v.type), _splat(_I8, k, 0xFF >> n))


def _call(builder, name, ret, args):
    fnty = ir.FunctionType(ret, [a.type for a in args])
    fn = cgutils.get_or_insert_function(builder.module, fnty, name)
    return builder.call(fn, args)


def _c(builder, v, ty, n):
    """Constant v of int type ty, splatted when n (vector width) is not None."""
    return ir.Constant(ty, v) if n is None else _splat(ty, n, v)


def _h2f_int(builder, h, n):
    """IEEE half bits (i16 or <n x i16>) -> f32 with integer ops only (no F16C / libcalls); exact.

    Normals and subnormals: (bits & 0x7fff) << 13 read as f32, times 2^112; inf/nan keep the payload.
    """
    i32 = _I32 if n is None else _vec(_I32, n)
    f32 = _F32 if n is None else _vec(_F32, n)
    hi = builder.zext(h, i32)
    em = builder.and_(hi, _c(builder, 0x7FFF, _I32, n))
    sign = builder.shl(builder.and_(hi, _c(builder, 0x8000, _I32, n)), _c(builder, 16, _I32, n))
    sh = builder.shl(em, _c(builder, 13, _I32, n))
    fin = builder.bitcast(builder.fmul(builder.bitcast(sh, f32), ir.Constant(_F32, 2.0 ** 112) if n is None
                                       else _splat(_F32, n, 2.0 ** 112)), i32)
    naninf = builder.or_(sh, _c(builder, 0x7F800000, _I32, n))
    big = builder.icmp_unsigned(">=", em, _c(builder, 0x7C00, _I32, n))
    return builder.bitcast(builder.or_(builder.select(big, naninf, fin), sign), f32)


def _h2f(builder, h, n=None):
    """IEEE half bits -> f32, exact: fpext with F16C, integer ops elsewhere (LLVM would emit a
    __extendhfsf2 libcall that Numba's JIT does not link)."""
    if HAS_F16C:
        if n is None:
            return builder.fpext(builder.bitcast(h, _F16), _F32)
        return builder.fpext(builder.bitcast(h, _vec(_F16, n)), _vec(_F32, n))
    return _h2f_int(builder, h, n)


def _f2h_int(builder, x):
    """f32 -> IEEE half bits (i16), round to nearest even, NaN payload kept as vcvtps2ph does."""
    u = builder.bitcast(x, _I32)
    sign = builder.and_(u, ir.Constant(_I32, 0x80000000))
    a = builder.xor(u, sign)
    # overflow / inf / nan
    nan = builder.or_(ir.Constant(_I32, 0x7E00), builder.and_(builder.lshr(a, ir.Constant(_I32, 13)),
                                                              ir.Constant(_I32, 0x3FF)))
    o_big = builder.select(builder.icmp_unsigned(">", a, ir.Constant(_I32, 0x7F800000)), nan, ir.Constant(_I32, 0x7C00))
    # subnormal results: add a magic float so the hardware rounds at the right bit
    magic = ((127 - 15) + (23 - 10) + 1) << 23
    sub = builder.fadd(builder.bitcast(a, _F32), builder.bitcast(ir.Constant(_I32, magic), _F32))
    o_sub = builder.sub(builder.bitcast(sub, _I32), ir.Constant(_I32, magic))
    # normal results: rebias the exponent, round to nearest even on bit 13
    odd = builder.and_(builder.lshr(a, ir.Constant(_I32, 13)), ir.Constant(_I32, 1))
    r = builder.add(builder.add(a, ir.Constant(_I32, ((15 - 127) << 23) + 0xFFF)), odd)
    o_norm = builder.lshr(r, ir.Constant(_I32, 13))
    o = builder.select(builder.icmp_unsigned(">=", a, ir.Constant(_I32, (127 + 16) << 23)), o_big,
                       builder.select(builder.icmp_unsigned("<", a, ir.Constant(_I32, 113 << 23)), o_sub, o_norm))
    return builder.trunc(builder.or_(o, builder.lshr(sign, ir.Constant(_I32, 16))), _I16)


def _f16_scale(builder, addr):
    """fp16 at addr -> f32 (exact)."""
    return _h2f(builder, _load(builder, addr, _I16))


def _hsum8(builder, v):
    """Fixed-order horizontal sum of an <8 x float>."""
    e = [builder.extract_element(v, ir.Constant(_I32, i)) for i in range(8)]
    a = [builder.fadd(e[i], e[i + 4]) for i in range(4)]
    b = [builder.fadd(a[0], a[2]), builder.fadd(a[1], a[3])]
    return builder.fadd(b[0], b[1])


def _hsum8_shuffled(builder, v):
    """_hsum8's sum, built from half-vector shuffles. Inside a fast-math caller LLVM may regroup a chain of
    scalar adds differently per call site; the shuffled form keeps one order everywhere (the k-quant dots
    of 1 and of 4 activation rows must give the same bits)."""
    for width in (4, 2, 1):
        lo = builder.shuffle_vector(v, v, _mask(range(width)))
        hi = builder.shuffle_vector(v, v, _mask(range(width, 2 * width)))
        v = builder.fadd(lo, hi)
    return builder.extract_element(v, ir.Constant(_I32, 0))


def _fold(builder, v, n):
    """<n x float> -> <8 x float> by adding halves (fixed order)."""
    while n > 8:
        h = n // 2
        lo = builder.shuffle_vector(v, v, ir.Constant(_vec(_I32, h), list(range(h))))
        hi = builder.shuffle_vector(v, v, ir.Constant(_vec(_I32, h), list(range(h, n))))
        v = builder.fadd(lo, hi)
        n = h
    return v


def vector_loop(builder, n, width, step):
    """step(offset, width) at every full vector of n (i64) elements, then step(offset, 1) at each one left."""
    nv = builder.udiv(n, ir.Constant(_I64, width))
    with cgutils.for_range(builder, nv) as loop:
        step(builder.mul(loop.index, ir.Constant(_I64, width)), width)
    e0 = builder.mul(nv, ir.Constant(_I64, width))
    with cgutils.for_range(builder, builder.sub(n, e0)) as loop:
        step(builder.add(e0, loop.index), 1)


# ------------------------------------------------------------------ software prefetch

# Software prefetch of the weight stream, PREFETCH_BYTES ahead (`pf`, a runtime argument of the
# dots), with prefetcht1: into L2, whose miss queue is deeper than L1's fill buffers. The hardware
# prefetchers alone leave most DRAM bandwidth unused, and prefetcht0 caps a core at L1's fill buffers'
# worth of lines in flight. Measured on a 2-core AMD EPYC (Zen 4) VM, Q4_0 matvec over 1.2 GB with
# 2 threads (membw 34 GB/s): no prefetch 10.6 GB/s, t0 at 2-32 KiB 20-21 GB/s, t1 at 16 KiB 30 GB/s
# (one thread 11 -> 19 GB/s); DeepSeek-V2-Lite-shaped Q4_0 decode 11.5 -> 15.7-17.9 t/s. Q4_K 1.2 GB: 27.8
# -> 34 GB/s. Shorter distances with t1 lose (4 KiB: 26 GB/s, 2 KiB: 18).
PREFETCH_LOCALITY = 2  # llvm.prefetch locality: 3 = prefetcht0, 2 = prefetcht1, 1 = prefetcht2, 0 = prefetchnta
PREFETCH_BYTES = 16384


def prefetch_ptr(builder, ptr):
    """llvm.prefetch(read, PREFETCH_LOCALITY, data) of the byte at pointer `ptr`."""
    fn = cgutils.get_or_insert_function(
        builder.module, ir.FunctionType(ir.VoidType(), [_I8.as_pointer(), _I32, _I32, _I32]), "llvm.prefetch.p0")
    if ptr.type != _I8.as_pointer():
        ptr = builder.bitcast(ptr, _I8.as_pointer())
    builder.call(fn, [ptr, ir.Constant(_I32, 0), ir.Constant(_I32, PREFETCH_LOCALITY), ir.Constant(_I32, 1)])


@intrinsic
def prefetch(typingctx, addr):
    """Software prefetch (PREFETCH_LOCALITY) of the cache line holding the byte at integer address addr."""
    if not isinstance(addr, types.Integer):
        return None

    def codegen(context, builder, signature, args):
        prefetch_ptr(builder, builder.inttoptr(args[0], _I8.as_pointer()))
        return context.get_dummy_value()

    return types.none(types.int64), codegen


def _prefetch(builder, addr, pf):
    """Prefetch of the byte at integer address `addr` + pf."""
    prefetch_ptr(builder, builder.inttoptr(builder.add(addr, pf), _I8.as_pointer()))


# ------------------------------------------------------------------ float row dots


def _to_f32_f16(builder, v, n):
    return _h2f(builder, v, n)


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
def bits_to_f32(typingctx, u):
    """The float32 whose bits are the low 32 bits of the integer u (a narrower u is sign- or zero-extended by
    its signedness); a bitcast, so loops that use it vectorize."""
    if not isinstance(u, types.Integer):
        return None

    def codegen(context, builder, signature, args):
        v = args[0]
        if v.type.width > 32:
            v = builder.trunc(v, _I32)
        elif v.type.width < 32:
            v = builder.sext(v, _I32) if signature.args[0].signed else builder.zext(v, _I32)
        return builder.bitcast(v, _F32)

    return types.float32(u), codegen


def _make_f16_to_f32(portable):
    def typer(typingctx, h):
        if not isinstance(h, types.Integer):
            return None

        def codegen(context, builder, signature, args):
            v = builder.trunc(args[0], _I16) if args[0].type.width > 16 else args[0]
            return _h2f_int(builder, v, None) if portable else _h2f(builder, v)

        return types.float32(types.uint16), codegen

    return typer


def _make_f32_to_f16(portable):
    def typer(typingctx, x):
        if not isinstance(x, types.Float):
            return None

        def codegen(context, builder, signature, args):
            if HAS_F16C and not portable:
                return builder.bitcast(builder.fptrunc(args[0], _F16), _I16)
            return _f2h_int(builder, args[0])

        return types.uint16(types.float32), codegen

    return typer


# uint16 bits of an IEEE half <-> float32: exact, subnormals, inf and nan included; f32 -> f16 rounds to
# nearest even like F16C. The _portable variants use integer ops only (what targets without F16C run).
f16_to_f32 = intrinsic(_make_f16_to_f32(False))
f32_to_f16 = intrinsic(_make_f32_to_f16(False))
f16_to_f32_portable = intrinsic(_make_f16_to_f32(True))
f32_to_f16_portable = intrinsic(_make_f32_to_f16(True))

# ------------------------------------------------------------------ row dequantizers

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

    vector_loop(builder, n, 32, step)
    return context.get_dummy_value()


@intrinsic
def dequant_row_f16(typingctx, dp, sp, n):
    """n IEEE halves at address sp -> n f32 at address dp (exact, NaN payloads kept)."""
    if not all(isinstance(a, types.Integer) for a in (dp, sp, n)):
        return None
    return types.none(types.int64, types.int64, types.int64), _f16_row_codegen
