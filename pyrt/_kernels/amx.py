"""AMX-INT8 tiles for prompt-sized matmuls: Q8_0/Q4_0/Q5_0 weights x Q8_0 activations and Q4_K/Q5_K/Q6_K
weights x Q8_K activations.

One tile product (tdpbssd) multiplies 16 tokens x 32 int8 activations (one Q8_0 block of 16 rows, loaded
straight from the quantized activation rows) with 32 x 16 signed weights (one block of 16 weight rows,
unpacked to q - bias in the VNNI layout once per matmul): the 16 x 16 exact integer block sums S of
dots_q8_0. They leave the tile unit through memory and enter the f32 accumulators exactly as every other
kernel adds them, acc = fma(dw*dx, S, acc) block after block, so a result has the same bits as the AVX
tiles and the one-row dots.

The K-quants multiply the Q8_K rows their dot kernels (and llama.cpp) multiply: the A tile is 32 of a
block's 256 int8 values. Q4_K/Q5_K weights are 32-value sub-blocks of value d*sc*q - dmin*m (q unsigned, sc
and m 6-bit), packed as q; Q6_K's d*sc*(q - 32) has a scale per 16 values: each 32-value block is two
products, each weight tile holding one half (the other zero), q - 32 signed. A super-block's products enter
exact int32 sums with their integer scales (S = sum sc*product, and for Q4_K/Q5_K M = sum m*block sum),
folded into the f32 accumulators once per super-block as acc = fma(d*dx, S, acc), acc = fma(-dmin*dx, M,
acc): the integers and operations of quants_k's row dots, so prompt and decode give the same bits.

The tile instructions are inline assembly (LLVM's AMX intrinsics need the x86_amx type, which llvmlite's
IR lacks); the package readies the assembler parser at import (disk_cache.ready_asm_parser). Tile registers
are live only inside one tile-block/pack call sequence of a work item, and a work item configures them
first (ldtilecfg) and releases them last (tilerelease). AMX needs the process to ask the kernel for the tile
data state (arch_prctl ARCH_REQ_XCOMP_PERM): `enable` does both and says whether AMX can run; an AMX
instruction without that permission kills the process with SIGILL, so nothing here runs before it.

Leaf module (numba, llvmlite, ctypes, and sibling kernel modules).
"""

import ctypes
import os

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic

from .config import FASTMATH, NO_SIMD
from .matmul_q8_0 import _pad_tail, _q_bias, _rows_q, keep_alive, x_aux_q8_0
from .dots_q8_0 import AUX_BYTES, AUX_WORDS, _fma, _unpack_q4_0, _unpack_q5_0, _unpack_q8_0
from .ir_k import (BLOCK_BYTES_Q4_K, BLOCK_BYTES_Q5_K, BLOCK_BYTES_Q6_K, BLOCK_BYTES_Q8_K, _dpwssd512, _k4_scales_mins,
                   is_k_quant)
from .simd import (PREFETCH_BYTES, _F32, _FEATS, _I8, _I16, _I32, _I64, _addr, _f16_scale, _int_typer, _load, _mask,
                   _splat, _vec)
from . import codes

TM = 16          # tokens of a tile (rows of the activation tile and of the result tile)
TN = 16          # weight rows of a tile (columns of the result tile)
QK = 32          # values of a block: the K of one tile product
Q8_0_BYTES = 34
BLOCK_TILE = TN * QK  # bytes of one packed weight block tile: [QK/4, TN*4] int8 (VNNI layout)

KIND_Q8_0, KIND_Q4_0, KIND_Q5_0 = codes.Q8_0, codes.Q4_0, codes.Q5_0
KIND_Q4_K, KIND_Q5_K, KIND_Q6_K = codes.Q4_K, codes.Q5_K, codes.Q6_K
QK_K = 256       # values of a K-quant super-block: 8 sub-blocks of QK

HAS_AMX_TARGET = not NO_SIMD and "amx-int8" in _FEATS and "amx-tile" in _FEATS

_ARCH_REQ_XCOMP_PERM = 0x1023
_XFEATURE_XTILEDATA = 18
_SYS_arch_prctl = 158
_enabled: bool | None = None


