"""Numba intrinsics that emit LLVM vector IR for the per-row dot products of the matmul kernels.

Leaf module (numpy, numba, llvmlite only); pointers are integer addresses the kernels in quants_legacy.py
keep in range. Block dots: vpdpbusd (AVX-VNNI/AVX512-VNNI), pmaddubsw (AVX2) or portable IR, same bits.
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
HAS_AVX512BW = "avx512bw" in _FEATS
# vpdpbusd on ymm: AVX-VNNI (VEX) or AVX512-VNNI with AVX512VL (EVEX); same LLVM intrinsic
HAS_VNNI = HAS_AVX2 and ("avxvnni" in _FEATS or ("avx512vnni" in _FEATS and "avx512vl" in _FEATS))

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
    """<16 x i8> -> <32 x i8>: low nibbles, then high nibbles."""
    if HAS_AVX512BW:  # both halves from one 128-bit broadcast, then a per-half word shift: no lane-crossing shuffle
        both = builder.shuffle_vector(qs, qs, ir.Constant(_vec(_I32, 32), list(range(16)) * 2))
        w16 = builder.bitcast(both, _vec(_I16, 16))
        w16 = builder.lshr(w16, ir.Constant(_vec(_I16, 16), [0] * 8 + [4] * 8))
        return builder.and_(builder.bitcast(w16, _vec(_I8, 32)), _splat(_I8, 32, 0x0F))
    lo = builder.and_(qs, _splat(_I8, 16, 0x0F))
    hi = builder.lshr(qs, _splat(_I8, 16, 4))
    return builder.shuffle_vector(lo, hi, ir.Constant(_vec(_I32, 32), list(range(32))))


def _unpack_q4_0(builder, wb):
    # block_q4_0: f16 d, u8 qs[16]; element j = low nibble of qs[j], j+16 = high nibble; bias 8
    qs = _load(builder, _addr(builder, wb, 2), _vec(_I8, 16))
    return _f16_scale(builder, wb), _nibbles(builder, qs), 8


def _q5_high_bits(builder, qh, mask_regs):
    """u32 qh -> <32 x i8> with 0x10 in lane j where bit j of qh is set."""
    if mask_regs:  # AVX-512BW: the i1 vector is a mask register (kmovd + vpmovm2b)
        bits = builder.sext(builder.bitcast(qh, _vec(_I1, 32)), _vec(_I8, 32))
    else:  # byte j//8 of qh to lane j, test bit j%8, compare -> 0xFF/0x00 (broadcast + pshufb + pand + pcmpeqb)
        b4 = builder.bitcast(qh, _vec(_I8, 4))
        spread = builder.shuffle_vector(b4, b4, ir.Constant(_vec(_I32, 32), [j // 8 for j in range(32)]))
        bitmask = ir.Constant(_vec(_I8, 32), [1 << (j % 8) for j in range(32)])
        bits = builder.sext(builder.icmp_unsigned("==", builder.and_(spread, bitmask), bitmask), _vec(_I8, 32))
    return builder.and_(bits, _splat(_I8, 32, 0x10))


def _make_unpack_q5_0(mask_regs):
    def _unpack_q5_0(builder, wb):
        # block_q5_0: f16 d, u32 qh, u8 qs[16]; bit j of qh is bit 4 of element j; bias 16
        qh = _load(builder, _addr(builder, wb, 2), _I32)
        qs = _load(builder, _addr(builder, wb, 6), _vec(_I8, 16))
        return _f16_scale(builder, wb), builder.or_(_nibbles(builder, qs), _q5_high_bits(builder, qh, mask_regs)), 16

    return _unpack_q5_0


_unpack_q5_0 = _make_unpack_q5_0(HAS_AVX512BW)
_unpack_q5_0_generic = _make_unpack_q5_0(False)


# ------------------------------------------------------------------ block integer dots
# Every mode returns the same <8 x i32>: lane j = sum_k<4 (w[4j+k]-bias)*x[4j+k], exact integers,
# so all modes give bit-identical dots. The term -bias*sum(x) does not depend on the weight row:
# the matmul precomputes it once per activation block as 8 lanes (AUX_WORDS i32 per block, see
# quants_legacy.x_aux_q8_0, which also holds dx as 8 f32) and the dot adds it instead of multiplying
# again. With VNNI, signed Q8_0 weights use it too: w + 128 = w ^ 0x80 is unsigned, bias 128.
AUX_WORDS = 16     # per activation block (one cache line): 8 i32 bias lanes, then dx as 8 f32
AUX_BYTES = 4 * AUX_WORDS
Q8_0_VNNI_BIAS = 128


def _idot(builder, w, x, corr, bias, mode):
    """<32 x i8> w (signed if bias == 0, else unsigned), <32 x i8> x signed -> <8 x i32>.

    corr: the block's precomputed <8 x i32> -bias*lanesum(x) (for Q8_0 weights: -128*lanesum(x)),
    loaded lazily (a callable) since only the paths that use it should read it.
    """
    v8i = _vec(_I32, 8)
    if mode == "vnni":  # u8 x s8 4-way sums into i32: no int16 saturation possible
        if not bias:
            w = builder.xor(w, _splat(_I8, 32, 0x80))
        return _call(builder, "llvm.x86.avx512.vpdpbusd.256", v8i, [corr(), w, x])
    if mode == "avx2":
        if not bias:  # |w| * (x*sign(w)); x is in [-127, 127] so negation cannot overflow
            aw = _call(builder, "llvm.abs.v32i8", _vec(_I8, 32), [w, ir.Constant(_I1, 0)])
            neg = builder.icmp_signed("<", w, _splat(_I8, 32, 0))
            x = builder.select(neg, builder.sub(_splat(_I8, 32, 0), x), x)
            w = aw
        # unsigned w <= 31, or |w| <= 128 with |x| <= 127: pair sums fit int16 (no saturation)
        s16 = _call(builder, "llvm.x86.avx2.pmadd.ub.sw", _vec(_I16, 16), [w, x])
        s = _call(builder, "llvm.x86.avx2.pmadd.wd", v8i, [s16, _splat(_I16, 16, 1)])
        return s if not bias else builder.add(s, corr())
    v32 = _vec(_I32, 32)
    wi = builder.sext(w, v32) if not bias else builder.zext(w, v32)
    prod = builder.mul(wi, builder.sext(x, v32))
    parts = [builder.shuffle_vector(prod, prod, ir.Constant(v8i, [4 * j + k for j in range(8)])) for k in range(4)]
    s = builder.add(builder.add(parts[0], parts[1]), builder.add(parts[2], parts[3]))
    return s if not bias else builder.add(s, corr())


def _block_fma(builder, dw, wq, bias, xq, corr, dxv, acc, mode):
    """acc += (dw*dx) * isum(w*x) for one block (lane-wise); xq the activation quants, dxv dx as 8 lanes,
    corr a callable loading the block's bias lanes (see _idot)."""
    v8f = _vec(_F32, 8)
    s32 = _idot(builder, wq, xq, corr, bias, mode)
    dv = builder.fmul(dw, dxv)
    prod = builder.fmul(dv, builder.sitofp(s32, v8f), flags=("contract",))
    builder.store(builder.fadd(builder.load(acc), prod, flags=("contract",)), acc)


