"""AMX-INT8 tiles for Q4_K/Q5_K/Q6_K weights x Q8_K activations (amx_matmul.matmul_q_amx runs them; the tile unit's
setup and the shared codegen are amx's).

The K-quants multiply the Q8_K rows their dot kernels (and llama.cpp) multiply: the A tile is 32 of a
block's 256 int8 values. Q4_K/Q5_K weights are 32-value sub-blocks of value d*sc*q - dmin*m (q unsigned, sc
and m 6-bit), packed as q; Q6_K's d*sc*(q - 32) has a scale per 16 values: each 32-value block is two
products, each weight tile holding one half (the other zero), q - 32 signed. A super-block's products enter
exact int32 sums with their integer scales (S = sum sc*product, and for Q4_K/Q5_K M = sum m*block sum),
folded into the f32 accumulators once per super-block as acc = fma(d*dx, S, acc), acc = fma(-dmin*dx, M,
acc): the integers and operations of quants_k's row dots, so prompt and decode give the same bits. From
CHAIN_MIN_TOKENS tokens Q4_K/Q5_K take chained full-width products instead (same sums, same bits).

Leaf module (numba, llvmlite, and sibling kernel modules).
"""

import numpy as np
from llvmlite import ir
from numba import njit
from numba.core import cgutils
from numba.extending import intrinsic

from .amx import BLOCK_TILE, QK, TM, TN, _asm, _store_results, _store_tile, _store_words, _tile_buffers, _transpose_rows
from .dots_q8_0 import _fma
from .ir_k import BLOCK_BYTES_Q4_K, BLOCK_BYTES_Q5_K, BLOCK_BYTES_Q6_K, BLOCK_BYTES_Q8_K, _dpwssd512, _k4_scales_mins
from .simd import _F32, _I8, _I16, _I32, _I64, _addr, _bcast, _f16_scale, _int_typer, _load, _mask, _splat, _vec
from . import codes

KIND_Q4_K, KIND_Q5_K, KIND_Q6_K = codes.Q4_K, codes.Q5_K, codes.Q6_K
QK_K = 256       # values of a K-quant super-block: 8 sub-blocks of QK


# The K-quants' words per 16 weight rows (pack_k) and per activation row (k_aux_words), each super-block:
# K_SC [products, 16] i32: the integer scale of each product's values, row j in lane j;
# K_DM [2, 16] f32: d and -dmin of each row; K_MP [4, 16] i32: each row's mins as i16 pairs (m[2i], m[2i+1]);
# K_AUX_WORDS per activation row: dx (f32 bits), then its 4 pairs of 32-value block sums (i16, i16), 3 zeros.
K_AUX_WORDS = 8
K_AUX_BYTES = 4 * K_AUX_WORDS
K_DM_WORDS = 2 * TN
K_MP_WORDS = 4 * TN


def _fold_k(builder, s, sums, accs, dmp, mpp, cp, cs):
    """Super-block s's exact sums S (sums[i]: token i's <16 x i32>, row lanes) into the f32 accumulators as the
    row dots fold them: acc = fma(d*dx, S, acc), then (mpp not None: Q4_K/Q5_K) acc = fma(-dmin*dx, M, acc) with
    M = sum of min * block sum, by vpdpwssd on the K_MP pairs and the activation's k_aux_words pairs."""
    v16f, v16i, v32s = _vec(_F32, TN), _vec(_I32, TN), _vec(_I16, 2 * TN)
    dm = builder.add(dmp, builder.mul(s, ir.Constant(_I64, 4 * K_DM_WORDS)))
    dv = _load(builder, dm, v16f)
    if mpp is not None:
        ndv = _load(builder, _addr(builder, dm, 4 * TN), v16f)
        mp = builder.add(mpp, builder.mul(s, ir.Constant(_I64, 4 * K_MP_WORDS)))
        mins = [builder.bitcast(_load(builder, _addr(builder, mp, 4 * TN * i), v16i), v32s) for i in range(4)]
    co = builder.add(cp, builder.mul(s, ir.Constant(_I64, K_AUX_BYTES)))
    for i in range(TM):
        ci = builder.add(co, builder.mul(cs, ir.Constant(_I64, i)))
        dxv = _bcast(builder, _load(builder, ci, _F32), TN)
        acc = _fma(builder, builder.fmul(dv, dxv), builder.sitofp(sums[i], v16f), builder.load(accs[i]))
        if mpp is not None:
            msum = ir.Constant(v16i, [0] * TN)
            for j in range(4):
                pair = _bcast(builder, _load(builder, _addr(builder, ci, 4 + 4 * j), _I32), TN)
                msum = _dpwssd512(builder, msum, mins[j], builder.bitcast(pair, v32s))
            acc = _fma(builder, builder.fmul(ndv, dxv), builder.sitofp(msum, v16f), acc)
        builder.store(acc, accs[i])