def enable() -> bool:
    """Whether AMX tiles can run in this process: the target has AMX-INT8, PYRT_NO_AMX is unset and the
    kernel granted the tile data state. Asks once per process."""
    global _enabled
    if _enabled is None:
        _enabled = False
        if HAS_AMX_TARGET and os.environ.get("PYRT_NO_AMX", "") in ("", "0"):
            try:
                libc = ctypes.CDLL(None, use_errno=True)
                if libc.syscall(_SYS_arch_prctl, _ARCH_REQ_XCOMP_PERM, _XFEATURE_XTILEDATA) == 0:
                    _enabled = True
            except (OSError, AttributeError):
                _enabled = False
    return _enabled


# ---------------------------------------------------------------------------- tile intrinsics

def inline_asm(fnty, text, cons, side_effect=False):
    """An inline asm callee (every kernel's inline asm is built here; the package readies LLVM's asm parser at
    import, disk_cache.ready_asm_parser)."""
    return ir.InlineAsm(fnty, text, cons, side_effect=side_effect)


def _asm(builder, text, n, clobber=""):
    fnty = ir.FunctionType(ir.VoidType(), [_I64] * n)
    cons = ",".join(["r"] * n + ["~{memory}"]) + clobber
    return inline_asm(fnty, text, cons, side_effect=True)


@intrinsic
def tile_config(typingctx, cfg):
    """ldtilecfg of the 64-byte palette-1 configuration at address cfg (config_bytes)."""
    if not isinstance(cfg, types.Integer):
        return None

    def codegen(context, builder, signature, args):
        builder.call(_asm(builder, "ldtilecfg ($0)", 1), [args[0]])
        return context.get_dummy_value()

    return types.none(types.int64), codegen


@intrinsic
def tile_release(typingctx):
    """tilerelease: the tile registers back to their init state (cheap context switches)."""

    def codegen(context, builder, signature, args):
        builder.call(_asm(builder, "tilerelease", 0), [])
        return context.get_dummy_value()

    return types.none(), codegen


def config_bytes() -> np.ndarray:
    """The tile configurations (palette 1) at 0 and 64. At 0, two sets of three tiles: tmm0/tmm3 16 rows x 64
    bytes (i32 results), tmm1/tmm4 16 x 32 (activations), tmm2/tmm5 8 x 64 (weights, VNNI); at 64 (Q4_K/Q5_K,
    _chain_asm), all eight tiles 16 x 64."""
    cfg = np.zeros(128, np.uint8)
    cfg[0] = cfg[64] = 1
    colsb = cfg[16:48].view(np.uint16)
    rows = cfg[48:64]
    for base in (0, 3):
        colsb[base], rows[base] = 4 * TN, TM
        colsb[base + 1], rows[base + 1] = QK, TM
        colsb[base + 2], rows[base + 2] = 4 * TN, QK // 4
    cfg[64 + 16:64 + 32].view(np.uint16)[:] = 4 * TN
    cfg[64 + 48:64 + 56] = TM
    return cfg


def _product_asm(builder, base):
    """asm(xb, xs, wb, cb): the block product of tile set `base` (tmm base..base+2) stored at cb."""
    c, a, w = f"%tmm{base}", f"%tmm{base + 1}", f"%tmm{base + 2}"
    t = (f"tileloadd ($0,$1,1), {a}\n\t"
         "mov $$64, %r11\n\t"
         f"tileloadd ($2,%r11,1), {w}\n\t"
         f"tilezero {c}\n\t"
         f"tdpbssd {w}, {a}, {c}\n\t"
         f"tilestored {c}, ($3,%r11,1)")
    return _asm(builder, t, 4, ",~{r11}")


def _make_tile_block():
    """The codegen of 16 tokens x 16 weight rows over nb Q8_0-family products; see tile_block_amx.
    Software-pipelined over the two tile sets: block b+1's product is issued before block b's sums are
    scaled into the accumulators, so the tile unit's load-multiply-store chain of one block overlaps the
    vector work of the previous one (one chain at a time left both units mostly waiting)."""
    def codegen(context, builder, signature, args):
        return _tile_block(builder, args, context)
    return codegen