def _block_step(builder, dw, wq, bias, xb, cb, acc, mode):
    """_block_fma for the Q8_0 activation block at address xb and its AUX_WORDS aux words at cb."""
    # dx comes pre-broadcast from memory: dw*dx is one vector multiply with a memory operand
    # (a scalar product + broadcast would cost two uops per block and token)
    dxv = _load(builder, _addr(builder, cb, 32), _vec(_F32, 8))
    xq = _load(builder, _addr(builder, xb, 2), _vec(_I8, 32))
    _block_fma(builder, dw, wq, bias, xq, lambda: _load(builder, cb, _vec(_I32, 8)), dxv, acc, mode)


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


def _prefetch(builder, addr, pf):
    """Prefetch of the byte at integer address `addr` + pf."""
    prefetch_ptr(builder, builder.inttoptr(builder.add(addr, pf), _I8.as_pointer()))


NACC = 2  # independent f32 accumulators per token (block b goes to b % NACC), summed in fixed order


def _bcast8(builder, v):
    v8f = _vec(_F32, 8)
    dv = builder.insert_element(ir.Constant(v8f, ir.Undefined), v, ir.Constant(_I32, 0))
    return builder.shuffle_vector(dv, dv, ir.Constant(_vec(_I32, 8), [0] * 8))


