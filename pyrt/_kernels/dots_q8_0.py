"""Numba intrinsics for Q8_0, Q4_0 and Q5_0 weights against Q8_0 activations: block unpackers, the integer
block dots and 8-row tiles of the matmul kernels in matmul_q8_0.py, and the row dequantizers.

Leaf module (llvmlite, numba and simd's IR helpers); pointers are integer addresses the kernels keep in
range. Block dots: vpdpbusd (AVX-VNNI/AVX512-VNNI), pmaddubsw (AVX2) or portable IR, same bits.
"""

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from .simd import (HAS_AVX2, HAS_AVX512BW, HAS_F16C, HAS_FMA, HAS_VNNI, _F32, _FEATS, _I1, _I8, _I16, _I32, _I64,
                   _addr, _bcast, _call, _f16_scale, _f2h_int, _h2f, _load, _prefetch, _splat, _vec)


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
# A Q8_0/Q4_0/Q5_0 weight block times a Q8_0 activation block is an exact integer S = sum_j (w_j - bias) * x_j,
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
# tokens of a gemm16_q5_0 tile (where the target has 32 vector registers, AVX-512VL): 16 accumulators + 8 weight
# vectors, each Q5_0 unpack then serving twice the tokens. Q5_0's unpack is the costliest; Q4_0 and Q8_0 tiles
# run slower at 16 tokens.
NT_WIDE = 16
WIDE_TILES = HAS_AVX512BW and "avx512vl" in _FEATS
HAS_BITALG = WIDE_TILES and "avx512bitalg" in _FEATS  # vpshufbitqmb: Q5_0's high bits as a mask in one step


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


def _tile_nibbles(builder, wbs, off):
    """The 16 packed qs bytes at wb + off of 8 blocks (wbs) -> 8 x <32 x i8> as _transpose8 gives a 4-bit
    format's quants: vector v, lane j = quants 4v..4v+3 of row j (low nibbles of qs dword v for v < 4, high
    nibbles of dword v-4 for v >= 4, which are quants 16+4(v-4).. = 4v..).

    Transposes the packed bytes (4 x 128-bit row pairs, 8 in-lane shuffles), then splits the nibbles once
    per 8 rows, instead of 8 unpacks and _transpose8's 24 shuffles.
    """
    v4i, v8i = _vec(_I32, 4), _vec(_I32, 8)
    rows = [_load(builder, _addr(builder, wb, off), v4i) for wb in wbs]
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
    return [builder.bitcast(v, _vec(_I8, 32)) for v in lo + hi]


def _tile_q4_0(builder, wbs):
    """The transposed quants of 8 Q4_0 blocks (at wbs) as _transpose8 gives them, and their bias."""
    return _tile_nibbles(builder, wbs, 2), 8


def _tile_q5_0(builder, wbs):
    """The transposed quants of 8 Q5_0 blocks (at wbs) as _transpose8 gives them, and their bias.

    The nibbles as _tile_nibbles; quant 4v+i of row j takes bit 4v+i of its qh, i.e. bit 4(v%2)+i of qh byte
    v//2: the 8 qh words in the lanes of one vector, that byte spread over its lane's 4 bytes (an in-lane byte
    shuffle), a test against bits 4(v%2)..4(v%2)+3, and 16 added where set (a mask register and one masked
    add on AVX-512BW); with AVX512-BITALG one vpshufbitqmb a vector gives that mask from the qh words directly.
    """
    v8i, v32b = _vec(_I32, 8), _vec(_I8, 32)
    nib = _tile_nibbles(builder, wbs, 6)
    qh = ir.Constant(v8i, ir.Undefined)
    for j, wb in enumerate(wbs):
        qh = builder.insert_element(qh, _load(builder, _addr(builder, wb, 2), _I32), ir.Constant(_I32, j))
    qb = builder.bitcast(qh, v32b)
    zero, sixteen = _splat(_I8, 32, 0), _splat(_I8, 32, 0x10)
    out = []
    if HAS_BITALG:  # one vpshufbitqmb a vector: byte (row j, i) takes bit 4v+i of qh_j, at 32*(j%2) in its qword
        fnty = ir.FunctionType(_vec(_I1, 32), [v32b, v32b])
        fn = cgutils.get_or_insert_function(builder.module, fnty, "llvm.x86.avx512.vpshufbitqmb.256")
        for v in range(8):
            idx = ir.Constant(v32b, [32 * (j % 2) + 4 * v + i for j in range(8) for i in range(4)])
            set_ = builder.call(fn, [qb, idx])
            out.append(builder.select(set_, builder.or_(nib[v], sixteen), nib[v]))  # 16 added where the bit is set
        return out, 16
    for v in range(8):
        spread = builder.shuffle_vector(qb, qb, ir.Constant(_vec(_I32, 32), [4 * j + v // 2 for j in range(8)
                                                                              for _ in range(4)]))
        bits = ir.Constant(v32b, [1 << (4 * (v % 2) + i) for _ in range(8) for i in range(4)])
        set_ = builder.icmp_unsigned("!=", builder.and_(spread, bits), zero)
        out.append(builder.add(nib[v], builder.select(set_, sixteen, zero)))
    return out, 16