def _tile_buffers(builder):
    """The two tile sets' 64-byte aligned result buffers (16 x 16 i32 each) and their product asm."""
    cbuf = cgutils.alloca_once(builder, ir.ArrayType(_I32, 2 * TM * TN))
    cbuf.align = 64
    cbs = [builder.ptrtoint(cbuf, _I64)]
    cbs.append(builder.add(cbs[0], ir.Constant(_I64, 4 * TM * TN)))
    return cbs, [_product_asm(builder, 0), _product_asm(builder, 3)]


def _bcast(builder, x, n=TN):
    """<n x T> of scalar x in every lane."""
    v = builder.insert_element(ir.Constant(_vec(x.type, n), ir.Undefined), x, ir.Constant(_I32, 0))
    return builder.shuffle_vector(v, ir.Constant(_vec(x.type, n), ir.Undefined), _mask([0] * n))


def _tile_block(builder, args, context):
    wp, dwp, xp, xs, cp, cs, nb, dp, ds, nt = args
    v16f, v16i = _vec(_F32, TN), _vec(_I32, TN)
    cbs, products = _tile_buffers(builder)
    accs = [cgutils.alloca_once_value(builder, ir.Constant(v16f, [0.0] * TN)) for _ in range(TM)]

    def issue(b, k):  # Q8_0 block b: f16 d, then its 32 values
        xo = builder.add(builder.mul(b, ir.Constant(_I64, Q8_0_BYTES)), ir.Constant(_I64, 2))
        wb = builder.add(wp, builder.mul(b, ir.Constant(_I64, BLOCK_TILE)))
        builder.call(products[k], [builder.add(xp, xo), xs, wb, cbs[k]])

    def consume(b, k):
        dwv = _load(builder, builder.add(dwp, builder.mul(b, ir.Constant(_I64, 4 * TN))), v16f)
        co = builder.add(cp, builder.add(builder.mul(b, ir.Constant(_I64, AUX_BYTES)), ir.Constant(_I64, 4)))
        for i in range(TM):
            dxv = _bcast(builder, _load(builder, builder.add(co, builder.mul(cs, ir.Constant(_I64, i))), _F32))
            s = builder.sitofp(_load(builder, builder.add(cbs[k], ir.Constant(_I64, 4 * TN * i)), v16i), v16f)
            builder.store(_fma(builder, builder.fmul(dwv, dxv), s, builder.load(accs[i])), accs[i])

    one = ir.Constant(_I64, 1)
    with cgutils.if_likely(builder, builder.icmp_signed(">", nb, ir.Constant(_I64, 0))):
        issue(ir.Constant(_I64, 0), 0)
    # pairs of blocks (b, b+1) on sets (0, 1); block b+2 is issued before block b+1 is consumed
    with cgutils.for_range(builder, builder.udiv(builder.add(nb, one), ir.Constant(_I64, 2))) as loop:
        b = builder.mul(loop.index, ir.Constant(_I64, 2))
        b1 = builder.add(b, one)
        has1 = builder.icmp_signed("<", b1, nb)
        with cgutils.if_likely(builder, has1):
            issue(b1, 1)
        consume(b, 0)
        with builder.if_then(has1, likely=True):
            b2 = builder.add(b1, one)
            with cgutils.if_likely(builder, builder.icmp_signed("<", b2, nb)):
                issue(b2, 0)
            consume(b1, 1)
    _store_results(builder, accs, dp, ds, nt)
    return context.get_dummy_value()


def _store_results(builder, accs, dp, ds, nt):
    """The first nt of the 16 tokens' accumulators (16 rows each) to dp + i*ds*4."""
    for i in range(TM):
        with cgutils.if_likely(builder, builder.icmp_signed("<", ir.Constant(_I64, i), nt)):
            p = builder.add(dp, builder.mul(ds, ir.Constant(_I64, 4 * i)))
            builder.store(builder.load(accs[i]), builder.inttoptr(p, ir.PointerType(_vec(_F32, TN))), align=4)