def _blocks_loop(builder, unpack, w_bytes, wp, nb, pf, step):
    """Calls step(b, dw as <8 x float>, wq, bias, k) for b in 0..nb-1 with k = b % NACC, unrolled NACC times.

    One software prefetch per NACC blocks (about a cache line of weights per iteration).
    """
    nit = builder.udiv(nb, ir.Constant(_I64, NACC))
    with cgutils.for_range(builder, nit) as loop:
        b0 = builder.mul(loop.index, ir.Constant(_I64, NACC))
        wb0 = builder.add(wp, builder.mul(b0, ir.Constant(_I64, w_bytes)))
        _prefetch(builder, wb0, pf)  # the hardware prefetchers alone leave DRAM bandwidth unused
        for k in range(NACC):
            dw, wq, bias = unpack(builder, _addr(builder, wb0, k * w_bytes))
            step(builder.add(b0, ir.Constant(_I64, k)), _bcast8(builder, dw), wq, bias, k)
    tail0 = builder.mul(nit, ir.Constant(_I64, NACC))
    with cgutils.for_range(builder, builder.sub(nb, tail0)) as loop:
        b = builder.add(tail0, loop.index)
        dw, wq, bias = unpack(builder, builder.add(wp, builder.mul(b, ir.Constant(_I64, w_bytes))))
        step(b, _bcast8(builder, dw), wq, bias, 0)


def _acc_total(builder, accs):
    """Fixed-order f32 total of NACC <8 x float> accumulators."""
    v = builder.load(accs[0])
    for a in accs[1:]:
        v = builder.fadd(v, builder.load(a))
    return _hsum8(builder, v)


def _row_dot_codegen(unpack, w_bytes, mode):
    """codegen for f32 dot(weight row of nb blocks, Q8_0 activation row of nb blocks)."""

    def codegen(context, builder, signature, args):
        wp, xp, cp, nb, pf = args
        v8f = _vec(_F32, 8)
        accs = [cgutils.alloca_once_value(builder, ir.Constant(v8f, [0.0] * 8)) for _ in range(NACC)]

        def step(b, dw, wq, bias, k):
            xb = builder.add(xp, builder.mul(b, ir.Constant(_I64, 34)))
            cb = builder.add(cp, builder.mul(b, ir.Constant(_I64, AUX_BYTES)))
            _block_step(builder, dw, wq, bias, xb, cb, accs[k], mode)

        _blocks_loop(builder, unpack, w_bytes, wp, nb, pf, step)
        return _acc_total(builder, accs)

    return codegen


def _make_row_dot(unpack, w_bytes, mode):
    cg = _row_dot_codegen(unpack, w_bytes, mode)

    def typer(typingctx, wp, xp, cp, nb, pf):
        if not all(isinstance(a, types.Integer) for a in (wp, xp, cp, nb, pf)):
            return None
        return types.float32(*([types.int64] * 5)), cg

    return typer


def _tile_codegen(unpack, w_bytes, mode, R, T):
    """codegen core: R weight rows (wp + i*ws) against T Q8_0 activation rows (xp + t*xs, aux words at
    cp + t*cs); the f32 result of row i and token t is stored at dp + (t*ds + i)*4.

    Each (row, token) pair's arithmetic is exactly that of the one-row, one-token dot, so results do not
    depend on how rows and tokens are grouped. A block's weights are unpacked once for the T tokens and a
    token's activation block and aux words are loaded once for the R rows: the prompt-path matmuls are
    bound by those loads (L1/L2 traffic), not by the integer dots. R*T*NACC accumulators stay in
    registers up to 16 (32 vector registers with AVX-512VL).
    """

    def codegen(builder, wp, ws, xp, xs, cp, cs, nb, dp, ds, pf):
        v8f = _vec(_F32, 8)
        accs = [[[cgutils.alloca_once_value(builder, ir.Constant(v8f, [0.0] * 8)) for _ in range(NACC)]
                 for _ in range(T)] for _ in range(R)]
        wps = [builder.add(wp, builder.mul(ws, ir.Constant(_I64, i))) for i in range(R)]
        xts = [builder.add(xp, builder.mul(xs, ir.Constant(_I64, t))) for t in range(T)]
        cts = [builder.add(cp, builder.mul(cs, ir.Constant(_I64, t))) for t in range(T)]

        def blocks(b0, n):
            wbs = [builder.add(w, builder.mul(b0, ir.Constant(_I64, w_bytes))) for w in wps]
            if n == NACC:
                for wb in wbs:
                    _prefetch(builder, wb, pf)  # the hardware prefetchers alone leave DRAM bandwidth unused
            xo = builder.mul(b0, ir.Constant(_I64, 34))
            co = builder.mul(b0, ir.Constant(_I64, AUX_BYTES))
            for k in range(n):
                ws_ = [unpack(builder, _addr(builder, wb, k * w_bytes)) for wb in wbs]
                ws_ = [(_bcast8(builder, dw), wq, bias) for dw, wq, bias in ws_]
                for t in range(T):
                    cb = _addr(builder, builder.add(cts[t], co), AUX_BYTES * k)
                    dxv = _load(builder, _addr(builder, cb, 32), v8f)
                    xq = _load(builder, _addr(builder, builder.add(xts[t], xo), 34 * k + 2), _vec(_I8, 32))
                    for i, (dw, wq, bias) in enumerate(ws_):
                        _block_fma(builder, dw, wq, bias, xq, lambda cb=cb: _load(builder, cb, _vec(_I32, 8)),
                                   dxv, accs[i][t][k], mode)

        nit = builder.udiv(nb, ir.Constant(_I64, NACC))
        with cgutils.for_range(builder, nit) as loop:
            blocks(builder.mul(loop.index, ir.Constant(_I64, NACC)), NACC)
        tail0 = builder.mul(nit, ir.Constant(_I64, NACC))
        with cgutils.for_range(builder, builder.sub(nb, tail0)) as loop:
            blocks(builder.add(tail0, loop.index), 1)
        for i in range(R):
            for t in range(T):
                off = builder.add(builder.mul(ds, ir.Constant(_I64, 4 * t)), ir.Constant(_I64, 4 * i))
                p = builder.inttoptr(builder.add(dp, off), ir.PointerType(_F32))
                builder.store(_acc_total(builder, accs[i][t]), p, align=4)

    return codegen