def _make_tile_block_k(q6):
    """The codegen of 16 tokens x 16 rows of Q4_K/Q5_K (q6: Q6_K) weights over ns super-blocks; see
    tile_block_amx_k. Each super-block's tile products enter exact int32 sums, S = sum of scale * product
    (vpmulld: the scales are row lanes) and for Q4_K/Q5_K M = sum of min * block sum (vpdpwssd on the i16
    pairs), folded into the f32 accumulators once: acc = fma(d*dx, S, acc), then acc = fma(-dmin*dx, M, acc),
    the row dot's (quants_k) integers and operations, so both give the same bits. Products are
    software-pipelined over the two tile sets as in tile_block_amx, across super-blocks too."""
    n_p = 2 * (QK_K // QK) if q6 else QK_K // QK  # products per super-block (Q6_K: one per 16-value half)
    shift = 1 if q6 else 0

    def codegen(context, builder, signature, args):
        wp, scp, dmp, mpp, xp, xs, cp, cs, ns, dp, ds, nt = args
        v16f, v16i = _vec(_F32, TN), _vec(_I32, TN)
        cbs, products = _tile_buffers(builder)
        accs = [cgutils.alloca_once_value(builder, ir.Constant(v16f, [0.0] * TN)) for _ in range(TM)]
        sums = [cgutils.alloca_once_value(builder, ir.Constant(v16i, [0] * TN)) for _ in range(TM)]

        def issue(b, k):  # product b: 32 values of Q8_K block (b >> shift)/8 from value 32*((b >> shift) % 8)
            blk = builder.lshr(b, ir.Constant(_I64, shift))
            xo = builder.add(builder.mul(builder.lshr(blk, ir.Constant(_I64, 3)), ir.Constant(_I64, BLOCK_BYTES_Q8_K)),
                             builder.add(builder.mul(builder.and_(blk, ir.Constant(_I64, 7)), ir.Constant(_I64, QK)),
                                         ir.Constant(_I64, 4)))
            wb = builder.add(wp, builder.mul(b, ir.Constant(_I64, BLOCK_TILE)))
            builder.call(products[k], [builder.add(xp, xo), xs, wb, cbs[k]])

        def consume(b, k, first):
            sv = _load(builder, builder.add(scp, builder.mul(b, ir.Constant(_I64, 4 * TN))), v16i)
            for i in range(TM):
                t = builder.mul(_load(builder, builder.add(cbs[k], ir.Constant(_I64, 4 * TN * i)), v16i), sv)
                builder.store(t if first else builder.add(builder.load(sums[i]), t), sums[i])

        def fold(s):
            _fold_k(builder, s, [builder.load(x) for x in sums], accs, dmp, None if q6 else mpp, cp, cs)

        zero, one = ir.Constant(_I64, 0), ir.Constant(_I64, 1)
        with cgutils.if_likely(builder, builder.icmp_signed(">", ns, zero)):
            issue(zero, 0)
        with cgutils.for_range(builder, ns) as loop:
            s = loop.index
            b0 = builder.mul(s, ir.Constant(_I64, n_p))
            for k in range(n_p):  # n_p is even: product k of every super-block is on set k % 2
                if k + 1 < n_p:
                    issue(builder.add(b0, ir.Constant(_I64, k + 1)), (k + 1) % 2)
                else:
                    with cgutils.if_likely(builder, builder.icmp_signed("<", builder.add(s, one), ns)):
                        issue(builder.add(b0, ir.Constant(_I64, n_p)), 0)
                consume(builder.add(b0, ir.Constant(_I64, k)), k % 2, k == 0)
            fold(s)
        _store_results(builder, accs, dp, ds, nt)
        return context.get_dummy_value()

    return _int_typer(12, codegen)


# Q4_K/Q5_K weights as two u8 tiles per 64 values: q*lo and q*hi, the sub-block scale sc = lo + 2^SPLIT*hi
# split so that both products fit a byte (Q4_K: 15*15, 15*3; Q5_K: 31*7, 31*7); the tile products of a whole
# super-block accumulate in two i32 tiles (tdpbsud: signed activations, unsigned weights) and S = C_lo +
# 2^SPLIT*C_hi is the row dot's sum of sc * block product, exactly.
SPLIT = {KIND_Q4_K: 4, KIND_Q5_K: 3}
# From this many tokens a matmul takes the chained products (their packing costs more than the per-sub-block
# tiles' and is repaid from ~32 tokens; both give the row dots' bits).
CHAIN_MIN_TOKENS = 32
CHUNK = 64                       # values of one chained product
CHUNK_TILE = TN * CHUNK          # bytes of one packed 64-value weight tile (16 VNNI rows of 64 bytes)
SB_TILES = 2 * (QK_K // CHUNK) * CHUNK_TILE  # packed bytes of a super-block: [chunk][lo, hi]


def _chain_asm(builder):
    """asm(xb, xs, wb, cb): one super-block's products for 16 tokens x 16 rows on the configuration at 64:
    C_lo (tmm0) and C_hi (tmm1) zeroed, then per 64-value chunk c the activation tile (16 rows from xb + 64c,
    stride xs) and the packed lo/hi weight tiles (wb + c*2*CHUNK_TILE), on alternating sets (tmm2-4, tmm5-7);
    C_lo stored at cb, C_hi at cb + 1024."""
    lines = ["mov $$64, %r11", "tilezero %tmm0", "tilezero %tmm1"]
    for c in range(QK_K // CHUNK):
        a, lo, hi = (2, 3, 4) if c % 2 == 0 else (5, 6, 7)
        lines += [f"tileloadd {CHUNK * c}($0,$1,1), %tmm{a}",
                  f"tileloadd {2 * CHUNK_TILE * c}($2,%r11,1), %tmm{lo}",
                  f"tileloadd {2 * CHUNK_TILE * c + CHUNK_TILE}($2,%r11,1), %tmm{hi}",
                  f"tdpbsud %tmm{lo}, %tmm{a}, %tmm0",
                  f"tdpbsud %tmm{hi}, %tmm{a}, %tmm1"]
    lines += ["tilestored %tmm0, ($3,%r11,1)", f"tilestored %tmm1, {4 * TM * TN}($3,%r11,1)"]
    return _asm(builder, "\n\t".join(lines), 4, ",~{r11}")


def _make_tile_chain_k(kind):
    """The codegen of 16 tokens x 16 rows of Q4_K/Q5_K weights over ns super-blocks on the chained products
    (_chain_asm, pack_chain_k): per super-block S = C_lo + 2^SPLIT*C_hi, M by vpdpwssd on the mins, folded as
    tile_block_amx_k does (the row dots' bits). Super-block s+1's products are issued before s is folded,
    into the other of two result buffers."""
    split = SPLIT[kind]

    def codegen(context, builder, signature, args):
        wp, dmp, mpp, xp, xs, cp, cs, ns, dp, ds, nt = args
        v16f, v16i = _vec(_F32, TN), _vec(_I32, TN)
        cbuf = cgutils.alloca_once(builder, ir.ArrayType(_I32, 4 * TM * TN))
        cbuf.align = 64
        cb0 = builder.ptrtoint(cbuf, _I64)
        chain = _chain_asm(builder)
        accs = [cgutils.alloca_once_value(builder, ir.Constant(v16f, [0.0] * TN)) for _ in range(TM)]

        def cb(s):  # result buffer of super-block s: 2 KB, alternating
            return builder.add(cb0, builder.mul(builder.and_(s, ir.Constant(_I64, 1)), ir.Constant(_I64, 8 * TM * TN)))

        def issue(s):
            xb = builder.add(xp, builder.add(builder.mul(s, ir.Constant(_I64, BLOCK_BYTES_Q8_K)), ir.Constant(_I64, 4)))
            wb = builder.add(wp, builder.mul(s, ir.Constant(_I64, SB_TILES)))
            builder.call(chain, [xb, xs, wb, cb(s)])

        def fold(s):
            c = cb(s)
            sums = [builder.add(_load(builder, _addr(builder, c, 4 * TN * i), v16i),
                                builder.shl(_load(builder, _addr(builder, c, 4 * TM * TN + 4 * TN * i), v16i),
                                            _splat(_I32, TN, split))) for i in range(TM)]
            _fold_k(builder, s, sums, accs, dmp, mpp, cp, cs)

        zero, one = ir.Constant(_I64, 0), ir.Constant(_I64, 1)
        with cgutils.if_likely(builder, builder.icmp_signed(">", ns, zero)):
            issue(zero)
        with cgutils.for_range(builder, ns) as loop:
            s = loop.index
            s1 = builder.add(s, one)
            with cgutils.if_likely(builder, builder.icmp_signed("<", s1, ns)):
                issue(s1)
            fold(s)
        _store_results(builder, accs, dp, ds, nt)
        return context.get_dummy_value()

    return _int_typer(11, codegen)


# tile_chain_q4_k / tile_chain_q5_k(wp, dmp, mpp, xp, xs, cp, cs, ns, dp, ds, nt): tile_block_amx_k on the chained
# products; wp: pack_chain_k's tiles; the tile configuration at 64 must be loaded.
tile_chain_q4_k = intrinsic(_make_tile_chain_k(KIND_Q4_K))
tile_chain_q5_k = intrinsic(_make_tile_chain_k(KIND_Q5_K))


# tile_block_amx_k / tile_block_amx_q6_k(wp, scp, dmp, mpp, xp, xs, cp, cs, ns, dp, ds, nt): dst[t, j] = the
# row dot of weight row j with Q8_K activation row t over ns super-blocks, for 16 tokens x 16 rows. wp: the
# packed tiles (pack_k); scp, dmp, mpp: K_SC, K_DM, K_MP (mpp unused for Q6_K); xp, xs: token 0's Q8_K row and
# the row stride (16 rows are read); cp, cs: its k_aux_words and their row stride; dp, ds, nt as tile_block_amx.
tile_block_amx_k = intrinsic(_make_tile_block_k(False))
tile_block_amx_q6_k = intrinsic(_make_tile_block_k(True))


def _f32_word(builder, x):
    return builder.bitcast(x, _I32)


def _make_pack_k(kind, chain=False):
    """pack_q4_k / pack_q5_k / pack_q6_k: 16 rows of ns K-quant super-blocks -> the VNNI tiles of their
    products and the words tile_block_amx_k folds them with (K_SC, K_DM, K_MP). Q4_K/Q5_K: one product per
    32-value sub-block (unsigned q), its scale the 6-bit sc; Q6_K: two per 32 values, each weight tile one
    16-value half (the other zero), signed q - 32, its scale the int8 sc of those 16 values.
    chain (Q4_K/Q5_K): the tiles of tile_chain_q4_k/q5_k instead, [super-block][chunk][lo, hi] 16 x 64 bytes
    of q*lo and q*hi (SPLIT); K_SC is not written."""
    q6 = kind == KIND_Q6_K
    bb = {KIND_Q4_K: BLOCK_BYTES_Q4_K, KIND_Q5_K: BLOCK_BYTES_Q5_K, KIND_Q6_K: BLOCK_BYTES_Q6_K}[kind]
    n_sub = QK_K // QK
    n_p = 2 * n_sub if q6 else n_sub

    def codegen(context, builder, signature, args):
        wp, ws, ns, op, scp, dmp, mpp = args
        v16i = _vec(_I32, 16)
        lo4 = _splat(_I8, 32, 0x0F)
        keep = [ir.Constant(_vec(_I8, 32), [0xFF] * 16 + [0] * 16), ir.Constant(_vec(_I8, 32), [0] * 16 + [0xFF] * 16)]
        with cgutils.for_range(builder, ns) as loop:
            s = loop.index
            p0 = builder.mul(s, ir.Constant(_I64, n_p))  # first product of super-block s
            sbs, rows, ds = [], [], []
            for j in range(TN):
                sb = builder.add(builder.add(wp, builder.mul(ws, ir.Constant(_I64, j))),
                                 builder.mul(s, ir.Constant(_I64, bb)))
                sbs.append(sb)
                if q6:  # lanes: the 16 int8 scales
                    ds.append(_f32_word(builder, _f16_scale(builder, _addr(builder, sb, 208))))
                    rows.append(builder.sext(_load(builder, _addr(builder, sb, 192), _vec(_I8, 16)), v16i))
                    continue
                # lanes: sc[0..7] (i32), the mins as i16 pairs (4 words), d, -dmin (f32 bits), 0, 0
                d, dmin = _f16_scale(builder, sb), _f16_scale(builder, _addr(builder, sb, 2))
                scm = _k4_scales_mins(builder, builder.inttoptr(_addr(builder, sb, 4), _I8.as_pointer()))
                sc8 = builder.zext(builder.shuffle_vector(scm, scm, _mask(range(8))), _vec(_I32, 8))
                mp4 = builder.bitcast(builder.shuffle_vector(scm, scm, _mask(range(8, 16))), _vec(_I32, 4))
                dd = ir.Constant(_vec(_I32, 4), [0] * 4)
                dd = builder.insert_element(dd, _f32_word(builder, d), ir.Constant(_I32, 0))
                dd = builder.insert_element(dd, _f32_word(builder, builder.fneg(dmin)), ir.Constant(_I32, 1))
                rows.append(builder.shuffle_vector(sc8, builder.shuffle_vector(mp4, dd, _mask(range(8))),
                                                   _mask(range(16))))
            cols = _transpose_rows(builder, rows)  # vector i: lane i of every row
            if not chain:
                _store_words(builder, builder.add(scp, builder.mul(p0, ir.Constant(_I64, 4 * TN))), cols[:n_p])
            dm = builder.add(dmp, builder.mul(s, ir.Constant(_I64, 4 * K_DM_WORDS)))
            if q6:
                dv = ir.Constant(v16i, [0] * TN)
                for j, w in enumerate(ds):
                    dv = builder.insert_element(dv, w, ir.Constant(_I32, j))
                _store_words(builder, dm, [dv])
            else:
                _store_words(builder, dm, cols[12:14])
                _store_words(builder, builder.add(mpp, builder.mul(s, ir.Constant(_I64, 4 * K_MP_WORDS))), cols[8:12])
            for i in range(n_sub):
                qs = []
                for j in range(TN):
                    if q6:  # values 32i..: ql half i//4, low/high nibbles, qh bits 2*(i%4)
                        h, q4 = i // 4, i % 4
                        ql = _load(builder, _addr(builder, sbs[j], 64 * h + 32 * (q4 & 1)), _vec(_I8, 32))
                        qh = _load(builder, _addr(builder, sbs[j], 128 + 32 * h), _vec(_I8, 32))
                        lo = builder.lshr(ql, _splat(_I8, 32, 4)) if q4 >= 2 else builder.and_(ql, lo4)
                        hi = builder.and_(builder.lshr(qh, _splat(_I8, 32, 2 * q4)), _splat(_I8, 32, 3))
                        q = builder.or_(lo, builder.shl(hi, _splat(_I8, 32, 4)))
                        qs.append(builder.sub(q, _splat(_I8, 32, 32)))
                        continue
                    high_bits = kind == KIND_Q5_K
                    qo = (48 if high_bits else 16) + 32 * (i // 2)
                    raw = _load(builder, _addr(builder, sbs[j], qo), _vec(_I8, 32))
                    q = builder.and_(builder.lshr(raw, _splat(_I8, 32, 4)) if i % 2 else raw, lo4)
                    if high_bits:  # bit i of qh[l] is bit 4 of value l
                        qh = _load(builder, _addr(builder, sbs[j], 16), _vec(_I8, 32))
                        hb = builder.and_(builder.lshr(qh, _splat(_I8, 32, i)), _splat(_I8, 32, 1))
                        q = builder.or_(q, builder.shl(hb, _splat(_I8, 32, 4)))
                    qs.append(q)
                if chain:  # sub-block i: half i % 2 of chunk i // 2, q*lo and q*hi
                    # q <= 31 and a piece <= 15 with q*piece <= 225: one 16-bit multiply of a dword's byte pairs
                    # by the piece in both halves gives both bytes' products, no carry between them
                    dws = _transpose_rows(builder, [builder.bitcast(q, _vec(_I32, QK // 4)) for q in qs])
                    mask = _splat(_I32, TN, (1 << SPLIT[kind]) - 1)
                    for part, pc in enumerate((builder.and_(cols[i], mask),
                                               builder.lshr(cols[i], _splat(_I32, TN, SPLIT[kind])))):
                        pv = builder.bitcast(builder.or_(pc, builder.shl(pc, _splat(_I32, TN, 16))), _vec(_I16, 2 * TN))
                        off = builder.add(builder.mul(s, ir.Constant(_I64, SB_TILES)),
                                          ir.Constant(_I64, (i // 2) * 2 * CHUNK_TILE + part * CHUNK_TILE
                                                      + (i % 2) * (CHUNK_TILE // 2)))
                        prods = [builder.bitcast(builder.mul(builder.bitcast(v, pv.type), pv), v.type) for v in dws]
                        _store_words(builder, builder.add(op, off), prods)
                elif q6:
                    for half in range(2):
                        b = builder.add(p0, ir.Constant(_I64, 2 * i + half))
                        _store_tile(builder, builder.add(op, builder.mul(b, ir.Constant(_I64, BLOCK_TILE))),
                                    [builder.and_(q, keep[half]) for q in qs])
                else:
                    b = builder.add(p0, ir.Constant(_I64, i))
                    _store_tile(builder, builder.add(op, builder.mul(b, ir.Constant(_I64, BLOCK_TILE))), qs)
        return context.get_dummy_value()

    return _int_typer(7, codegen)


# pack_q4_k/pack_q5_k/pack_q6_k(wp, ws, ns, op, scp, dmp, mpp): 16 weight rows (wp + j*ws) of ns super-blocks
# -> op [products, 8, 64] i8 (VNNI tiles), scp K_SC, dmp K_DM, mpp K_MP (not written for Q6_K), all 64-byte aligned.
pack_q4_k = intrinsic(_make_pack_k(KIND_Q4_K))
pack_q5_k = intrinsic(_make_pack_k(KIND_Q5_K))
pack_q6_k = intrinsic(_make_pack_k(KIND_Q6_K))
pack_chain_q4_k = intrinsic(_make_pack_k(KIND_Q4_K, chain=True))
pack_chain_q5_k = intrinsic(_make_pack_k(KIND_Q5_K, chain=True))


@njit(cache=True, nogil=True, inline="always")
def _pack_k(kind, chain, wp, ws, ns, op, scp, dmp, mpp):
    if kind == KIND_Q4_K and chain:
        pack_chain_q4_k(wp, ws, ns, op, scp, dmp, mpp)
    elif kind == KIND_Q5_K and chain:
        pack_chain_q5_k(wp, ws, ns, op, scp, dmp, mpp)
    elif kind == KIND_Q4_K:
        pack_q4_k(wp, ws, ns, op, scp, dmp, mpp)
    elif kind == KIND_Q5_K:
        pack_q5_k(wp, ws, ns, op, scp, dmp, mpp)
    else:
        pack_q6_k(wp, ws, ns, op, scp, dmp, mpp)


@njit(cache=True, nogil=True)
def k_aux_words(xc, xq):
    """tile_block_amx_k's words of Q8_K activation rows, per super-block s: word 0 = d (f32 bits), words 1..4 =
    the sums of its 32-value blocks as i16 pairs (block 2i low, 2i+1 high: |sum| <= 32*127), 5..7 zero.
    xc: [n_tok, ns, K_AUX_WORDS] int32; xq: [n_tok, ns*292] uint8 (block_q8_k)."""
    f = xc.view(np.float32)
    h = xc.view(np.int16)
    for t in range(xc.shape[0]):
        for s in range(xc.shape[1]):
            o = s * BLOCK_BYTES_Q8_K
            f[t, s, 0] = xq[t, o:o + 4].view(np.float32)[0]
            bs = xq[t, o + 4 + QK_K:o + BLOCK_BYTES_Q8_K].view(np.int16)
            for i in range(QK_K // QK):
                h[t, s, 2 + i] = bs[2 * i] + bs[2 * i + 1]
            for i in range(2 + QK_K // QK, 2 * K_AUX_WORDS):
                h[t, s, i] = 0
