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
HAS_FMA = "fma" in _FEATS
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
# A legacy weight block times a Q8_0 activation block is an exact integer S = sum_j (w_j - bias) * x_j,
# then acc = fma(dw*dx, S, acc) in f32, block after block. Every kernel does exactly this per (row,
# token): the 8-row tiles of one or NT tokens and the one-row dot for leftover rows, in every SIMD
# mode (the integer sums are exact whatever the instructions), so a result does not depend on how rows
# and tokens are grouped, on the thread count or on the host CPU.
# The 8-row tile keeps lane j of every vector for weight row j: the 8 rows' unpacked blocks are
# transposed in registers (vector k holds dword k, i.e. quants 4k..4k+3, of each row), each is
# multiplied with dword k of the activation block broadcast to all lanes, and one convert, one
# multiply and one fma per token and block then serve 8 rows (the row-per-vector layout needs those
# three per row and block, and they, not the integer dots, were the limit of the prompt matmuls).
# The term -bias*sum(x) does not depend on the weight row: x_aux_q8_0 precomputes it once per
# activation block (AUX_WORDS per block: that i32, then dx as f32) and it seeds the integer sum. With
# VNNI, signed Q8_0 weights use it too: w + 128 = w ^ 0x80 is unsigned, bias 128.
AUX_WORDS = 2
AUX_BYTES = 4 * AUX_WORDS
Q8_0_VNNI_BIAS = 128
ROWS = 8   # weight rows of a tile (lanes of an <8 x i32>)
NT = 8     # tokens of a gemm_* tile (gemm4_*: 4); registers: NT accumulators + the 8 transposed weight vectors


def _wprep(builder, w, bias, mode):
    """<32 x i8> weights -> the operands the integer dot wants (done once, shared by every token)."""
    if mode == "vnni" and not bias:
        return builder.xor(w, _splat(_I8, 32, 0x80)), None
    if mode == "avx2" and not bias:  # |w| * (x*sign(w)); x is in [-127, 127] so negation cannot overflow
        aw = _call(builder, "llvm.abs.v32i8", _vec(_I8, 32), [w, ir.Constant(_I1, 0)])
        return aw, builder.icmp_signed("<", w, _splat(_I8, 32, 0))
    return w, None


def _idot_acc(builder, wprep, x, acc, bias, mode):
    """acc (<8 x i32>) + lane j: sum_k<4 w[4j+k]*x[4j+k], exact; wprep from _wprep, x signed <32 x i8>."""
    w, neg = wprep
    v8i = _vec(_I32, 8)
    if mode == "vnni":  # u8 x s8 4-way sums into i32: no int16 saturation possible
        return _call(builder, "llvm.x86.avx512.vpdpbusd.256", v8i, [acc, w, x])
    if mode == "avx2":
        if neg is not None:
            x = builder.select(neg, builder.sub(_splat(_I8, 32, 0), x), x)
        # unsigned w <= 31, or |w| <= 128 with |x| <= 127: pair sums fit int16 (no saturation)
        s16 = _call(builder, "llvm.x86.avx2.pmadd.ub.sw", _vec(_I16, 16), [w, x])
        return builder.add(acc, _call(builder, "llvm.x86.avx2.pmadd.wd", v8i, [s16, _splat(_I16, 16, 1)]))
    v32 = _vec(_I32, 32)
    wi = builder.sext(w, v32) if not bias else builder.zext(w, v32)
    prod = builder.mul(wi, builder.sext(x, v32))
    parts = [builder.shuffle_vector(prod, prod, ir.Constant(v8i, [4 * j + k for j in range(8)])) for k in range(4)]
    return builder.add(acc, builder.add(builder.add(parts[0], parts[1]), builder.add(parts[2], parts[3])))


def _uses_corr(bias, mode):
    return bool(bias) or mode == "vnni"


