"""FlashMLA on AMX-BF16 tiles: the absorbed attention of attention_mla.flash_attn_mla with the score and value
products on the tile unit, for 16-row groups of query rows (tokens x heads).

A tile product (tdpbf16ps) sums bf16 x bf16 products in f32. Every operand enters as two bf16 terms, hi (its
f32 bits truncated to 16) and lo (the rest, exact in f32, rounded to bf16): an f16 or bf16 cache value is
exact in hi + lo, a query, a probability or a q8_0 value keeps about 16 significand bits. A score is hi*hi
+ hi*lo + lo*hi (lo*lo, below 2^-16 relative, is left out), a value product p_hi*v + p_lo*v with v whole (its
two terms in one pair, below): three or two tile products where f32 vectors do one FMA, on a unit with many
times their throughput (4.3-16 ns per 16 x 16 x 32 product on the 2-core Xeon VMs, whose two vCPUs may share
one tile unit). The summation order is the tile unit's, fixed per row.

Per 32-cell tile of an item: the cells' latent rows dequantized and split (K: [cells, dk] hi/lo, the A tiles
of the scores), S^T = K . Q^T (B: the item's query rows, packed once into the VNNI layout), the online softmax
over S^T's columns (16 rows per vector), then acc += P . V. V is the latent part of the same rows as value
words: the pair (lo, hi) of each value, blocked 16 values x 32 cells (WBLOCK bytes, the B tiles of 16 value
columns); P's A tiles (p_dup) carry each probability term in both halves of a pair, so one tile product adds
p * (lo + hi), the exact value: a 16 x 16 block takes two products (P hi, P lo) per 16 cells. acc lives in
memory between tiles: each 16 x 16 block goes through a C tile once per tile of cells. The next tile's cache
rows are prefetched a few per product.
An item of one 16-row group over f16 or bf16 rows whose values lie inside the score blocks (a decoded token)
converts block by block instead: each 32-value K block of the tile right before its score product into a
4 KiB buffer that stays in L1, the value words of the block on the way (whole rows of a tile fill 72 KiB of
hi/lo terms, and the conversion waited on L2). Both orders give the same terms, words, tiles, products and
bits. A bf16 value is its own hi term (lo zero): its blocks are copies, and the score products of the zero lo
terms are left out (qk2_step; adding a zero product changes no sum).

Tiles: one palette-1 configuration of eight 16 x 64-byte tiles (config_bytes), loaded by each work item
(ldtilecfg) and released at its end (tilerelease); callers run this only where amx.enable() said True and
the target has AMX-BF16 (HAS_AMX_BF16).

Leaf module (numpy, numba, llvmlite and sibling kernel modules only).
"""

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

from .amx import HAS_AMX_TARGET, _asm, inline_asm, tile_config, tile_release
from .config import FASTMATH
from .kv import KIND_BF16, KIND_F16, KIND_F32, decode_row
from .simd import (_F32, _FEATS, _I16, _I32, _I64, _bcast, _c, _h2f, _int_typer, _vec, empty_lined, prefetch,
                   vector_loop, zeros_lined)
from .softmax import cell_scratch, exp_neg_ir, query_seqs, start_rows, tile_mask_t

HAS_AMX_BF16 = HAS_AMX_TARGET and "amx-bf16" in _FEATS
HAS_CVT_BF16 = "avx512bf16" in _FEATS  # vcvtne2ps2bf16 (every AMX-BF16 CPU has it)
GROUP = 16       # query rows of a tile (columns of the score tile, rows of the value tile)
TILE = 32        # cells of a KV tile: two 16-cell score tiles, the K of one value product
KB = 32          # values of one score product (K of the tile product: 16 bf16 pairs)
TILE_BYTES = 1024  # one tile: 16 rows x 64 bytes
PF_TILES = 2       # tiles ahead that the items prefetch the cache rows


@njit(cache=True, nogil=True)
def amx_fits(kind, n_head, dk, dv):
    """Whether mla_item_amx takes a call's items: a cache of f16, bf16 or q8_0 rows (exact or within 2^-16 in
    two bf16 terms; f32 rows keep the f32 kernel), 16-row groups of whole tokens, 32-value score blocks and
    pairs of 16-value column blocks."""
    return kind != KIND_F32 and n_head % GROUP == 0 and dk % KB == 0 and dv % (2 * GROUP) == 0


def config_bytes() -> np.ndarray:
    """Palette 1, eight tiles of 16 rows x 64 bytes."""
    cfg = np.zeros(64, np.uint8)
    cfg[0] = 1
    cfg[16:32].view(np.uint16)[:] = 64
    cfg[48:56] = 16
    return cfg


# ---------------------------------------------------------------------------- tile steps (inline asm)

def _asm_call(text, n):
    """_int_typer of the asm text over operands $0..$n-1 (r11 clobbered)."""
    def codegen(context, builder, signature, a):
        builder.call(_asm(builder, text, n, ",~{r11}"), list(a))
        return context.get_dummy_value()

    return _int_typer(n, codegen)