@intrinsic
def tile_block_amx(typingctx, wp, dwp, xp, xs, cp, cs, nb, dp, ds, nt):
    """dst[t, j] = sum over blocks b of fma(dw[b, j]*dx[t, b], S[t, j, b]) for 16 tokens t x 16 rows j.

    wp: packed weight blocks [nb, 8, 64] i8 (pack_rows_amx); dwp: their scales [nb, 16] f32; xp, xs: the
    first token's Q8_0 activation row and the row stride (16 rows are read); cp, cs: its aux words
    (x_aux_q8_0: dx is word 1) and their row stride; dp, ds: f32 output of token 0, row 0 and the token
    stride in elements; the first nt (<= 16) tokens are stored. The tiles must be configured (tile_config).
    """
    if not all(isinstance(a, types.Integer) for a in (wp, dwp, xp, xs, cp, cs, nb, dp, ds, nt)):
        return None
    return types.none(*([types.int64] * 10)), _make_tile_block()


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
        dxv = _bcast(builder, _load(builder, ci, _F32))
        acc = _fma(builder, builder.fmul(dv, dxv), builder.sitofp(sums[i], v16f), builder.load(accs[i]))
        if mpp is not None:
            msum = ir.Constant(v16i, [0] * TN)
            for j in range(4):
                pair = _bcast(builder, _load(builder, _addr(builder, ci, 4 + 4 * j), _I32))
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


def _transpose_rows(builder, rows):
    """TN vectors <C x i32> (row j's words k) -> C vectors <TN x i32> (word k of rows 0..TN-1), C = 8 or 16.

    Rows j and j + TN/2 are joined into one TN-lane vector when C = 8; then each step pairs the vectors
    whose indices differ in one bit and splits their lanes by that bit of k (one two-input shuffle per
    output: vpermt2d), until vector k holds word k of every row, in row order."""
    n = len(rows)
    c = rows[0].type.count
    if c == n // 2:
        h = n // 2
        vecs = [builder.shuffle_vector(rows[j], rows[j + h], _mask(range(n))) for j in range(h)]
        labels = [[(j, k) for k in range(c)] + [(j + h, k) for k in range(c)] for j in range(h)]
    else:
        vecs, labels = list(rows), [[(j, k) for k in range(c)] for j in range(n)]
    bit = 1
    while bit < c:
        out_v, out_l = list(vecs), list(labels)
        for i in range(c):
            if i & bit:
                continue
            both = labels[i] + labels[i | bit]
            for dst in (i, i | bit):
                keep = [t for t, (_, k) in enumerate(both) if (k & bit) == (dst & bit)]
                if bit * 2 >= c:  # the last step puts the lanes in row order
                    keep.sort(key=lambda t: both[t][0])
                out_v[dst] = builder.shuffle_vector(vecs[i], vecs[i | bit], _mask(keep))
                out_l[dst] = [both[t] for t in keep]
        vecs, labels = out_v, out_l
        bit *= 2
    assert all(lab == [(j, k) for j in range(n)] for k, lab in enumerate(labels))
    return vecs


