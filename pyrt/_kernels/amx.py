"""AMX-INT8 tiles: the tile unit's setup (enable, tile_config/tile_release, the inline asm) and the codegen the
prompt matmuls share, with the Q8_0/Q4_0/Q5_0 weights x Q8_0 activations tiles (the K-quants' are amx_k's;
matmul_q_amx, amx_matmul's, runs both).

One tile product (tdpbssd) multiplies 16 tokens x 32 int8 activations (one Q8_0 block of 16 rows, loaded
straight from the quantized activation rows) with 32 x 16 signed weights (one block of 16 weight rows,
unpacked to q - bias in the VNNI layout once per matmul): the 16 x 16 exact integer block sums S of
dots_q8_0. They leave the tile unit through memory and enter the f32 accumulators exactly as every other
kernel adds them, acc = fma(dw*dx, S, acc) block after block, so a result has the same bits as the AVX
tiles and the one-row dots.

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
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

from .config import NO_SIMD
from .dots_q8_0 import AUX_BYTES, _fma, _unpack_q4_0, _unpack_q5_0, _unpack_q8_0
from .simd import _F32, _FEATS, _I8, _I32, _I64, _addr, _bcast, _int_typer, _load, _mask, _splat, _vec
from . import codes

TM = 16          # tokens of a tile (rows of the activation tile and of the result tile)
TN = 16          # weight rows of a tile (columns of the result tile)
QK = 32          # values of a block: the K of one tile product
Q8_0_BYTES = 34
BLOCK_TILE = TN * QK  # bytes of one packed weight block tile: [QK/4, TN*4] int8 (VNNI layout)

KIND_Q8_0, KIND_Q4_0, KIND_Q5_0 = codes.Q8_0, codes.Q4_0, codes.Q5_0

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
    amx_k._chain_asm), all eight tiles 16 x 64."""
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


def _tile_buffers(builder):
    """The two tile sets' 64-byte aligned result buffers (16 x 16 i32 each) and their product asm."""
    cbuf = cgutils.alloca_once(builder, ir.ArrayType(_I32, 2 * TM * TN))
    cbuf.align = 64
    cbs = [builder.ptrtoint(cbuf, _I64)]
    cbs.append(builder.add(cbs[0], ir.Constant(_I64, 4 * TM * TN)))
    return cbs, [_product_asm(builder, 0), _product_asm(builder, 3)]


def _tile_block_codegen(context, builder, signature, args):
    """The codegen of tile_block_amx: 16 tokens x 16 weight rows over nb Q8_0-family products.
    Software-pipelined over the two tile sets: block b+1's product is issued before block b's sums are
    scaled into the accumulators, so the tile unit's load-multiply-store chain of one block overlaps the
    vector work of the previous one (one chain at a time left both units mostly waiting)."""
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
            dxv = _bcast(builder, _load(builder, builder.add(co, builder.mul(cs, ir.Constant(_I64, i))), _F32), TN)
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


# tile_block_amx(wp, dwp, xp, xs, cp, cs, nb, dp, ds, nt): dst[t, j] = sum over blocks b of
# fma(dw[b, j]*dx[t, b], S[t, j, b]) for 16 tokens t x 16 rows j. wp: packed weight blocks [nb, 8, 64] i8
# (pack_q8_0/q4_0/q5_0); dwp: their scales [nb, 16] f32; xp, xs: the first token's Q8_0 activation row and the
# row stride (16 rows are read); cp, cs: its aux words (x_aux_q8_0: dx is word 1) and their row stride; dp, ds:
# f32 output of token 0, row 0 and the token stride in elements; the first nt (<= 16) tokens are stored. The
# tiles must be configured (tile_config).
tile_block_amx = intrinsic(_int_typer(10, _tile_block_codegen))


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

    return _int_typer(5, codegen)


# pack_*(wp, ws, nb, op, dwp): 16 weight rows (wp + j*ws) of nb blocks -> op [nb, 8, 64] i8 (q - bias in the
# VNNI layout: dword k of row j at k*64 + 4j) and dwp [nb, 16] f32 (the block scales).
pack_q8_0 = intrinsic(_make_pack(_unpack_q8_0, 34))
pack_q4_0 = intrinsic(_make_pack(_unpack_q4_0, 18))
pack_q5_0 = intrinsic(_make_pack(_unpack_q5_0, 22))


def _store_words(builder, base, vecs):
    """<16 x i32> vectors to base, base + 64, ... (64-byte aligned)."""
    for i, v in enumerate(vecs):
        builder.store(v, builder.inttoptr(_addr(builder, base, 4 * TN * i), ir.PointerType(v.type)), align=64)



@njit(cache=True, nogil=True, inline="always")
def _pack(kind, wp, ws, nb, op, dwp):
    if kind == KIND_Q4_0:
        pack_q4_0(wp, ws, nb, op, dwp)
    elif kind == KIND_Q8_0:
        pack_q8_0(wp, ws, nb, op, dwp)
    else:
        pack_q5_0(wp, ws, nb, op, dwp)