# zero2(): tmm0 = tmm1 = 0 (the two 16-cell score tiles)
zero2 = intrinsic(_asm_call("tilezero %tmm0\n\ttilezero %tmm1", 0))
# qk_step(kh0, kl0, ks, qh, ql, kh1, kl1): tmm0 += K[cells 0..15] . Q^T and tmm1 += K[cells 16..31] . Q^T for one
# 32-value block; K hi/lo rows at kh0/kl0 and kh1/kl1 with row stride ks; Q^T's VNNI tiles at qh/ql (64-byte rows).
# Products ql.kh, qh.kh, qh.kl: each register is loaded in the order the step before last read it (tile registers
# are not renamed: a load waits for the products that read the register), so the loads run under products.
qk_step = intrinsic(_asm_call(
    "mov $$64, %r11\n\t"
    "tileloadd ($4,%r11,1), %tmm3\n\t"
    "tileloadd ($0,$2,1), %tmm4\n\t"
    "tileloadd ($5,$2,1), %tmm6\n\t"
    "tdpbf16ps %tmm3, %tmm4, %tmm0\n\t"
    "tdpbf16ps %tmm3, %tmm6, %tmm1\n\t"
    "tileloadd ($1,$2,1), %tmm5\n\t"
    "tileloadd ($3,%r11,1), %tmm2\n\t"
    "tdpbf16ps %tmm2, %tmm4, %tmm0\n\t"
    "tdpbf16ps %tmm2, %tmm6, %tmm1\n\t"
    "tileloadd ($6,$2,1), %tmm7\n\t"
    "tdpbf16ps %tmm2, %tmm5, %tmm0\n\t"
    "tdpbf16ps %tmm2, %tmm7, %tmm1", 7))
# qk2_step(k0, ks, qh, ql, k1): qk_step for K rows exact in one bf16 term (a bf16 cache): the same products but
# the two of the lo terms, which are zero there
qk2_step = intrinsic(_asm_call(
    "mov $$64, %r11\n\t"
    "tileloadd ($3,%r11,1), %tmm3\n\t"
    "tileloadd ($0,$1,1), %tmm4\n\t"
    "tileloadd ($4,$1,1), %tmm6\n\t"
    "tdpbf16ps %tmm3, %tmm4, %tmm0\n\t"
    "tdpbf16ps %tmm3, %tmm6, %tmm1\n\t"
    "tileloadd ($2,%r11,1), %tmm2\n\t"
    "tdpbf16ps %tmm2, %tmm4, %tmm0\n\t"
    "tdpbf16ps %tmm2, %tmm6, %tmm1", 5))
# store2(s0, ss, s1): tmm0 -> s0, tmm1 -> s1 (row stride ss)
store2 = intrinsic(_asm_call("tilestored %tmm0, ($0,$1,1)\n\ttilestored %tmm1, ($2,$1,1)", 3))
# load_p4(a, b, c, d): four A tiles of the duplicated probability terms (p_dup; 64-byte rows) into tmm2..tmm5
load_p4 = intrinsic(_asm_call(
    "mov $$64, %r11\n\t"
    "tileloadd ($0,%r11,1), %tmm2\n\t"
    "tileloadd ($1,%r11,1), %tmm3\n\t"
    "tileloadd ($2,%r11,1), %tmm4\n\t"
    "tileloadd ($3,%r11,1), %tmm5", 4))
# pv_w2(c, cs, b): two 16 x 16 accumulator blocks at c and c + 64 (row stride cs) += P . V for their 16 value
# columns each: block i's words of cells 0..15 at b + i * WBLOCK and of cells 16..31 at b + i * WBLOCK + 1 KiB
# (64-byte rows) against tmm2..tmm5 = P hi of cells 0..15, P hi of cells 16..31, P lo of cells 0..15, P lo of
# cells 16..31. The blocks alternate between tmm0 and tmm1, and each word tile's two products come together, so
# that a tile is loaded while the products of the one before run (tile registers are not renamed: a load waits
# for the products that read the register).
pv_w2 = intrinsic(_asm_call(
    "mov $$64, %r11\n\t"
    "tileloadd ($0,$1,1), %tmm0\n\t"
    "tileloadd ($2,%r11,1), %tmm6\n\t"
    "tileloadd 1024($2,%r11,1), %tmm7\n\t"
    "tdpbf16ps %tmm6, %tmm2, %tmm0\n\t"
    "tdpbf16ps %tmm6, %tmm4, %tmm0\n\t"
    "tileloadd 64($0,$1,1), %tmm1\n\t"
    "tdpbf16ps %tmm7, %tmm3, %tmm0\n\t"
    "tdpbf16ps %tmm7, %tmm5, %tmm0\n\t"
    "tileloadd 2048($2,%r11,1), %tmm6\n\t"
    "tdpbf16ps %tmm6, %tmm2, %tmm1\n\t"
    "tdpbf16ps %tmm6, %tmm4, %tmm1\n\t"
    "tilestored %tmm0, ($0,$1,1)\n\t"
    "tileloadd 3072($2,%r11,1), %tmm7\n\t"
    "tdpbf16ps %tmm7, %tmm3, %tmm1\n\t"
    "tdpbf16ps %tmm7, %tmm5, %tmm1\n\t"
    "tilestored %tmm1, 64($0,$1,1)", 3))