def _splat_load(builder, addr, ty):
    """The scalar of type ty at addr in all 8 lanes (a broadcast load, or an embedded {1to8} operand)."""
    return _bcast(builder, _load(builder, addr, ty), 8)


def _fma(builder, a, b, c):
    """a*b + c: fused where the target has FMA, else multiply then add (llvm.fma there becomes a libcall
    or, in fast-math callers, a multiply and an add for scalars but not vectors: tiles and the one-row dot
    would round differently)."""
    if not HAS_FMA:
        return builder.fadd(builder.fmul(a, b), c)
    t = a.type
    name = "llvm.fma.f32" if t == _F32 else f"llvm.fma.v{t.count}f32"
    return _call(builder, name, t, [a, b, c])


UNROLL = 2  # blocks per loop iteration (the software prefetches of a row are issued once per iteration)


def _prefetch_step(builder, wb, pf, step):
    """Prefetches of the `step` bytes at wb + pf, one per 64 bytes: a step longer than a line (two Q8_0 blocks, 68
    bytes) must not leave a line of the weight stream to a demand miss from DRAM."""
    for o in range(0, step, 64):
        _prefetch(builder, wb, pf if o == 0 else builder.add(pf, ir.Constant(_I64, o)))


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
                _prefetch_step(builder, wb, pf, w_bytes * UNROLL)
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
                for wb in wbs:  # the hardware prefetchers alone leave DRAM bandwidth unused
                    _prefetch_step(builder, wb, pf, w_bytes * UNROLL)
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
            elif unpack in (_unpack_q5_0, _unpack_q5_0_generic):
                qt, bias = _tile_q5_0(builder, wbs)
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
# token; gemm16_q5_0, gemm_*, gemm4_*, gemm2_*(same arguments): ROWS rows x NT_WIDE, NT, 4 or 2 tokens
# (xp + t*xs, cp + t*cs) -> dp + (t*ds + j)*4.
dot_q8_0_q8_0 = intrinsic(_make_row_dot(_unpack_q8_0, 34, DOT_MODE))
dot_q4_0_q8_0 = intrinsic(_make_row_dot(_unpack_q4_0, 18, DOT_MODE))
dot_q5_0_q8_0 = intrinsic(_make_row_dot(_unpack_q5_0, 22, DOT_MODE))
rows8_q8_0_q8_0 = intrinsic(_make_tile(_unpack_q8_0, 34, DOT_MODE, 1))
rows8_q4_0_q8_0 = intrinsic(_make_tile(_unpack_q4_0, 18, DOT_MODE, 1))
rows8_q5_0_q8_0 = intrinsic(_make_tile(_unpack_q5_0, 22, DOT_MODE, 1))
gemm_q8_0_q8_0 = intrinsic(_make_tile(_unpack_q8_0, 34, DOT_MODE, NT))
gemm_q4_0_q8_0 = intrinsic(_make_tile(_unpack_q4_0, 18, DOT_MODE, NT))
gemm_q5_0_q8_0 = intrinsic(_make_tile(_unpack_q5_0, 22, DOT_MODE, NT))
gemm16_q5_0_q8_0 = intrinsic(_make_tile(_unpack_q5_0, 22, DOT_MODE, NT_WIDE))
gemm4_q8_0_q8_0 = intrinsic(_make_tile(_unpack_q8_0, 34, DOT_MODE, 4))
gemm4_q4_0_q8_0 = intrinsic(_make_tile(_unpack_q4_0, 18, DOT_MODE, 4))
gemm4_q5_0_q8_0 = intrinsic(_make_tile(_unpack_q5_0, 22, DOT_MODE, 4))
gemm2_q8_0_q8_0 = intrinsic(_make_tile(_unpack_q8_0, 34, DOT_MODE, 2))
gemm2_q4_0_q8_0 = intrinsic(_make_tile(_unpack_q4_0, 18, DOT_MODE, 2))
gemm2_q5_0_q8_0 = intrinsic(_make_tile(_unpack_q5_0, 22, DOT_MODE, 2))
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
            dv = _bcast(builder, d, 32)
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


