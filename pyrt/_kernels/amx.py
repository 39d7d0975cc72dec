"""AMX-INT8 tiles for prompt-sized matmuls: Q8_0/Q4_0/Q5_0 weights x Q8_0 activations and Q4_K/Q5_K/Q6_K
weights x Q8_K activations.

One tile product (tdpbssd) multiplies 16 tokens x 32 int8 activations (one Q8_0 block of 16 rows, loaded
straight from the quantized activation rows) with 32 x 16 signed weights (one block of 16 weight rows,
unpacked to q - bias in the VNNI layout once per matmul): the 16 x 16 exact integer block sums S of
dots_q8_0. They leave the tile unit through memory and enter the f32 accumulators exactly as every other
kernel adds them, acc = fma(dw*dx, S, acc) block after block, so a result has the same bits as the AVX
tiles and the one-row dots.

The K-quants multiply the Q8_K rows their dot kernels (and llama.cpp) multiply: the A tile is 32 of a
block's 256 int8 values and dx its block scale. Q4_K/Q5_K weights are 32-value sub-blocks of value
d*sc*q - dmin*m (q unsigned, sc and m 6-bit): packed as q with the exact f32 scale d*sc and min dmin*m, the
min entering as a second term, acc = fma(dmin*m, dx*(-sum(xq)), acc), from the block sums (k_aux_words).
Q6_K's d*sc*(q - 32) has a scale per 16 values: each 32-value block is two products, each weight tile
holding one half (the other zero). The same products as the dot kernels, summed in another order.

The tile instructions are inline assembly (LLVM's AMX intrinsics need the x86_amx type, which llvmlite's
IR lacks); the assembler parser must be initialized for the JIT (`enable`). Tile registers are live only
inside one `tile_block_amx`/`pack` call sequence of a work item, and a work item configures them first
(ldtilecfg) and releases them last (tilerelease). AMX needs the process to ask the kernel for the tile
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
from .ir_k import (BLOCK_BYTES_Q4_K, BLOCK_BYTES_Q5_K, BLOCK_BYTES_Q6_K, BLOCK_BYTES_Q8_K, _k4_scales_mins,
                   is_k_quant)
from .simd import PREFETCH_BYTES, _F32, _FEATS, _I8, _I32, _I64, _addr, _f16_scale, _load, _mask, _splat, _vec
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
    """The tile configuration (palette 1), two sets of three tiles: tmm0/tmm3 16 rows x 64 bytes (i32
    results), tmm1/tmm4 16 x 32 (activations), tmm2/tmm5 8 x 64 (weights, VNNI)."""
    cfg = np.zeros(64, np.uint8)
    cfg[0] = 1
    colsb = cfg[16:48].view(np.uint16)
    rows = cfg[48:64]
    for base in (0, 3):
        colsb[base], rows[base] = 4 * TN, TM
        colsb[base + 1], rows[base + 1] = QK, TM
        colsb[base + 2], rows[base + 2] = 4 * TN, QK // 4
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


def _make_tile_block(x_q8k, shift, with_min):
    """The codegen of 16 tokens x 16 weight rows over nb products; see tile_block_amx.

    x_q8k: the activation rows are Q8_K (else Q8_0); product b multiplies 32-value activation block
    b >> shift (shift 1: two weight tiles, each holding one 16-value half, per activation block); with_min:
    an 11th argument mwp and every product adds its min term.
    Software-pipelined over the two tile sets: block b+1's product is issued before block b's sums are
    scaled into the accumulators, so the tile unit's load-multiply-store chain of one block overlaps the
    vector work of the previous one (one chain at a time left both units mostly waiting)."""
    def codegen(context, builder, signature, args):
        return _tile_block(builder, args, x_q8k, shift, with_min, context)
    return codegen


def _tile_block(builder, args, x_q8k, shift, with_min, context):
    wp, dwp, xp, xs, cp, cs, nb, dp, ds, nt = args[:10]
    mwp = args[10] if with_min else None
    v16f, v16i = _vec(_F32, TN), _vec(_I32, TN)
    cbuf = cgutils.alloca_once(builder, ir.ArrayType(_I32, 2 * TM * TN))
    cbuf.align = 64
    cbs = [builder.ptrtoint(cbuf, _I64)]
    cbs.append(builder.add(cbs[0], ir.Constant(_I64, 4 * TM * TN)))
    accs = [cgutils.alloca_once_value(builder, ir.Constant(v16f, [0.0] * TN)) for _ in range(TM)]
    products = [_product_asm(builder, 0), _product_asm(builder, 3)]

    def issue(b, k):
        xbk = builder.lshr(b, ir.Constant(_I64, shift))
        if not x_q8k:  # Q8_0 block: f16 d, then its 32 values
            xo = builder.add(builder.mul(xbk, ir.Constant(_I64, Q8_0_BYTES)), ir.Constant(_I64, 2))
        else:  # 32 values of Q8_K block xbk/8: f32 d, then 256 values
            xo = builder.add(builder.mul(builder.lshr(xbk, ir.Constant(_I64, 3)), ir.Constant(_I64, BLOCK_BYTES_Q8_K)),
                             builder.add(builder.mul(builder.and_(xbk, ir.Constant(_I64, 7)), ir.Constant(_I64, QK)),
                                         ir.Constant(_I64, 4)))
        xb = builder.add(xp, xo)
        wb = builder.add(wp, builder.mul(b, ir.Constant(_I64, BLOCK_TILE)))
        builder.call(products[k], [xb, xs, wb, cbs[k]])

    def consume(b, k):
        dwv = _load(builder, builder.add(dwp, builder.mul(b, ir.Constant(_I64, 4 * TN))), v16f)
        if mwp is not None:
            mwv = _load(builder, builder.add(mwp, builder.mul(b, ir.Constant(_I64, 4 * TN))), v16f)
        co = builder.add(cp, builder.add(builder.mul(builder.lshr(b, ir.Constant(_I64, shift)),
                                                     ir.Constant(_I64, AUX_BYTES)), ir.Constant(_I64, 4)))
        for i in range(TM):
            dx = _load(builder, builder.add(co, builder.mul(cs, ir.Constant(_I64, i))), _F32)
            dxv = builder.shuffle_vector(builder.insert_element(ir.Constant(v16f, ir.Undefined), dx, ir.Constant(_I32, 0)),
                                         ir.Constant(v16f, ir.Undefined), ir.Constant(v16i, [0] * TN))
            s = builder.sitofp(_load(builder, builder.add(cbs[k], ir.Constant(_I64, 4 * TN * i)), v16i), v16f)
            acc = _fma(builder, builder.fmul(dwv, dxv), s, builder.load(accs[i]))
            if mwp is not None:  # + dmin*m * dx*(-sum(xq)): aux word 0 as k_aux_words left it
                dxs = _load(builder, builder.sub(builder.add(co, builder.mul(cs, ir.Constant(_I64, i))),
                                                 ir.Constant(_I64, 4)), _F32)
                dxsv = builder.shuffle_vector(builder.insert_element(ir.Constant(v16f, ir.Undefined), dxs,
                                                                     ir.Constant(_I32, 0)),
                                              ir.Constant(v16f, ir.Undefined), ir.Constant(v16i, [0] * TN))
                acc = _fma(builder, mwv, dxsv, acc)
            builder.store(acc, accs[i])

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
    for i in range(TM):
        with cgutils.if_likely(builder, builder.icmp_signed("<", ir.Constant(_I64, i), nt)):
            p = builder.add(dp, builder.mul(ds, ir.Constant(_I64, 4 * i)))
            builder.store(builder.load(accs[i]), builder.inttoptr(p, ir.PointerType(v16f)), align=4)
    return context.get_dummy_value()


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
    return types.none(*([types.int64] * 10)), _make_tile_block(False, 0, False)


@intrinsic
def tile_block_amx_half(typingctx, wp, dwp, xp, xs, cp, cs, nb, dp, ds, nt):
    """tile_block_amx for Q8_K activation rows and nb half-block products (Q6_K's 16-value scales): product b
    multiplies 32-value block b/2 (values 32(b/2 % 8).. of Q8_K block b/16) with a weight tile whose other
    half is zero; cp: k_aux_words' words (word 1, d)."""
    if not all(isinstance(a, types.Integer) for a in (wp, dwp, xp, xs, cp, cs, nb, dp, ds, nt)):
        return None
    return types.none(*([types.int64] * 10)), _make_tile_block(True, 1, False)


@intrinsic
def tile_block_amx_min(typingctx, wp, dwp, xp, xs, cp, cs, nb, dp, ds, nt, mwp):
    """tile_block_amx for Q8_K activation rows (block b: values 32(b%8).. of Q8_K block b/8) plus, per block
    b, fma(mw[b, j], dx[t, b]*(-sum(xq[t, b])), .): the min term of the K-quants. mwp: the mins [nb, 16] f32
    (pack_q4_k); cp: k_aux_words' words."""
    if not all(isinstance(a, types.Integer) for a in (wp, dwp, xp, xs, cp, cs, nb, dp, ds, nt, mwp)):
        return None
    return types.none(*([types.int64] * 11)), _make_tile_block(True, 0, True)


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


def _make_pack_k(high_bits):
    """pack_q4_k (high_bits=False) / pack_q5_k: 16 rows of Q4_K/Q5_K super-blocks -> the VNNI tiles of their
    32-value sub-blocks (unsigned q), the f32 scales d*sc and the f32 mins dmin*m (both exact products)."""
    bb = BLOCK_BYTES_Q5_K if high_bits else BLOCK_BYTES_Q4_K
    qs_off = 48 if high_bits else 16
    n_sub = QK_K // QK

    def codegen(context, builder, signature, args):
        wp, ws, nb, op, dwp, mwp = args
        v16f = _vec(_F32, 16)
        lo4 = _splat(_I8, 32, 0x0F)
        with cgutils.for_range(builder, builder.udiv(nb, ir.Constant(_I64, n_sub))) as loop:
            s = loop.index
            b0 = builder.mul(s, ir.Constant(_I64, n_sub))  # first sub-block of super-block s
            sbs, sms, qhs = [], [], []
            for j in range(TN):
                sb = builder.add(builder.add(wp, builder.mul(ws, ir.Constant(_I64, j))),
                                 builder.mul(s, ir.Constant(_I64, bb)))
                d, dmin = _f16_scale(builder, sb), _f16_scale(builder, _addr(builder, sb, 2))
                scm = _k4_scales_mins(builder, builder.inttoptr(_addr(builder, sb, 4), _I8.as_pointer()))
                dd = builder.shuffle_vector(builder.insert_element(builder.insert_element(
                    ir.Constant(_vec(_F32, 2), ir.Undefined), d, ir.Constant(_I32, 0)), dmin, ir.Constant(_I32, 1)),
                    ir.Constant(_vec(_F32, 2), ir.Undefined), _mask([0] * 8 + [1] * 8))
                sm = builder.fmul(builder.uitofp(scm, v16f), dd)  # lanes 0..7 d*sc, 8..15 dmin*m: exact
                sbs.append(sb)
                sms.append(builder.bitcast(sm, _vec(_I32, 16)))
                if high_bits:
                    qhs.append(_load(builder, _addr(builder, sb, 16), _vec(_I8, 32)))
            # lane i of row j's vector -> scale (i < 8) or min of sub-block i % 8, column j
            for i, v in enumerate(_transpose_rows(builder, sms)):
                base = mwp if i >= n_sub else dwp
                b = builder.add(b0, ir.Constant(_I64, i % n_sub))
                p = builder.add(base, builder.mul(b, ir.Constant(_I64, 4 * TN)))
                builder.store(v, builder.inttoptr(p, ir.PointerType(v.type)), align=4)
            for i in range(n_sub):
                qs = []
                for j in range(TN):
                    raw = _load(builder, _addr(builder, sbs[j], qs_off + 32 * (i // 2)), _vec(_I8, 32))
                    q = builder.and_(builder.lshr(raw, _splat(_I8, 32, 4)) if i % 2 else raw, lo4)
                    if high_bits:  # bit i of qh[l] is bit 4 of value l
                        hb = builder.and_(builder.lshr(qhs[j], _splat(_I8, 32, i)), _splat(_I8, 32, 1))
                        q = builder.or_(q, builder.shl(hb, _splat(_I8, 32, 4)))
                    qs.append(q)
                b = builder.add(b0, ir.Constant(_I64, i))
                _store_tile(builder, builder.add(op, builder.mul(b, ir.Constant(_I64, BLOCK_TILE))), qs)
        return context.get_dummy_value()

    def typer(typingctx, wp, ws, nb, op, dwp, mwp):
        if not all(isinstance(a, types.Integer) for a in (wp, ws, nb, op, dwp, mwp)):
            return None
        return types.none(*([types.int64] * 6)), codegen

    return typer


# pack_q4_k/pack_q5_k(wp, ws, nb, op, dwp, mwp): as pack_* for nb 32-value sub-blocks (nb/8 super-blocks) of
# 16 rows, plus mwp [nb, 16] f32 (the mins).
pack_q4_k = intrinsic(_make_pack_k(False))
pack_q5_k = intrinsic(_make_pack_k(True))


def _pack_q6_k_codegen(context, builder, signature, args):
    """16 rows of Q6_K super-blocks -> 2 tiles per 32-value sub-block, one per 16-value half (the other half
    zero), signed q - 32, and their f32 scales d*sc (exact: 11 x 8 bits); mwp is not written."""
    wp, ws, nb, op, dwp, _ = args
    v16f = _vec(_F32, 16)
    keep = [ir.Constant(_vec(_I8, 32), [0xFF] * 16 + [0] * 16), ir.Constant(_vec(_I8, 32), [0] * 16 + [0xFF] * 16)]
    with cgutils.for_range(builder, builder.udiv(nb, ir.Constant(_I64, QK_K // QK))) as loop:
        s = loop.index
        p0 = builder.mul(s, ir.Constant(_I64, 2 * (QK_K // QK)))  # first half-block product of super-block s
        sbs, scs = [], []
        for j in range(TN):
            sb = builder.add(builder.add(wp, builder.mul(ws, ir.Constant(_I64, j))),
                             builder.mul(s, ir.Constant(_I64, BLOCK_BYTES_Q6_K)))
            d = _f16_scale(builder, _addr(builder, sb, 208))
            sc = builder.sitofp(_load(builder, _addr(builder, sb, 192), _vec(_I8, 16)), v16f)
            dv = builder.shuffle_vector(builder.insert_element(ir.Constant(_vec(_F32, 1), ir.Undefined), d,
                                                               ir.Constant(_I32, 0)),
                                        ir.Constant(_vec(_F32, 1), ir.Undefined), _mask([0] * 16))
            sbs.append(sb)
            scs.append(builder.bitcast(builder.fmul(sc, dv), _vec(_I32, 16)))
        for g, v in enumerate(_transpose_rows(builder, scs)):  # scale of values 16g..16g+15: product g
            p = builder.add(dwp, builder.mul(builder.add(p0, ir.Constant(_I64, g)), ir.Constant(_I64, 4 * TN)))
            builder.store(v, builder.inttoptr(p, ir.PointerType(v.type)), align=4)
        for i in range(QK_K // QK):  # values 32i..: ql half i//4, low/high nibbles, qh bits 2*(i%4)
            h, q4 = i // 4, i % 4
            qs = []
            for j in range(TN):
                ql = _load(builder, _addr(builder, sbs[j], 64 * h + 32 * (q4 & 1)), _vec(_I8, 32))
                qh = _load(builder, _addr(builder, sbs[j], 128 + 32 * h), _vec(_I8, 32))
                lo = builder.lshr(ql, _splat(_I8, 32, 4)) if q4 >= 2 else builder.and_(ql, _splat(_I8, 32, 0x0F))
                hi = builder.and_(builder.lshr(qh, _splat(_I8, 32, 2 * q4)), _splat(_I8, 32, 3))
                qs.append(builder.sub(builder.or_(lo, builder.shl(hi, _splat(_I8, 32, 4))), _splat(_I8, 32, 32)))
            for half in range(2):
                b = builder.add(p0, ir.Constant(_I64, 2 * i + half))
                _store_tile(builder, builder.add(op, builder.mul(b, ir.Constant(_I64, BLOCK_TILE))),
                            [builder.and_(q, keep[half]) for q in qs])
    return context.get_dummy_value()


@intrinsic
def pack_q6_k(typingctx, wp, ws, nb, op, dwp, mwp):
    """pack_q6_k(wp, ws, nb, op, dwp, mwp): 16 rows of nb/8 Q6_K super-blocks -> op [2*nb, 8, 64] i8 and dwp
    [2*nb, 16] f32 (tile_block_amx_half's half-block products)."""
    if not all(isinstance(a, types.Integer) for a in (wp, ws, nb, op, dwp, mwp)):
        return None
    return types.none(*([types.int64] * 6)), _pack_q6_k_codegen


@njit(cache=True, nogil=True, inline="always")
def _products(kind, nb):
    """Tile products of nb 32-value blocks: two per block for Q6_K (16-value scales), else one."""
    return 2 * nb if kind == KIND_Q6_K else nb


@njit(cache=True, nogil=True, inline="always")
def _pack(kind, wp, ws, nb, op, dwp, mwp):
    if kind == KIND_Q4_0:
        pack_q4_0(wp, ws, nb, op, dwp)
    elif kind == KIND_Q8_0:
        pack_q8_0(wp, ws, nb, op, dwp)
    elif kind == KIND_Q5_0:
        pack_q5_0(wp, ws, nb, op, dwp)
    elif kind == KIND_Q4_K:
        pack_q4_k(wp, ws, nb, op, dwp, mwp)
    elif kind == KIND_Q5_K:
        pack_q5_k(wp, ws, nb, op, dwp, mwp)
    else:
        pack_q6_k(wp, ws, nb, op, dwp, mwp)


@njit(cache=True, nogil=True, fastmath=FASTMATH, parallel=True)
def matmul_q_amx(dst, w, xq, kind, cfg):
    """dst[t, r] = dot(w[r], xq[t]) on AMX tiles for Q8_0/Q4_0/Q5_0 weights (kind) and Q8_0 activations (the
    same bits as matmul_q8_0.matmul_q) or Q4_K/Q5_K/Q6_K weights and Q8_K activations (the products of
    quants_k.matmul_k, summed in another order). Only where `enable()` said True.

    dst: [n_tok, n_out] f32 C-contiguous; w: [n_out, row_bytes] uint8; xq: [n_tok, n_in/32*34] (Q8_0) or
    [n_tok, n_in/256*292] (Q8_K) uint8 C-contiguous; cfg: config_bytes(). A work item is 16 weight rows:
    packed once, then multiplied with every 16-token tile. The last n_out % 16 rows are one more work item:
    one-row dots (matmul_q8_0's) for the Q8_0 family, a zero-padded 16-row tile for the K-quants.
    """
    n_tok, n_out = dst.shape
    k_quant = is_k_quant(kind)
    nb = np.int64(xq.shape[1] // BLOCK_BYTES_Q8_K * (QK_K // QK) if k_quant else xq.shape[1] // Q8_0_BYTES)
    xc = np.empty((n_tok, nb, AUX_WORDS), np.int32)
    if k_quant:
        k_aux_words(xc, xq)
    else:  # word 1, dx, for the tiles; word 0 for the one-row dots
        x_aux_q8_0(xc, xq, _q_bias(kind))
    n_full = n_tok // TM * TM
    m = n_tok - n_full
    xq_pad, xc_pad = _pad_tail(xq, xc, n_full, m, TM)
    wp, ws = np.int64(w.ctypes.data), np.int64(w.strides[0])
    xp, xs = np.int64(xq.ctypes.data), np.int64(xq.strides[0])
    xpp, cpp = np.int64(xq_pad.ctypes.data), np.int64(xc_pad.ctypes.data)
    cs = np.int64(nb * AUX_BYTES)
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
    """The aux words of tile_block_amx_min for Q8_K activation rows, per 32-value block b: word 1 = d of Q8_K
    block b/8, word 0 = d * -(its two 16-value block sums), both f32 bits.
    xc: [n_tok, nb, 2] int32 (nb = values/32); xq: [n_tok, nb/8*292] uint8 (block_q8_k)."""
    f = xc.view(np.float32)
    for t in range(xc.shape[0]):
        for s in range(xc.shape[1] // 8):
            o = s * BLOCK_BYTES_Q8_K
            d = xq[t, o:o + 4].view(np.float32)[0]
            bs = xq[t, o + 4 + QK_K:o + BLOCK_BYTES_Q8_K].view(np.int16)
            for i in range(8):
                f[t, 8 * s + i, 1] = d
                f[t, 8 * s + i, 0] = d * np.float32(-(np.int32(bs[2 * i]) + np.int32(bs[2 * i + 1])))


@njit(cache=True, nogil=True, fastmath=FASTMATH)
def _item(kind, wp, ws, nb, cfgp, n_full, m, xp, xs, cp, cs, xpp, cpp, dp, n_out):
    """One work item of matmul_q_amx: 16 weight rows at wp (stride ws), packed, times every token tile;
    dp: output of token 0, row 0 of the item; n_out: the output row stride."""
    n_prod = _products(kind, nb)
    wbuf = np.empty(n_prod * BLOCK_TILE + 64, np.uint8)
    dwbuf = np.empty(2 * n_prod * TN, np.float32)  # [2, n_prod, 16]: scales, then the K-quants' mins
    wbp = (np.int64(wbuf.ctypes.data) + 63) // 64 * 64
    dwp = np.int64(dwbuf.ctypes.data)
    mwp = dwp + n_prod * TN * 4
    _pack(kind, wp, ws, nb, wbp, dwp, mwp)
    tile_config(cfgp)
    for t0 in range(0, n_full + (TM if m > 0 else 0), TM):
        x0, c0, nt = xp + t0 * xs, cp + t0 * cs, np.int64(TM)
        if t0 == n_full:  # the padded tail tile of m tokens
            x0, c0, nt = xpp, cpp, np.int64(m)
        if kind == KIND_Q6_K:
            tile_block_amx_half(wbp, dwp, x0, xs, c0, cs, n_prod, dp + t0 * n_out * 4, n_out, nt)
        elif is_k_quant(kind):
            tile_block_amx_min(wbp, dwp, x0, xs, c0, cs, nb, dp + t0 * n_out * 4, n_out, nt, mwp)
        else:
            tile_block_amx(wbp, dwp, x0, xs, c0, cs, nb, dp + t0 * n_out * 4, n_out, nt)
    tile_release()
    return wbuf.size + dwbuf.size


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