# ---------------------------------------------------------------------------- bf16 terms and layouts

_W = 16


def _terms(builder, x, w):
    """f32 x (w lanes; w = 1: a scalar) -> its bf16 terms (hi, lo) as i16: hi = the bits >> 16 (truncated),
    lo = x - hi (exact in f32) rounded to bf16 by adding half of its last place before the shift."""
    n = None if w == 1 else w
    ti, th = (_I32, _I16) if n is None else (_vec(_I32, w), _vec(_I16, w))
    bits = builder.bitcast(x, ti)
    hi = builder.trunc(builder.lshr(bits, _c(builder, 16, _I32, n)), th)
    lo_f = builder.fsub(x, builder.bitcast(builder.and_(bits, _c(builder, -65536, _I32, n)), x.type))
    lo = builder.add(builder.bitcast(lo_f, ti), _c(builder, 0x8000, _I32, n))
    return hi, builder.trunc(builder.lshr(lo, _c(builder, 16, _I32, n)), th)


def make_split(terms):
    """The codegen of an intrinsic (hp, lp, src, n): n f32 at src -> their two terms terms(builder, x, w) as uint16
    at hp, lp."""
    def codegen(context, builder, signature, args):
        hp, lp, src, n = args

        def step(off, w):
            tf = _F32 if w == 1 else _vec(_F32, w)
            x = builder.load(builder.inttoptr(builder.add(src, builder.mul(off, ir.Constant(_I64, 4))),
                                              tf.as_pointer()), align=4)
            o2 = builder.mul(off, ir.Constant(_I64, 2))
            for t, base in zip(terms(builder, x, w), (hp, lp)):
                builder.store(t, builder.inttoptr(builder.add(base, o2), t.type.as_pointer()), align=2)

        vector_loop(builder, n, _W, step)
        return context.get_dummy_value()

    return codegen


# split_bf16(hp, lp, src, n): the bf16 hi and lo terms (uint16 at hp, lp) of n f32 at src
split_bf16 = intrinsic(_int_typer(4, make_split(_terms)))


WBLOCK = TILE * 64  # bytes of one block of value words: 16 values (one 64-byte row) of each of a tile's 32 cells


def _word_at(builder, base, off):
    """The address of value off's word in blocked words (WBLOCK bytes per 16 values) from base."""
    blk = builder.udiv(off, ir.Constant(_I64, _W))
    inb = builder.urem(off, ir.Constant(_I64, _W))
    off = builder.add(builder.mul(blk, ir.Constant(_I64, WBLOCK)), builder.mul(inb, ir.Constant(_I64, 4)))
    return builder.add(base, off)