# ------------------------------------------------------------------ activation quantizer and aux words
# quantize_row_q8_0's arithmetic (matmul_q8_0.quantize_rows_q8_0), 32 lanes at a time: amax = max |x|
# (exact in any order), d = amax/127 rounded to f16, q = rint(x * (127/amax)) ties to even (0 when amax
# is 0). Every step is an exact or correctly rounded IEEE operation, so the bits equal the scalar loop's.


def _quantize_row_codegen(context, builder, signature, args):
    op, xp, nb = args
    v32f = _vec(_F32, 32)
    with cgutils.for_range(builder, nb) as loop:
        b = loop.index
        v = _load(builder, builder.add(xp, builder.mul(b, ir.Constant(_I64, 128))), v32f)
        amax = _call(builder, "llvm.vector.reduce.fmax.v32f32", _F32, [_call(builder, "llvm.fabs.v32f32", v32f, [v])])
        d = builder.fdiv(amax, ir.Constant(_F32, 127.0))
        h = builder.bitcast(builder.fptrunc(d, ir.HalfType()), _I16) if HAS_F16C else _f2h_int(builder, d)
        ob = builder.add(op, builder.mul(b, ir.Constant(_I64, 34)))
        builder.store(h, builder.inttoptr(ob, ir.PointerType(_I16)), align=1)
        nz = builder.fcmp_ordered("!=", amax, ir.Constant(_F32, 0.0))
        idv = builder.select(nz, builder.fdiv(ir.Constant(_F32, 127.0), amax), ir.Constant(_F32, 0.0))
        idvv = _bcast(builder, idv, 32)
        q = _call(builder, "llvm.rint.v32f32", v32f, [builder.fmul(v, idvv)])
        q8 = builder.trunc(builder.fptosi(q, _vec(_I32, 32)), _vec(_I8, 32))
        builder.store(q8, builder.inttoptr(_addr(builder, ob, 2), ir.PointerType(_vec(_I8, 32))), align=1)
    return context.get_dummy_value()


@intrinsic
def quantize_row_q8_0(typingctx, op, xp, nb):
    """nb blocks of f32 at xp -> block_q8_0 bytes at op (quantize_rows_q8_0's bits)."""
    if not _ints(op, xp, nb):
        return None
    return types.none(types.int64, types.int64, types.int64), _quantize_row_codegen


def _aux_row_codegen(context, builder, signature, args):
    cp, xp, nb, bias = args
    with cgutils.for_range(builder, nb) as loop:
        b = loop.index
        xb = builder.add(xp, builder.mul(b, ir.Constant(_I64, 34)))
        q = builder.sext(_load(builder, _addr(builder, xb, 2), _vec(_I8, 32)), _vec(_I32, 32))
        s = _call(builder, "llvm.vector.reduce.add.v32i32", _I32, [q])
        cb = builder.add(cp, builder.mul(b, ir.Constant(_I64, AUX_BYTES)))
        builder.store(builder.mul(builder.sub(ir.Constant(_I32, 0), builder.trunc(bias, _I32)), s),
                      builder.inttoptr(cb, ir.PointerType(_I32)), align=4)
        builder.store(_f16_scale(builder, xb), builder.inttoptr(_addr(builder, cb, 4), ir.PointerType(_F32)), align=4)
    return context.get_dummy_value()


@intrinsic
def aux_row_q8_0(typingctx, cp, xp, nb, bias):
    """x_aux_q8_0 for one row: nb Q8_0 blocks at xp -> (-bias * sum(qs), dx) word pairs at cp."""
    if not _ints(cp, xp, nb, bias):
        return None
    return types.none(*([types.int64] * 4)), _aux_row_codegen