def _store_tile(builder, ob, qs):
    """TN rows' <32 x i8> values of one block -> the VNNI block tile at ob (64-byte aligned): dword k of
    row j at ob + k*64 + 4j."""
    for k, v in enumerate(_transpose_rows(builder, [builder.bitcast(q, _vec(_I32, QK // 4)) for q in qs])):
        builder.store(v, builder.inttoptr(builder.add(ob, ir.Constant(_I64, k * 4 * TN)), ir.PointerType(v.type)),
                      align=64)


def _make_pack(unpack, w_bytes):
    def codegen(context, builder, signature, args):
        wp, ws, nb, op, dwp = args
        with cgutils.for_range(builder, nb) as loop:
            b = loop.index
            qs = []
            for j in range(TN):
                wb = builder.add(builder.add(wp, builder.mul(ws, ir.Constant(_I64, j))),
                                 builder.mul(b, ir.Constant(_I64, w_bytes)))
                dw, q, bias = unpack(builder, wb)
                qs.append(builder.sub(q, _splat(_I8, 32, bias)) if bias else q)
                p = builder.add(dwp, builder.add(builder.mul(b, ir.Constant(_I64, 4 * TN)), ir.Constant(_I64, 4 * j)))
                builder.store(dw, builder.inttoptr(p, ir.PointerType(_F32)), align=4)
            _store_tile(builder, builder.add(op, builder.mul(b, ir.Constant(_I64, BLOCK_TILE))), qs)
        return context.get_dummy_value()

    def typer(typingctx, wp, ws, nb, op, dwp):
        if not all(isinstance(a, types.Integer) for a in (wp, ws, nb, op, dwp)):
            return None
        return types.none(*([types.int64] * 5)), codegen

    return typer


# pack_*(wp, ws, nb, op, dwp): 16 weight rows (wp + j*ws) of nb blocks -> op [nb, 8, 64] i8 (q - bias in the
# VNNI layout: dword k of row j at k*64 + 4j) and dwp [nb, 16] f32 (the block scales).
pack_q8_0 = intrinsic(_make_pack(_unpack_q8_0, 34))
pack_q4_0 = intrinsic(_make_pack(_unpack_q4_0, 18))
pack_q5_0 = intrinsic(_make_pack(_unpack_q5_0, 22))


def _store_words(builder, base, vecs):
    """<16 x i32> vectors to base, base + 64, ... (64-byte aligned)."""
    for i, v in enumerate(vecs):
        builder.store(v, builder.inttoptr(_addr(builder, base, 4 * TN * i), ir.PointerType(v.type)), align=64)


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
def _pack(kind, wp, ws, nb, op, dwp):
    if kind == KIND_Q4_0:
        pack_q4_0(wp, ws, nb, op, dwp)
    elif kind == KIND_Q8_0:
        pack_q8_0(wp, ws, nb, op, dwp)
    else:
        pack_q5_0(wp, ws, nb, op, dwp)


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


@njit(cache=True, nogil=True, fastmath=FASTMATH, parallel=True)
def matmul_q_amx(dst, w, xq, kind, cfg):
    """dst[t, r] = dot(w[r], xq[t]) on AMX tiles for Q8_0/Q4_0/Q5_0 weights (kind) and Q8_0 activations (the
    same bits as matmul_q8_0.matmul_q) or Q4_K/Q5_K/Q6_K weights and Q8_K activations (the same bits as
    quants_k.matmul_k's row dots). Only where `enable()` said True.

    dst: [n_tok, n_out] f32 C-contiguous; w: [n_out, row_bytes] uint8; xq: [n_tok, n_in/32*34] (Q8_0) or
    [n_tok, n_in/256*292] (Q8_K) uint8 C-contiguous; cfg: config_bytes(). A work item is 16 weight rows:
    packed once, then multiplied with every 16-token tile. The last n_out % 16 rows are one more work item:
    one-row dots (matmul_q8_0's) for the Q8_0 family, a zero-padded 16-row tile for the K-quants.
    """
    n_tok, n_out = dst.shape
    k_quant = is_k_quant(kind)
    if k_quant:  # nb: super-blocks
        nb = np.int64(xq.shape[1] // BLOCK_BYTES_Q8_K)
        xc = np.empty((n_tok, nb, K_AUX_WORDS), np.int32)
        k_aux_words(xc, xq)
        cs = np.int64(nb * K_AUX_BYTES)
    else:  # nb: 32-value blocks; word 1, dx, for the tiles; word 0 for the one-row dots
        nb = np.int64(xq.shape[1] // Q8_0_BYTES)
        xc = np.empty((n_tok, nb, AUX_WORDS), np.int32)
        x_aux_q8_0(xc, xq, _q_bias(kind))
        cs = np.int64(nb * AUX_BYTES)
    n_full = n_tok // TM * TM
    m = n_tok - n_full
    xq_pad, xc_pad = _pad_tail(xq, xc, n_full, m, TM)
    wp, ws = np.int64(w.ctypes.data), np.int64(w.strides[0])
    xp, xs = np.int64(xq.ctypes.data), np.int64(xq.strides[0])
    xpp, cpp = np.int64(xq_pad.ctypes.data), np.int64(xc_pad.ctypes.data)
    dp = np.int64(dst.ctypes.data)
    cfgp = np.int64(cfg.ctypes.data)
    n_it = n_out // TN
    n_items = (n_out + TN - 1) // TN
    for it in prange(n_items):
        cp = np.int64(xc.ctypes.data)
        r0 = it * TN
        if it < n_it:
            _item(kind, wp + r0 * ws, ws, nb, cfgp, n_full, m, xp, xs, cp, cs, xpp, cpp, dp + r0 * 4, np.int64(n_out))
        elif k_quant:
            _item_padded(kind, w, r0, dst, nb, cfgp, n_full, m, xp, xs, cp, cs, xpp, cpp)
        else:
            for t in range(n_tok):
                _rows_q(kind, wp, ws, r0, n_out, xp + t * xs, cp + t * cs, nb, dst[t], np.int64(PREFETCH_BYTES))
    keep_alive(xq_pad, xc_pad, cfg)


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


@njit(cache=True, nogil=True, fastmath=FASTMATH)
def _item(kind, wp, ws, nb, cfgp, n_full, m, xp, xs, cp, cs, xpp, cpp, dp, n_out):
    """One work item of matmul_q_amx: 16 weight rows at wp (stride ws), packed, times every token tile;
    dp: output of token 0, row 0 of the item; n_out: the output row stride. nb: 32-value blocks (Q8_0
    family) or super-blocks (K-quants)."""
    k_quant = is_k_quant(kind)
    n_prod = nb * (2 * (QK_K // QK) if kind == KIND_Q6_K else QK_K // QK) if k_quant else nb
    wbuf = np.empty(max(n_prod * BLOCK_TILE, nb * SB_TILES if k_quant else 0) + 64, np.uint8)
    # the Q8_0 family's block scales [n_prod, 16] f32; the K-quants' K_SC, K_DM, K_MP
    words = np.empty(n_prod * TN + (nb * (K_DM_WORDS + K_MP_WORDS) if k_quant else 0) + 16, np.int32)
    wbp = (np.int64(wbuf.ctypes.data) + 63) // 64 * 64
    scp = (np.int64(words.ctypes.data) + 63) // 64 * 64
    dmp = scp + n_prod * TN * 4
    mpp = dmp + nb * K_DM_WORDS * 4
    chain = (kind == KIND_Q4_K or kind == KIND_Q5_K) and n_full + m >= CHAIN_MIN_TOKENS
    if k_quant:
        _pack_k(kind, chain, wp, ws, nb, wbp, scp, dmp, mpp)
    else:
        _pack(kind, wp, ws, nb, wbp, scp)
    tile_config(cfgp + 64 if chain else cfgp)
    for t0 in range(0, n_full + (TM if m > 0 else 0), TM):
        x0, c0, nt = xp + t0 * xs, cp + t0 * cs, np.int64(TM)
        if t0 == n_full:  # the padded tail tile of m tokens
            x0, c0, nt = xpp, cpp, np.int64(m)
        if kind == KIND_Q6_K:
            tile_block_amx_q6_k(wbp, scp, dmp, mpp, x0, xs, c0, cs, nb, dp + t0 * n_out * 4, n_out, nt)
        elif kind == KIND_Q4_K and chain:
            tile_chain_q4_k(wbp, dmp, mpp, x0, xs, c0, cs, nb, dp + t0 * n_out * 4, n_out, nt)
        elif kind == KIND_Q5_K and chain:
            tile_chain_q5_k(wbp, dmp, mpp, x0, xs, c0, cs, nb, dp + t0 * n_out * 4, n_out, nt)
        elif k_quant:
            tile_block_amx_k(wbp, scp, dmp, mpp, x0, xs, c0, cs, nb, dp + t0 * n_out * 4, n_out, nt)
        else:
            tile_block_amx(wbp, scp, x0, xs, c0, cs, nb, dp + t0 * n_out * 4, n_out, nt)
    tile_release()
    return wbuf.size + words.size


@njit(cache=True, nogil=True, fastmath=FASTMATH)
def _item_padded(kind, w, r0, dst, nb, cfgp, n_full, m, xp, xs, cp, cs, xpp, cpp):
    """_item for the last n_out - r0 (< 16) rows: a copy padded with zero rows (scales 0) into a [n_tok, 16]
    result, of which the first n_out - r0 columns are dst's."""
    n_tok, n_out = dst.shape
    wt = np.zeros((TN, w.shape[1]), np.uint8)
    for r in range(n_out - r0):
        wt[r] = w[r0 + r]
    yt = np.empty((n_tok, TN), np.float32)
    _item(kind, np.int64(wt.ctypes.data), np.int64(w.shape[1]), nb, cfgp, n_full, m, xp, xs, cp, cs, xpp, cpp,
          np.int64(yt.ctypes.data), np.int64(TN))
    for t in range(n_tok):
        for r in range(n_out - r0):
            dst[t, r0 + r] = yt[t, r]