def _tile_lowering(unpack, w_bytes, mode, R, T, params):
    """Lowering of a tile intrinsic whose arguments are `params` (names of _tile_codegen's arguments;
    the others are 0: ws for one row, xs/cs for one token, ds for one token)."""
    core = _tile_codegen(unpack, w_bytes, mode, R, T)
    names = ("wp", "ws", "xp", "xs", "cp", "cs", "nb", "dp", "ds", "pf")

    def cg(context, builder, signature, args):
        given = dict(zip(params, args))
        core(builder, *[given.get(n, ir.Constant(_I64, 0)) for n in names])
        return context.get_dummy_value()

    return cg


def _ints(*args):
    return all(isinstance(a, types.Integer) for a in args)


NT = 4  # tokens per call of the dot4_* and gemm_* intrinsics
NR = 2  # weight rows per call of the dot2_* and gemm_* intrinsics
_DOT2_ARGS = ("wp", "ws", "xp", "cp", "nb", "dp", "pf")
_DOT4_ARGS = ("wp", "xp", "xs", "cp", "cs", "nb", "dp", "ds", "pf")
_GEMM_ARGS = ("wp", "ws", "xp", "xs", "cp", "cs", "nb", "dp", "ds", "pf")


def _make_row_dot2(unpack, w_bytes, mode):
    cg = _tile_lowering(unpack, w_bytes, mode, NR, 1, _DOT2_ARGS)

    def typer(typingctx, wp, ws, xp, cp, nb, dp, pf):
        if not _ints(wp, ws, xp, cp, nb, dp, pf):
            return None
        return types.none(*([types.int64] * 7)), cg

    return typer


def _make_row_dot4(unpack, w_bytes, mode):
    cg = _tile_lowering(unpack, w_bytes, mode, 1, NT, _DOT4_ARGS)

    def typer(typingctx, wp, xp, xs, cp, cs, nb, dp, ds, pf):
        if not _ints(wp, xp, xs, cp, cs, nb, dp, ds, pf):
            return None
        return types.none(*([types.int64] * 9)), cg

    return typer


def _make_gemm(unpack, w_bytes, mode):
    cg = _tile_lowering(unpack, w_bytes, mode, NR, NT, _GEMM_ARGS)

    def typer(typingctx, wp, ws, xp, xs, cp, cs, nb, dp, ds, pf):
        if not _ints(wp, ws, xp, xs, cp, cs, nb, dp, ds, pf):
            return None
        return types.none(*([types.int64] * 10)), cg

    return typer


# Block-dot mode of the host-selected intrinsics: VNNI (vpdpbusd) > AVX2 (pmaddubsw) > portable IR.
DOT_MODE = "vnni" if HAS_VNNI else ("avx2" if HAS_AVX2 else "generic")