def _transpose8(builder, rows):
    """8 x <32 x i8> (row j's quants) -> 8 x <32 x i8> whose lane j (4 bytes) is dword k of row j."""
    v8i = _vec(_I32, 8)
    v = [builder.bitcast(r, v8i) for r in rows]

    def shuf(a, b, idx):
        return builder.shuffle_vector(a, b, ir.Constant(v8i, idx))

    lo32, hi32 = [0, 8, 1, 9, 4, 12, 5, 13], [2, 10, 3, 11, 6, 14, 7, 15]
    lo64, hi64 = [0, 1, 8, 9, 4, 5, 12, 13], [2, 3, 10, 11, 6, 7, 14, 15]
    lo128, hi128 = [0, 1, 2, 3, 8, 9, 10, 11], [4, 5, 6, 7, 12, 13, 14, 15]
    a = [shuf(v[2 * i], v[2 * i + 1], m) for i in range(4) for m in (lo32, hi32)]   # pairs of rows
    # a[2i] = dwords (0,1 | 4,5) of rows 2i, 2i+1 interleaved; a[2i+1] = dwords (2,3 | 6,7)
    e = []
    for q in range(2):  # rows 0-3, rows 4-7
        p, r = a[4 * q:4 * q + 2], a[4 * q + 2:4 * q + 4]
        e.append([shuf(p[0], r[0], lo64), shuf(p[0], r[0], hi64), shuf(p[1], r[1], lo64), shuf(p[1], r[1], hi64)])
    # e[q][k'] = dword k' (| k'+4) of rows 4q..4q+3
    out = [None] * 8
    for k in range(4):
        out[k] = shuf(e[0][k], e[1][k], lo128)
        out[k + 4] = shuf(e[0][k], e[1][k], hi128)
    return [builder.bitcast(o, _vec(_I8, 32)) for o in out]


def _tile_q4_0(builder, wbs):
    """The transposed quants of 8 Q4_0 blocks (at wbs) as _transpose8 gives them, and their bias.

    Transposes the packed bytes instead (dword k of the 16 qs bytes holds quants 4k..4k+3 in its low
    nibbles and 16+4k.. in its high ones): 4 x 128-bit rows pairs, 8 in-lane shuffles, then the
    nibbles split once per 8 rows, instead of 8 unpacks and 24 shuffles.
    """
    v4i, v8i = _vec(_I32, 4), _vec(_I32, 8)
    rows = [_load(builder, _addr(builder, wb, 2), v4i) for wb in wbs]
    pair = [builder.shuffle_vector(rows[j], rows[j + 4], ir.Constant(v8i, list(range(8)))) for j in range(4)]

    def shuf(a, b, idx):
        return builder.shuffle_vector(a, b, ir.Constant(v8i, idx))

    lo32, hi32 = [0, 8, 1, 9, 4, 12, 5, 13], [2, 10, 3, 11, 6, 14, 7, 15]
    lo64, hi64 = [0, 1, 8, 9, 4, 5, 12, 13], [2, 3, 10, 11, 6, 7, 14, 15]
    t0, t1 = shuf(pair[0], pair[1], lo32), shuf(pair[0], pair[1], hi32)
    t2, t3 = shuf(pair[2], pair[3], lo32), shuf(pair[2], pair[3], hi32)
    packed = [shuf(t0, t2, lo64), shuf(t0, t2, hi64), shuf(t1, t3, lo64), shuf(t1, t3, hi64)]  # dword k of rows 0-7
    m = _splat(_I32, 8, 0x0F0F0F0F)
    lo = [builder.and_(p, m) for p in packed]
    hi = [builder.and_(builder.lshr(p, _splat(_I32, 8, 4)), m) for p in packed]
    return [builder.bitcast(v, _vec(_I8, 32)) for v in lo + hi], 8


def _splat_load(builder, addr, ty):
    """The scalar of type ty at addr in all 8 lanes (a broadcast load, or an embedded {1to8} operand)."""
    v = builder.insert_element(ir.Constant(_vec(ty, 8), ir.Undefined), _load(builder, addr, ty), ir.Constant(_I32, 0))
    return builder.shuffle_vector(v, ir.Constant(_vec(ty, 8), ir.Undefined), ir.Constant(_vec(_I32, 8), [0] * 8))