def _words_codegen(context, builder, signature, args):
    """Word i of blocked words at dp = (lo[i], hi[i]) (uint16 each) for i < n."""
    dp, lp, hp, n = args

    def step(i, w):
        t = _I16 if w == 1 else _vec(_I16, w)
        o = builder.mul(i, ir.Constant(_I64, 2))
        lo = builder.load(builder.inttoptr(builder.add(lp, o), t.as_pointer()), align=2)
        hi = builder.load(builder.inttoptr(builder.add(hp, o), t.as_pointer()), align=2)
        d = _word_at(builder, dp, i)
        if w == 1:
            builder.store(lo, builder.inttoptr(d, _I16.as_pointer()), align=2)
            builder.store(hi, builder.inttoptr(builder.add(d, ir.Constant(_I64, 2)), _I16.as_pointer()), align=2)
        else:
            inter = ir.Constant(_vec(_I32, 2 * w), [k // 2 + (w if k % 2 else 0) for k in range(2 * w)])
            v = builder.shuffle_vector(lo, hi, inter)
            builder.store(v, builder.inttoptr(d, v.type.as_pointer()), align=2)

    vector_loop(builder, n, _W, step)
    return context.get_dummy_value()


# words_u16(dp, lp, hp, n): blocked value words (lo, hi) at dp of n values' lo terms (uint16 at lp) and hi terms (hp)
words_u16 = intrinsic(_int_typer(4, _words_codegen))


def _cvt2_bf16(builder, a, b):
    """vcvtne2ps2bf16: f32 x 16 a, b -> <32 x i16> [bf16(a) | bf16(b)], each rounded to nearest even."""
    fnty = ir.FunctionType(_vec(_I16, 2 * _W), [_vec(_F32, _W)] * 2)
    return builder.call(inline_asm(fnty, "vcvtne2ps2bf16 $2, $1, $0", "=v,v,v"), [b, a])


def _half(builder, v, h):
    """Lanes 16h..16h+15 of a 32-lane vector."""
    lanes = ir.Constant(_vec(_I32, _W), list(range(_W * h, _W * h + _W)))
    return builder.shuffle_vector(v, ir.Constant(v.type, None), lanes)


def _f16_x16(builder, src):
    """16 f16 at src -> f32 x 16 and its truncation to bf16 precision (the bits & 0xffff0000, exact in f32)."""
    x = _h2f(builder, builder.load(builder.inttoptr(src, _vec(_I16, _W).as_pointer()), align=2), _W)
    return x, builder.bitcast(builder.and_(builder.bitcast(x, _vec(_I32, _W)), _c(builder, -65536, _I32, _W)), x.type)


def _f16_terms(builder, src):
    """16 f16 at src -> (hi, lo) terms (<16 x i16>) and the truncated f32 bits (<16 x i32>, the high half hi, the
    low half 0). With AVX512-BF16 one rounding instruction gives both terms (hi: the truncated f32 is exact in
    bf16; lo: exact for f16 values), the same bits as _terms."""
    x, tf = _f16_x16(builder, src)
    t = builder.bitcast(tf, _vec(_I32, _W))
    if HAS_CVT_BF16:
        r = _cvt2_bf16(builder, tf, builder.fsub(x, tf))
        return _half(builder, r, 0), _half(builder, r, 1), t
    hi, lo = _terms(builder, x, _W)
    return hi, lo, t


def _word(builder, t, lo):
    """The word (lo, hi) of a value from its truncated f32 bits and its lo term."""
    return builder.or_(t, builder.zext(lo, _vec(_I32, _W)))


def _row_words_codegen(context, builder, signature, args):
    """An f16 cache row (dw values at src) -> its hi/lo terms (uint16 at kh, kl) and, from value v_off on, its
    blocked value words at w. dw and v_off multiples of 16."""
    kh, kl, w, src, dw, v_off = args

    def step(i, with_w):
        o = builder.mul(i, ir.Constant(_I64, 2))
        hi, lo, t = _f16_terms(builder, builder.add(src, o))
        _store_at(builder, hi, builder.add(kh, o))
        _store_at(builder, lo, builder.add(kl, o))
        if with_w:
            _store_at(builder, _word(builder, t, lo), _word_at(builder, w, builder.sub(i, v_off)))

    n0 = builder.udiv(v_off, ir.Constant(_I64, _W))
    with cgutils.for_range(builder, n0) as loop:
        step(builder.mul(loop.index, ir.Constant(_I64, _W)), False)
    with cgutils.for_range(builder, builder.sub(builder.udiv(dw, ir.Constant(_I64, _W)), n0)) as loop:
        step(builder.mul(builder.add(n0, loop.index), ir.Constant(_I64, _W)), True)
    return context.get_dummy_value()


# f16_row_words(kh, kl, w, src, dw, v_off): an f16 row's hi/lo terms for the score tiles and, from v_off on, its
# blocked value words (dw and v_off multiples of 16)
f16_row_words = intrinsic(_int_typer(6, _row_words_codegen))


def _store_at(builder, v, base, off=0):
    builder.store(v, builder.inttoptr(builder.add(base, ir.Constant(_I64, off)), v.type.as_pointer()), align=2)


def _f16_x32(builder, src):
    """32 f16 at src -> two f32 x 16 and their truncations to bf16 precision (exact in f32)."""
    (x0, t0), (x1, t1) = (_f16_x16(builder, builder.add(src, ir.Constant(_I64, 32 * h))) for h in range(2))
    return (x0, x1), (t0, t1)


def _terms32(builder, hp, lp, src):
    """32 f16 at src -> hi terms (32 uint16 at hp) and lo terms (at lp), one rounding instruction each
    (AVX512-BF16 targets); returns the truncations and the lo terms."""
    (x0, x1), (t0, t1) = _f16_x32(builder, src)
    _store_at(builder, _cvt2_bf16(builder, t0, t1), hp)
    lo = _cvt2_bf16(builder, builder.fsub(x0, t0), builder.fsub(x1, t1))
    _store_at(builder, lo, lp)
    return (t0, t1), lo


def _row_terms32_codegen(context, builder, signature, args):
    """32 f16 at src -> their hi terms (32 uint16 at hp) and lo terms (at lp)."""
    _terms32(builder, *args)
    return context.get_dummy_value()


def _row_words32_codegen(context, builder, signature, args):
    """32 f16 at src -> their hi terms (at hp), lo terms (at lp) and value words (values 0..15 at w, 16..31 at
    w + WBLOCK)."""
    hp, lp, w, src = args
    ts, lo = _terms32(builder, hp, lp, src)
    for h, t in enumerate(ts):
        _store_at(builder, _word(builder, builder.bitcast(t, _vec(_I32, _W)), _half(builder, lo, h)), w, WBLOCK * h)
    return context.get_dummy_value()


# f16_row_terms32(hp, lp, src): the bf16 hi/lo terms of 32 f16 values (AVX512-BF16 targets only)
f16_row_terms32 = intrinsic(_int_typer(3, _row_terms32_codegen))
# f16_row_words32(hp, lp, w, src): the same and the 32 values' words (two blocks of blocked words from w;
# AVX512-BF16 targets only)
f16_row_words32 = intrinsic(_int_typer(4, _row_words32_codegen))


def _bf16_row32_codegen(context, builder, signature, args):
    """32 bf16 at src -> their hi terms (the values, 32 uint16 at hp; their lo terms are zero) and, when w != 0,
    their value words (0, v) (values 0..15 at w, 16..31 at w + WBLOCK)."""
    hp, w, src = args
    v = builder.load(builder.inttoptr(src, _vec(_I16, 2 * _W).as_pointer()), align=2)
    _store_at(builder, v, hp)
    with builder.if_then(builder.icmp_unsigned("!=", w, ir.Constant(_I64, 0))):
        for h in range(2):
            x = builder.shl(builder.zext(_half(builder, v, h), _vec(_I32, _W)), _c(builder, 16, _I32, _W))
            _store_at(builder, x, w, WBLOCK * h)
    return context.get_dummy_value()


# bf16_row32(hp, w, src): f16_row_terms32 / f16_row_words32 (w != 0) for bf16 values (no lo terms)
bf16_row32 = intrinsic(_int_typer(3, _bf16_row32_codegen))


def _transpose16(builder, rows):
    """16 vectors <16 x i32> (row r, lane c) -> the 16 columns (4 stages of sub-block swaps)."""
    r = list(rows)
    for b in (8, 4, 2, 1):
        lo = ir.Constant(_vec(_I32, _W), [c if c & b == 0 else _W + c - b for c in range(_W)])
        hi = ir.Constant(_vec(_I32, _W), [c + b if c & b == 0 else _W + c for c in range(_W)])
        for i in range(_W):
            if i & b == 0:
                r[i], r[i + b] = builder.shuffle_vector(r[i], r[i + b], lo), builder.shuffle_vector(r[i], r[i + b], hi)
    return r


def _p_dup_codegen(context, builder, signature, args):
    """P^T (32 cells x 16 rows f32, cell j at src + j * ss) -> four A tiles at dst (1 KiB each: P hi of cells
    0..15, P lo of cells 0..15, P hi of cells 16..31, P lo of cells 16..31), row r word p = the term of
    P[r, cell] in both halves."""
    dst, src, ss = args
    for h in range(2):
        terms = ([], [])
        for p in range(_W):
            a = builder.add(src, builder.mul(ir.Constant(_I64, _W * h + p), ss))
            x = builder.load(builder.inttoptr(a, _vec(_F32, _W).as_pointer()), align=4)
            for acc, t in zip(terms, _terms(builder, x, _W)):
                acc.append(builder.zext(t, _vec(_I32, _W)))
        for k, rows in enumerate(terms):
            for r, col in enumerate(_transpose16(builder, rows)):
                v = builder.or_(col, builder.shl(col, _c(builder, 16, _I32, _W)))
                _store_at(builder, v, dst, (2 * h + k) * TILE_BYTES + 64 * r)
    return context.get_dummy_value()


# p_dup(dst, src, ss): the A tiles of the value products from a group's probabilities P^T (row stride ss)
p_dup = intrinsic(_int_typer(3, _p_dup_codegen))


# ---------------------------------------------------------------------------- the work item

def _softmax_t_codegen(context, builder, signature, args):
    """softmax_t's vector code: 16 rows a vector."""
    stp, sts, R, nc, maskp, nt, n_head, scale, mp, lp, accp, accs, dv = args
    vt = _vec(_F32, _W)
    fl = dict(flags=("contract",))

    def i64(v):
        return ir.Constant(_I64, v)

    def ld(a):
        return builder.load(builder.inttoptr(a, vt.as_pointer()), align=4)

    def st(v, a):
        builder.store(v, builder.inttoptr(a, vt.as_pointer()), align=4)

    def splat(x):
        return _bcast(builder, x, _W)

    def const(x):
        return ir.Constant(vt, [x] * _W)

    def at(base, j, stride):
        return builder.add(base, builder.mul(j, stride))

    sc = splat(scale)
    one_head = builder.icmp_signed("==", n_head, i64(1))
    with cgutils.for_range(builder, builder.udiv(R, i64(_W))) as rc:
        off = builder.mul(rc.index, i64(_W * 4))
        base = builder.add(stp, off)
        mxp = cgutils.alloca_once_value(builder, const(float("-inf")))
        tok = builder.udiv(builder.mul(rc.index, i64(_W)), n_head)  # the token of the vector's first row
        with cgutils.for_range(builder, nc) as lj:
            a = at(base, lj.index, sts)
            mrow = builder.add(at(maskp, builder.mul(lj.index, nt), i64(4)), builder.mul(tok, i64(4)))
            with builder.if_else(one_head) as (rows_are_tokens, rows_are_heads):
                with rows_are_tokens:
                    mk_t = ld(mrow)
                    bb_t = builder.block
                with rows_are_heads:
                    mk_h = splat(builder.load(builder.inttoptr(mrow, _F32.as_pointer()), align=4))
                    bb_h = builder.block
            mk = builder.phi(vt)
            mk.add_incoming(mk_t, bb_t)
            mk.add_incoming(mk_h, bb_h)
            v = builder.fadd(builder.fmul(ld(a), sc, **fl), mk, **fl)
            st(v, a)
            mx = builder.load(mxp)
            builder.store(builder.select(builder.fcmp_ordered(">", v, mx), v, mx), mxp)
        with cgutils.for_range(builder, builder.sub(i64(TILE), nc)) as lj:
            st(const(0.0), at(base, builder.add(nc, lj.index), sts))
        mx = builder.load(mxp)
        vis = builder.fcmp_ordered(">", mx, const(float("-inf")))  # rows that see a cell of the tile
        m_old = ld(builder.add(mp, off))
        m_new = builder.select(builder.fcmp_ordered(">", mx, m_old), mx, m_old)
        al = builder.select(vis, exp_neg_ir(builder, builder.fsub(m_old, m_new)), const(1.0))
        m_sub = builder.select(vis, m_new, const(float("inf")))  # a row that sees none: probabilities 0
        lsp = cgutils.alloca_once_value(builder, const(0.0))
        with cgutils.for_range(builder, nc) as lj:
            a = at(base, lj.index, sts)
            pr = exp_neg_ir(builder, builder.fsub(ld(a), m_sub))
            st(pr, a)
            builder.store(builder.fadd(builder.load(lsp), pr), lsp)
        la = builder.add(lp, off)
        st(builder.fadd(builder.fmul(ld(la), al, **fl), builder.load(lsp), **fl), la)
        st(builder.select(vis, m_new, m_old), builder.add(mp, off))
        # rows whose maximum moved: their sums so far in the new scale; not a row's first visible cell (its sums
        # are still start_rows' zeros)
        for lane in range(_W):
            a_r = builder.extract_element(al, ir.Constant(_I32, lane))
            m_r = builder.extract_element(m_old, ir.Constant(_I32, lane))
            moved = builder.and_(builder.fcmp_unordered("!=", a_r, ir.Constant(_F32, 1.0)),
                                 builder.fcmp_ordered(">", m_r, ir.Constant(_F32, float("-inf"))))
            with builder.if_then(moved, likely=False):
                row = at(accp, builder.add(builder.mul(rc.index, i64(_W)), i64(lane)), accs)
                sa = splat(a_r)
                with cgutils.for_range(builder, builder.udiv(dv, i64(_W))) as li:
                    a = at(row, li.index, i64(_W * 4))
                    st(builder.fmul(ld(a), sa), a)
    return context.get_dummy_value()


@intrinsic
def softmax_t(typingctx, stp, sts, R, nc, maskp, nt, n_head, scale, mp, lp, accp, accs, dv):
    """The online softmax of an item's transposed scores, 16 rows a vector. S^T [TILE, R] f32 at stp (cell j's
    R scores at stp + j * sts) becomes exp(score * scale + mask - m_new): zero for cells >= nc and in a row
    that sees no cell of the tile; m, l (f32 [R] at mp, lp) and acc [R, dv] (f32 at accp, row stride accs
    bytes) updated as online_update leaves them. The mask: tile_mask_t's [TILE, nt] f32 at maskp. R and dv
    multiples of 16, rows r = t * n_head + h with n_head a multiple of 16 or 1 (the AMX items' calls)."""
    ints = (stp, sts, R, nc, maskp, nt, n_head, mp, lp, accp, accs, dv)
    if not all(isinstance(a, types.Integer) for a in ints) or not isinstance(scale, types.Float):
        return None
    i = types.int64
    return types.none(i, i, i, i, i, i, i, types.float32, i, i, i, i, i), _softmax_t_codegen


@njit(cache=True, nogil=True, inline="always")
def prefetch_rows_part(kp, krs, kv_idx, c, n, part, n_parts, row_bytes):
    """Share `part` (of n_parts) of the rows of cells kv_idx[c:c + n] (cache rows of row_bytes at kp + cell *
    krs) on their way to L2."""
    for j in range(part * n // n_parts, (part + 1) * n // n_parts):
        ra = kp + np.int64(kv_idx[c + j]) * krs
        for o in range(0, row_bytes, 64):
            prefetch(ra + o)


@njit(cache=True, nogil=True, fastmath=FASTMATH)
def pack_q(q):
    """The query rows (row r = t * n_head + h of q [n_tok, n_head, dk] f32) as the B tiles of the scores:
    [R / 16 groups, dk / 32 blocks, 2 terms (hi, lo), 16 pairs, 16 rows x 2] uint16 (VNNI)."""
    n_tok, n_head, dk = q.shape
    R = n_tok * n_head
    qf = q.reshape(R, dk)
    qh = np.empty((R, dk), np.uint16)
    ql = np.empty((R, dk), np.uint16)
    split_bf16(np.int64(qh.ctypes.data), np.int64(ql.ctypes.data), np.int64(qf.ctypes.data), np.int64(R * dk))
    return _vnni_q(qh, ql)


@njit(cache=True, nogil=True)
def _vnni_q(qh, ql):
    """Rows' hi and lo terms (qh, ql [R, dk] uint16) -> pack_q's B tiles."""
    R, dk = qh.shape
    nkb = dk // KB
    qp = empty_lined(R * nkb * 2 * 2 * GROUP, np.uint16).reshape((R // GROUP, nkb, 2, GROUP, 2 * GROUP))
    q32 = qp.view(np.uint32)      # [groups, nkb, 2, pair p, row c]: a pair of values of one row per word
    h32 = qh.view(np.uint32)      # [R, dk / 2]
    l32 = ql.view(np.uint32)
    for g in range(R // GROUP):
        for kb in range(nkb):
            for p in range(KB // 2):
                for c in range(GROUP):
                    q32[g, kb, 0, p, c] = h32[g * GROUP + c, kb * KB // 2 + p]
                    q32[g, kb, 1, p, c] = l32[g * GROUP + c, kb * KB // 2 + p]
    return qp


@njit(cache=True, nogil=True, fastmath=FASTMATH)
def mla_item_amx(acc, m, l, qp, n_head, k, kind, v_off, cell_pos, cell_seq, kv_idx, q_pos, q_seq, scale, t0, t1, c0,
                 c1, g0, cfgp):
    """attention_mla._mla_item on AMX-BF16 tiles: the same arguments but the queries as pack_q packed them (qp;
    the item's rows are its 16-row groups g0, g0 + 1, ...) and their head count; cfgp: the address of
    config_bytes().

    The scores take qp's dk values of a row, the values dv = acc.shape[1] values from v_off (inside or after
    the score part). Needs the item's rows a multiple of 16 and dk, dv multiples of 32 (amx_fits for
    FlashMLA's calls); kind f16/bf16/q8_0 (values exact in hi + lo, or within 2^-16) or f32 (16 significand
    bits: the decompressed rows of attention_mla.flash_attn_heads_amx)."""
    dk = qp.shape[1] * KB
    dv = acc.shape[1]
    dw = max(dk, v_off + dv)                    # values converted per row
    nt = t1 - t0
    R = nt * n_head
    G = R // GROUP
    nkb = dk // KB
    # a decoded token over f16 or bf16 rows whose values lie in its score blocks: K converted block by block
    # into L1, the value words on the way (module docstring); the same terms, words, tiles and bits as whole rows
    two_pass = (HAS_CVT_BF16 and (kind == KIND_F16 or kind == KIND_BF16) and G == 1 and v_off % KB == 0
                and v_off + dv <= dk)
    kw = 0 if two_pass else dw
    kh = zeros_lined(TILE * kw, np.uint16).reshape((TILE, kw))  # the tile's rows, hi / lo terms
    kl = zeros_lined(TILE * kw, np.uint16).reshape((TILE, kw))
    kf = np.empty(dw, np.float32)
    vw = zeros_lined(2 * TILE * dv, np.uint16)  # the tile's value words, blocked (WBLOCK bytes per 16 values)
    st = empty_lined(TILE * R, np.float32).reshape((TILE, R))  # S^T, then P^T
    pd = empty_lined(4 * TILE_BYTES // 2, np.uint16)  # one group's P terms as the value products' A tiles (p_dup)
    mask_t = np.empty((TILE, nt), dtype=np.float32)
    cvis, cpos, cseq = cell_scratch(TILE)  # cells visible to some query of the item; positions, sequences
    qseq = query_seqs(q_seq, t0, t1)
    start_rows(acc, m, l)
    khp, klp = np.int64(kh.ctypes.data), np.int64(kl.ctypes.data)
    ks = np.int64(dw * 2)
    qpp = np.int64(qp.ctypes.data)
    stp, sts = np.int64(st.ctypes.data), np.int64(R * 4)
    vwp, pdp = np.int64(vw.ctypes.data), np.int64(pd.ctypes.data)
    accp, accs = np.int64(acc.ctypes.data), np.int64(acc.strides[0])
    mkp, mp, lp = np.int64(mask_t.ctypes.data), np.int64(m.ctypes.data), np.int64(l.ctypes.data)
    kp, krs = np.int64(k.ctypes.data), np.int64(k.strides[0])
    row_fused = kind == KIND_F16 and v_off % 16 == 0 and dw % 16 == 0
    kb_buf = zeros_lined(4 * TILE_BYTES // 2, np.uint16)  # two_pass: [hi, lo] x 32 rows x 32 values
    kbp = np.int64(kb_buf.ctypes.data)
    rows = np.empty(TILE, np.int64)
    row_bytes = np.int64(k.shape[1]) * np.int64(k.itemsize)
    n_parts = nkb + dv // (2 * GROUP)  # a tile's score steps and value steps
    tile_config(cfgp)
    for cb in range(c0, c1, TILE):
        nc = min(TILE, c1 - cb)
        if not tile_mask_t(mask_t, cvis, cpos, cseq, kv_idx, cb, nc, cell_pos, cell_seq, q_pos, qseq, t0, 0):
            continue
        if two_pass:  # the tile's rows, -1 for those no row sees (left out of the conversions)
            for j in range(TILE):
                rows[j] = kp + np.int64(kv_idx[cb + j]) * krs if j < nc and cvis[j] else np.int64(-1)
        else:
            for j in range(nc):  # one conversion per cell serves every row's K and V
                if not cvis[j]:
                    continue
                a = np.int64(j) * ks
                src = kp + np.int64(kv_idx[cb + j]) * krs
                if row_fused:
                    f16_row_words(khp + a, klp + a, vwp + j * 64, src, np.int64(dw), np.int64(v_off))
                    continue
                if kind != KIND_F32:
                    decode_row(kf, k[kv_idx[cb + j]], np.int64(0), dw, kind, np.int64(0))
                    src = np.int64(kf.ctypes.data)
                split_bf16(khp + a, klp + a, src, np.int64(dw))
                words_u16(vwp + j * 64, klp + a + v_off * 2, khp + a + v_off * 2, np.int64(dv))
        # the rows PF_TILES tiles ahead, a few per score step and per value step (memory stays busy while the
        # tile unit works), past the item's end too: the next split's first tiles, which this thread likely reads
        pf_c = cb + PF_TILES * TILE
        n_pf = max(0, min(TILE, kv_idx.shape[0] - pf_c))
        for g in range(G):
            zero2()
            for kb in range(nkb):
                if g == 0:
                    prefetch_rows_part(kp, krs, kv_idx, pf_c, n_pf, kb, n_parts, row_bytes)
                qb = qpp + ((g0 + g) * nkb + kb) * 2 * TILE_BYTES
                o = np.int64(kb * KB * 2)
                if two_pass:  # this block's 32 values of each row, converted into L1-sized tiles
                    vb = kb * KB - v_off
                    wb = vwp + (vb // 16) * WBLOCK if 0 <= vb < dv else np.int64(0)  # 0: a score-only block
                    for j in range(TILE):
                        if rows[j] < 0:
                            continue
                        wj = wb + j * 64 if wb != 0 else wb
                        if kind == KIND_BF16:
                            bf16_row32(kbp + j * 64, wj, rows[j] + o)
                        elif wb != 0:
                            f16_row_words32(kbp + j * 64, kbp + TILE_BYTES * 2 + j * 64, wj, rows[j] + o)
                        else:
                            f16_row_terms32(kbp + j * 64, kbp + TILE_BYTES * 2 + j * 64, rows[j] + o)
                    if kind == KIND_BF16:
                        qk2_step(kbp, 64, qb, qb + TILE_BYTES, kbp + TILE_BYTES)
                    else:
                        qk_step(kbp, kbp + 2 * TILE_BYTES, 64, qb, qb + TILE_BYTES, kbp + TILE_BYTES,
                                kbp + 3 * TILE_BYTES)
                else:
                    qk_step(khp + o, klp + o, ks, qb, qb + TILE_BYTES, khp + 16 * ks + o, klp + 16 * ks + o)
            store2(stp + g * GROUP * 4, sts, stp + 16 * sts + g * GROUP * 4)
        softmax_t(stp, sts, R, nc, mkp, nt, n_head, scale, mp, lp, accp, accs, dv)
        for g in range(G):
            p_dup(pdp, stp + g * GROUP * 4, sts)
            load_p4(pdp, pdp + 2 * TILE_BYTES, pdp + TILE_BYTES, pdp + 3 * TILE_BYTES)
            ag = accp + g * GROUP * accs
            for c in range(0, dv // GROUP, 2):
                if g == 0:
                    prefetch_rows_part(kp, krs, kv_idx, pf_c, n_pf, nkb + c // 2, n_parts, row_bytes)
                pv_w2(ag + c * GROUP * 4, accs, vwp + c * WBLOCK)
    tile_release()
    return kh.size + kl.size + vw.size + pd.size + st.size + kb_buf.size