# dot_*(wp, xp, cp, nb, pf) -> f32, dot2_*(wp, ws, xp, cp, nb, dp, pf) (rows wp, wp+ws -> f32 at dp, dp+4)
# and dot4_*(wp, xp, xs, cp, cs, nb, dp, ds, pf): weight row at wp, Q8_0
# activation rows at xp (+ t*xs), their aux words at cp (+ t*cs), built with the weight format's
# bias (Q4_0 8, Q5_0 16, Q8_0 Q8_0_VNNI_BIAS); pf the prefetch distance in bytes.
dot_q8_0_q8_0 = intrinsic(_make_row_dot(_unpack_q8_0, 34, DOT_MODE))
dot_q4_0_q8_0 = intrinsic(_make_row_dot(_unpack_q4_0, 18, DOT_MODE))
dot_q5_0_q8_0 = intrinsic(_make_row_dot(_unpack_q5_0, 22, DOT_MODE))
dot2_q8_0_q8_0 = intrinsic(_make_row_dot2(_unpack_q8_0, 34, DOT_MODE))
dot2_q4_0_q8_0 = intrinsic(_make_row_dot2(_unpack_q4_0, 18, DOT_MODE))
dot2_q5_0_q8_0 = intrinsic(_make_row_dot2(_unpack_q5_0, 22, DOT_MODE))
dot4_q8_0_q8_0 = intrinsic(_make_row_dot4(_unpack_q8_0, 34, DOT_MODE))
dot4_q4_0_q8_0 = intrinsic(_make_row_dot4(_unpack_q4_0, 18, DOT_MODE))
dot4_q5_0_q8_0 = intrinsic(_make_row_dot4(_unpack_q5_0, 22, DOT_MODE))
gemm_q8_0_q8_0 = intrinsic(_make_gemm(_unpack_q8_0, 34, DOT_MODE))
gemm_q4_0_q8_0 = intrinsic(_make_gemm(_unpack_q4_0, 18, DOT_MODE))
gemm_q5_0_q8_0 = intrinsic(_make_gemm(_unpack_q5_0, 22, DOT_MODE))
# portable variants (tests): the generic IR, and the AVX2 path where the target has AVX2
dot_q8_0_q8_0_generic = intrinsic(_make_row_dot(_unpack_q8_0, 34, "generic"))
dot_q4_0_q8_0_generic = intrinsic(_make_row_dot(_unpack_q4_0, 18, "generic"))
dot_q5_0_q8_0_generic = intrinsic(_make_row_dot(_unpack_q5_0_generic, 22, "generic"))
_AVX2_OR_GENERIC = "avx2" if HAS_AVX2 else "generic"
dot_q8_0_q8_0_avx2 = intrinsic(_make_row_dot(_unpack_q8_0, 34, _AVX2_OR_GENERIC))
dot_q4_0_q8_0_avx2 = intrinsic(_make_row_dot(_unpack_q4_0, 18, _AVX2_OR_GENERIC))
dot_q5_0_q8_0_avx2 = intrinsic(_make_row_dot(_unpack_q5_0_generic, 22, _AVX2_OR_GENERIC))

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
def i32_as_f32(typingctx, i):
    """The float32 whose bits are the int32 i (a bitcast; vectorizes inside loops)."""
    if not isinstance(i, types.Integer):
        return None

    def codegen(context, builder, signature, args):
        v = args[0]
        if v.type.width > 32:
            v = builder.trunc(v, _I32)
        elif v.type.width < 32:
            v = builder.sext(v, _I32)
        return builder.bitcast(v, _F32)

    return types.float32(i), codegen


@intrinsic
def f16_to_f32(typingctx, h):
    """uint16 bit pattern of an IEEE half -> float32 (exact, incl. subnormals/inf/nan)."""
    if not isinstance(h, types.Integer):
        return None

    def codegen(context, builder, signature, args):
        v = builder.trunc(args[0], _I16) if args[0].type.width > 16 else args[0]
        return _h2f(builder, v)

    return types.float32(types.uint16), codegen


@intrinsic
def f32_to_f16(typingctx, x):
    """float32 -> uint16 bit pattern of the nearest half (round to nearest even, like F16C)."""
    if not isinstance(x, types.Float):
        return None

    def codegen(context, builder, signature, args):
        if HAS_F16C:
            return builder.bitcast(builder.fptrunc(args[0], _F16), _I16)
        return _f2h_int(builder, args[0])

    return types.uint16(types.float32), codegen

@intrinsic
def f16_to_f32_portable(typingctx, h):
    """f16_to_f32 with integer ops only (what targets without F16C run; for tests)."""
    if not isinstance(h, types.Integer):
        return None

    def codegen(context, builder, signature, args):
        v = builder.trunc(args[0], _I16) if args[0].type.width > 16 else args[0]
        return _h2f_int(builder, v, None)

    return types.float32(types.uint16), codegen


@intrinsic
def f32_to_f16_portable(typingctx, x):
    """f32_to_f16 with integer ops only (what targets without F16C run; for tests)."""
    if not isinstance(x, types.Float):
        return None

    def codegen(context, builder, signature, args):
        return _f2h_int(builder, args[0])

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