def _fma(builder, a, b, c):
    """a*b + c: fused where the target has FMA, else multiply then add (llvm.fma there becomes a libcall
    or, in fast-math callers, a multiply and an add for scalars but not vectors: tiles and the one-row dot
    would round differently)."""
    if not HAS_FMA:
        return builder.fadd(builder.fmul(a, b), c)
    t = a.type
    name = "llvm.fma.f32" if t == _F32 else f"llvm.fma.v{t.count}f32"
    return _call(builder, name, t, [a, b, c])


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


UNROLL = 2  # blocks per loop iteration (one software prefetch per row and iteration: ~a cache line of Q4_0)


def _blocks(builder, nb, body):
    """body(b, first) for b in 0..nb-1, UNROLL blocks per iteration; first: whether b starts an iteration."""
    nit = builder.udiv(nb, ir.Constant(_I64, UNROLL))
    with cgutils.for_range(builder, nit) as loop:
        b0 = builder.mul(loop.index, ir.Constant(_I64, UNROLL))
        for k in range(UNROLL):
            body(builder.add(b0, ir.Constant(_I64, k)), k == 0)
    tail0 = builder.mul(nit, ir.Constant(_I64, UNROLL))
    with cgutils.for_range(builder, builder.sub(nb, tail0)) as loop:
        body(builder.add(tail0, loop.index), False)


def _row_dot_codegen(unpack, w_bytes, mode):
    """codegen: f32 dot of one weight row (wp) with one Q8_0 activation row (xp, aux words at cp)."""

    def codegen(context, builder, signature, args):
        wp, xp, cp, nb, pf = args
        acc = cgutils.alloca_once_value(builder, ir.Constant(_F32, 0.0))

        def body(b, first):
            wb = builder.add(wp, builder.mul(b, ir.Constant(_I64, w_bytes)))
            if first:
                _prefetch(builder, wb, pf)
            xb = builder.add(xp, builder.mul(b, ir.Constant(_I64, 34)))
            cb = builder.add(cp, builder.mul(b, ir.Constant(_I64, AUX_BYTES)))
            dw, wq, bias = unpack(builder, wb)
            s = ir.Constant(_vec(_I32, 8), [0] * 8)
            if _uses_corr(bias, mode):
                s = builder.insert_element(s, _load(builder, cb, _I32), ir.Constant(_I32, 0))
            s = _idot_acc(builder, _wprep(builder, wq, bias, mode), _load(builder, _addr(builder, xb, 2), _vec(_I8, 32)),
                          s, bias, mode)
            si = _call(builder, "llvm.vector.reduce.add.v8i32", _I32, [s])
            d = builder.fmul(dw, _load(builder, _addr(builder, cb, 4), _F32))
            builder.store(_fma(builder, d, builder.sitofp(si, _F32), builder.load(acc)), acc)

        _blocks(builder, nb, body)
        return builder.load(acc)

    return codegen


def _make_row_dot(unpack, w_bytes, mode):
    cg = _row_dot_codegen(unpack, w_bytes, mode)

    def typer(typingctx, wp, xp, cp, nb, pf):
        if not _ints(wp, xp, cp, nb, pf):
            return None
        return types.float32(*([types.int64] * 5)), cg

    return typer


def _tile_codegen(unpack, w_bytes, mode, T):
    """codegen: ROWS weight rows (wp + j*ws) x T Q8_0 activation rows (xp + t*xs, aux words at cp + t*cs);
    row j, token t -> f32 at dp + (t*ds + j)*4 (the 8 rows of a token are one vector store)."""

    n_chain = max(1, 4 // T)

    def codegen(context, builder, signature, args):
        wp, ws, xp, xs, cp, cs, nb, dp, ds, pf = args
        v8f, v8i, v8h = _vec(_F32, 8), _vec(_I32, 8), _vec(_I16, 8)
        accs = [cgutils.alloca_once_value(builder, ir.Constant(v8f, [0.0] * 8)) for _ in range(T)]
        wps = [builder.add(wp, builder.mul(ws, ir.Constant(_I64, j))) for j in range(ROWS)]
        # at least one tile ahead: pf ahead of a row that is shorter than pf/ROWS lands on a row of this
        # same tile, already on its way (a Q4_0 matvec with 6 KB rows: 28 -> 32-37 GB/s)
        tile_bytes = builder.mul(ws, ir.Constant(_I64, ROWS))
        pf = builder.select(builder.icmp_signed(">", tile_bytes, pf), tile_bytes, pf)
        xts = [builder.add(xp, builder.mul(xs, ir.Constant(_I64, t))) for t in range(T)]
        cts = [builder.add(cp, builder.mul(cs, ir.Constant(_I64, t))) for t in range(T)]

        def body(b, first):
            wbs = [builder.add(w, builder.mul(b, ir.Constant(_I64, w_bytes))) for w in wps]
            if first:
                for wb in wbs:
                    _prefetch(builder, wb, pf)  # the hardware prefetchers alone leave DRAM bandwidth unused
            # the 8 f16 scales (offset 0 of each block) packed in two i64 on the integer ALUs, which this
            # loop leaves idle, instead of 8 vector inserts
            halves = []
            for q in range(2):
                v = None
                for j in range(4):
                    h = builder.zext(_load(builder, wbs[4 * q + j], _I16), _I64)
                    h = builder.shl(h, ir.Constant(_I64, 16 * j)) if j else h
                    v = h if v is None else builder.or_(v, h)
                halves.append(v)
            d2 = builder.insert_element(ir.Constant(_vec(_I64, 2), ir.Undefined), halves[0], ir.Constant(_I32, 0))
            d2 = builder.insert_element(d2, halves[1], ir.Constant(_I32, 1))
            dwv = _h2f(builder, builder.bitcast(d2, v8h), 8)
            if unpack is _unpack_q4_0:
                qt, bias = _tile_q4_0(builder, wbs)
            else:
                qs = []
                for wb in wbs:
                    _, q, bias = unpack(builder, wb)  # (the scalar scale is unused: dead code)
                    qs.append(q)
                qt = _transpose8(builder, qs)
            wk = [_wprep(builder, q, bias, mode) for q in qt]
            xo = builder.mul(b, ir.Constant(_I64, 34))
            co = builder.mul(b, ir.Constant(_I64, AUX_BYTES))
            for t in range(T):
                xb = builder.add(xts[t], xo)
                cb = builder.add(cts[t], co)
                # n_chain independent integer sums (exact, so their split does not change S): one chain of
                # 8 dependent vpdpbusd per block would leave a lone token latency-bound
                sums = [ir.Constant(v8i, [0] * 8)] * n_chain
                if _uses_corr(bias, mode):
                    sums[0] = _splat_load(builder, cb, _I32)
                for k in range(8):
                    xk = builder.bitcast(_splat_load(builder, _addr(builder, xb, 2 + 4 * k), _I32), _vec(_I8, 32))
                    sums[k % n_chain] = _idot_acc(builder, wk[k], xk, sums[k % n_chain], bias, mode)
                s = sums[0]
                for c in sums[1:]:
                    s = builder.add(s, c)
                d = builder.fmul(dwv, _splat_load(builder, _addr(builder, cb, 4), _F32))
                builder.store(_fma(builder, d, builder.sitofp(s, v8f), builder.load(accs[t])), accs[t])

        _blocks(builder, nb, body)
        for t in range(T):
            p = builder.inttoptr(builder.add(dp, builder.mul(ds, ir.Constant(_I64, 4 * t))), ir.PointerType(v8f))
            builder.store(builder.load(accs[t]), p, align=4)
        return context.get_dummy_value()

    return codegen


def _ints(*args):
    return all(isinstance(a, types.Integer) for a in args)


def _make_tile(unpack, w_bytes, mode, T):
    cg = _tile_codegen(unpack, w_bytes, mode, T)

    def typer(typingctx, wp, ws, xp, xs, cp, cs, nb, dp, ds, pf):
        if not _ints(wp, ws, xp, xs, cp, cs, nb, dp, ds, pf):
            return None
        return types.none(*([types.int64] * 10)), cg

    return typer


# Block-dot mode of the host-selected intrinsics: VNNI (vpdpbusd) > AVX2 (pmaddubsw) > portable IR.
DOT_MODE = "vnni" if HAS_VNNI else ("avx2" if HAS_AVX2 else "generic")

# dot_*(wp, xp, cp, nb, pf) -> f32: weight row at wp, Q8_0 activation row at xp, its aux words at cp
# (x_aux_q8_0 with the weight format's bias: Q4_0 8, Q5_0 16, Q8_0 Q8_0_VNNI_BIAS), nb blocks, pf the
# prefetch distance in bytes. rows8_*(wp, ws, xp, xs, cp, cs, nb, dp, ds, pf): ROWS rows (stride ws) x one
# token; gemm_*, gemm4_*(same arguments): ROWS rows x NT or 4 tokens (xp + t*xs, cp + t*cs) -> dp + (t*ds + j)*4.
dot_q8_0_q8_0 = intrinsic(_make_row_dot(_unpack_q8_0, 34, DOT_MODE))
dot_q4_0_q8_0 = intrinsic(_make_row_dot(_unpack_q4_0, 18, DOT_MODE))
dot_q5_0_q8_0 = intrinsic(_make_row_dot(_unpack_q5_0, 22, DOT_MODE))
rows8_q8_0_q8_0 = intrinsic(_make_tile(_unpack_q8_0, 34, DOT_MODE, 1))
rows8_q4_0_q8_0 = intrinsic(_make_tile(_unpack_q4_0, 18, DOT_MODE, 1))
rows8_q5_0_q8_0 = intrinsic(_make_tile(_unpack_q5_0, 22, DOT_MODE, 1))
gemm_q8_0_q8_0 = intrinsic(_make_tile(_unpack_q8_0, 34, DOT_MODE, NT))
gemm_q4_0_q8_0 = intrinsic(_make_tile(_unpack_q4_0, 18, DOT_MODE, NT))
gemm_q5_0_q8_0 = intrinsic(_make_tile(_unpack_q5_0, 22, DOT_MODE, NT))
gemm4_q8_0_q8_0 = intrinsic(_make_tile(_unpack_q8_0, 34, DOT_MODE, 4))
gemm4_q4_0_q8_0 = intrinsic(_make_tile(_unpack_q4_0, 18, DOT_MODE, 4))
gemm4_q5_0_q8_0 = intrinsic(_make_tile(_unpack_q5_0, 22, DOT_MODE, 4))
# portable variants (tests): the generic IR, and the AVX2 path where the target has AVX2
_AVX2_OR_GENERIC = "avx2" if HAS_AVX2 else "generic"
dot_q8_0_q8_0_generic = intrinsic(_make_row_dot(_unpack_q8_0, 34, "generic"))
dot_q4_0_q8_0_generic = intrinsic(_make_row_dot(_unpack_q4_0, 18, "generic"))
dot_q5_0_q8_0_generic = intrinsic(_make_row_dot(_unpack_q5_0_generic, 22, "generic"))
dot_q8_0_q8_0_avx2 = intrinsic(_make_row_dot(_unpack_q8_0, 34, _AVX2_OR_GENERIC))
dot_q4_0_q8_0_avx2 = intrinsic(_make_row_dot(_unpack_q4_0, 18, _AVX2_OR_GENERIC))
dot_q5_0_q8_0_avx2 = intrinsic(_make_row_dot(_unpack_q5_0_generic, 22, _AVX2_OR_GENERIC))
rows8_q8_0_q8_0_generic = intrinsic(_make_tile(_unpack_q8_0, 34, "generic", 1))
rows8_q4_0_q8_0_generic = intrinsic(_make_tile(_unpack_q4_0, 18, "generic", 1))
rows8_q5_0_q8_0_generic = intrinsic(_make_tile(_unpack_q5_0_generic, 22, "generic", 1))
rows8_q8_0_q8_0_avx2 = intrinsic(_make_tile(_unpack_q8_0, 34, _AVX2_OR_GENERIC, 1))
rows8_q4_0_q8_0_avx2 = intrinsic(_make_tile(_unpack_q4_0, 18, _AVX2_OR_GENERIC, 1))
rows8_q5_0_q8_0_avx2 = intrinsic(_make_tile(_unpack_q5_0_generic, 22, _AVX2_OR_GENERIC, 1))

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
