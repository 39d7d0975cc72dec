"""FlashMLA on AMX-FP16 tiles: attention_mla_amx's items for an f16 cache, with the cache rows as tile operands.

tdpfp16ps sums f16 x f16 products in f32 (round to nearest even; f16 subnormal inputs are used as they are).
An f16 cache value is an operand as it is: the score tiles (A: 16 cells x 32 values) load straight from the
cache rows where a tile's 32 cells are consecutive cells, and from a 2 KiB copy of the block's rows where not;
the value tiles (B: 16 cell pairs x 16 values, the VNNI layout) are the same rows' latent values with the two
cells of each pair interleaved, built block by block while the block is in L1. The queries and the
probabilities enter as two f16 terms, hi = f16(x) and lo = f16(x - hi) (about 22 significand bits), each
scaled by a power of two first so that neither term leaves f16's normal range: the queries by 2^e with
max |q| 2^e in [2^14, 2^15) (the softmax scale divided by the same), the probabilities by 2^15 (the value
sums divided by it at the item's end; powers of two change no bits). A score block is four tile products
(Q hi and lo against two 16-cell K tiles), a 16 x 16 value block two (P hi, P lo) per 32 cells: 136 products a
32-cell tile of a decoded DeepSeek-V2 token where the bf16 items take 236, and no conversion of the cache.

Where the CPU says it has AMX-FP16 (CPUID.(7,1):EAX[21], LLVM's amx-fp16 feature: HAS_AMX_FP16_CPU) it is
there; some hypervisors hide the bit of a CPU that has the instruction, and there probe_child (one product in a
child process) tells; ops.mla.amx_fp16 decides. Measured on such a Xeon VM (2 threads, 27 layers of 8192 f16
cells, amx-fp16/d16only.py): 25-29 ms a token where the bf16 items take 29-30 (bench/results/session-xeon-2026-12-05).

Leaf module (numpy, numba, llvmlite and sibling kernel modules only).
"""

import math
import os

import numpy as np
from llvmlite import ir
from numba import njit
from numba.extending import intrinsic

from .attention_mla_amx import (GROUP, KB, PF_TILES, TILE, TILE_BYTES, _asm_call, _int_typer, _store_at,
                                _transpose16, _vnni_q, bf16_row32, make_split, prefetch_rows_part, softmax_t,
                                store2, zero2)
from .amx import tile_config, tile_release
from .config import FASTMATH
from .kv import KIND_F16
from .simd import _F16, _F32, _FEATS, _I16, _I32, _I64, _vec, empty_lined, zeros_lined
from .softmax import cell_scratch, query_seqs, start_rows, tile_mask_t

P_SCALE = np.float32(32768.0)   # the probabilities' factor (2^15): p <= 1 stays below f16's largest value
_W = 16


# ---------------------------------------------------------------------------- tile steps (inline asm)

# qk16_step(k0, ks, qh, ql, k1): tmm0 += K[cells 0..15] . Q^T, tmm1 += K[cells 16..31] . Q^T for one 32-value
# block: K rows at k0 and k1 (row stride ks, f16), Q^T's hi and lo VNNI tiles at qh, ql (64-byte rows). Products
# ql.k, qh.k: each register is loaded in the order the step before last read it (attention_mla_amx.qk_step)
qk16_step = intrinsic(_asm_call(
    "mov $$64, %r11\n\t"
    "tileloadd ($3,%r11,1), %tmm3\n\t"
    "tileloadd ($0,$1,1), %tmm4\n\t"
    "tileloadd ($4,$1,1), %tmm5\n\t"
    "tdpfp16ps %tmm3, %tmm4, %tmm0\n\t"
    "tdpfp16ps %tmm3, %tmm5, %tmm1\n\t"
    "tileloadd ($2,%r11,1), %tmm2\n\t"
    "tdpfp16ps %tmm2, %tmm4, %tmm0\n\t"
    "tdpfp16ps %tmm2, %tmm5, %tmm1", 5))
# load_p2(ph, pl): the A tiles of P's hi and lo terms (64-byte rows) into tmm2, tmm3
load_p2 = intrinsic(_asm_call(
    "mov $$64, %r11\n\t"
    "tileloadd ($0,%r11,1), %tmm2\n\t"
    "tileloadd ($1,%r11,1), %tmm3", 2))
# pv16_2(c, cs, b0, b1): two 16 x 16 accumulator blocks at c and c + 64 (row stride cs) += P . V: their value
# tiles at b0, b1 (16 cell pairs x 16 values, 64-byte rows) against tmm2, tmm3 = P hi, P lo of the 32 cells
pv16_2 = intrinsic(_asm_call(
    "mov $$64, %r11\n\t"
    "tileloadd ($0,$1,1), %tmm0\n\t"
    "tileloadd ($2,%r11,1), %tmm6\n\t"
    "lea 64($0), %r11\n\t"
    "tileloadd (%r11,$1,1), %tmm1\n\t"
    "mov $$64, %r11\n\t"
    "tileloadd ($3,%r11,1), %tmm7\n\t"
    "tdpfp16ps %tmm6, %tmm2, %tmm0\n\t"
    "tdpfp16ps %tmm6, %tmm3, %tmm0\n\t"
    "tdpfp16ps %tmm7, %tmm2, %tmm1\n\t"
    "tdpfp16ps %tmm7, %tmm3, %tmm1\n\t"
    "tilestored %tmm0, ($0,$1,1)\n\t"
    "lea 64($0), %r11\n\t"
    "tilestored %tmm1, (%r11,$1,1)", 4))


# ---------------------------------------------------------------------------- f16 terms and layouts

def _f16_terms(builder, x, w):
    """f32 x (w lanes, or a scalar for w = 1) -> f16 terms (hi, lo) as i16: hi = f16(x), lo = f16(x - hi),
    each rounded to nearest even."""
    tf, th = (_F16, _I16) if w == 1 else (_vec(_F16, w), _vec(_I16, w))
    tx = _F32 if w == 1 else _vec(_F32, w)
    hi = builder.fptrunc(x, tf)
    lo = builder.fptrunc(builder.fsub(x, builder.fpext(hi, tx)), tf)
    return builder.bitcast(hi, th), builder.bitcast(lo, th)


# split_f16(hp, lp, src, n): the f16 hi and lo terms (uint16 at hp, lp) of n f32 at src
split_f16 = intrinsic(_int_typer(4, make_split(_f16_terms)))


def _pairs_codegen(context, builder, signature, args):
    """32 f16 of cell a (at a) and of cell b (at b) -> two value-tile rows: values 0..15 at d, 16..31 at
    d + TILE_BYTES, each value's pair (a, b) in one 32-bit word."""
    d, a, b = args
    t = _vec(_I16, 2 * _W)
    va = builder.load(builder.inttoptr(a, t.as_pointer()), align=2)
    vb = builder.load(builder.inttoptr(b, t.as_pointer()), align=2)
    for h in range(2):
        idx = ir.Constant(_vec(_I32, 2 * _W), [_W * h + k // 2 + (2 * _W if k % 2 else 0) for k in range(2 * _W)])
        _store_at(builder, builder.shuffle_vector(va, vb, idx), d, TILE_BYTES * h)
    return context.get_dummy_value()


# pairs16(d, a, b): the value-tile rows of one cell pair for 32 values (two tiles, TILE_BYTES apart)
pairs16 = intrinsic(_int_typer(3, _pairs_codegen))


def _p16_codegen(context, builder, signature, args):
    """P^T (32 cells x 16 rows f32, cell j at src + j * ss) -> two A tiles at dst (P hi, then P lo at
    dst + TILE_BYTES): row r = the terms of P_SCALE * P[r, cells 0..31] as f16."""
    dst, src, ss = args
    sc = ir.Constant(_vec(_F32, _W), [float(P_SCALE)] * _W)
    for h in range(2):
        rows = []
        for p in range(_W):
            a = builder.add(src, builder.mul(ir.Constant(_I64, _W * h + p), ss))
            x = builder.load(builder.inttoptr(a, _vec(_F32, _W).as_pointer()), align=4)
            rows.append(builder.bitcast(builder.fmul(x, sc), _vec(_I32, _W)))
        for r, col in enumerate(_transpose16(builder, rows)):
            hi, lo = _f16_terms(builder, builder.bitcast(col, _vec(_F32, _W)), _W)
            _store_at(builder, hi, dst, 64 * r + 32 * h)
            _store_at(builder, lo, dst, TILE_BYTES + 64 * r + 32 * h)
    return context.get_dummy_value()


# p16(dst, src, ss): the A tiles (hi, lo) of the value products from a group's probabilities P^T (row stride ss)
p16 = intrinsic(_int_typer(3, _p16_codegen))


# ---------------------------------------------------------------------------- queries and items

@njit(cache=True, nogil=True)
def amx16_fits(kind, n_head, dk, dv, v_off):
    """Whether mla_item_amx16 takes a call's items: an f16 cache, 16-row groups of whole tokens, 32-value score
    blocks, and the values inside the score blocks from a block boundary on."""
    return (kind == KIND_F16 and n_head % GROUP == 0 and dk % KB == 0 and dv % KB == 0 and v_off % KB == 0
            and v_off + dv <= dk)


@njit(cache=True, nogil=True, fastmath=FASTMATH)
def query_scale(q):
    """The power of two 2^e with max |q| 2^e in [2^14, 2^15) (1 for zero queries; e at most 100)."""
    mx = np.float32(0.0)
    for v in q.ravel():
        a = abs(v)
        mx = a if a > mx else mx
    if not mx > 0 or not np.isfinite(mx):
        return np.float32(1.0)
    _, e = math.frexp(mx)  # mx = f 2^e, f in [0.5, 1)
    return np.float32(math.ldexp(1.0, min(15 - e, 100)))


@njit(cache=True, nogil=True, fastmath=FASTMATH)
def pack_q16(q, s):
    """pack_q's layout of the f16 terms of s * q (s a power of two: query_scale)."""
    n_tok, n_head, dk = q.shape
    R = n_tok * n_head
    qs = np.empty(R * dk, np.float32)
    qf = q.reshape(R * dk)
    for i in range(R * dk):
        qs[i] = qf[i] * s
    qh = np.empty((R, dk), np.uint16)
    ql = np.empty((R, dk), np.uint16)
    split_f16(np.int64(qh.ctypes.data), np.int64(ql.ctypes.data), np.int64(qs.ctypes.data), np.int64(R * dk))
    return _vnni_q(qh, ql)


@njit(cache=True, nogil=True, fastmath=FASTMATH)
def mla_item_amx16(acc, m, l, qp, n_head, k, kind, v_off, cell_pos, cell_seq, kv_idx, q_pos, q_seq, scale, t0, t1, c0,
                   c1, g0, cfgp):
    """attention_mla_amx.mla_item_amx for an f16 cache (k: uint16 rows, kind KIND_F16) on AMX-FP16 tiles: qp from
    pack_q16 and scale the softmax scale divided by pack_q16's s; amx16_fits holds."""
    dk = qp.shape[1] * KB
    dv = acc.shape[1]
    nt = t1 - t0
    R = nt * n_head
    G = R // GROUP
    nkb = dk // KB
    # tile operands on cache lines (simd.LINE)
    vb = empty_lined(dv // GROUP * TILE_BYTES // 2, np.uint16)  # the tile's value tiles (each tile writes all)
    kbuf = empty_lined(TILE * KB, np.uint16)      # a block's 32 rows where they are not consecutive (all written)
    zrow = zeros_lined(k.shape[1], np.uint16)     # the row of cells no query sees and past the end
    st = empty_lined(TILE * R, np.float32).reshape((TILE, R))  # S^T, then P^T
    pt = empty_lined(TILE_BYTES, np.uint16)       # one group's P terms as A tiles (hi, lo)
    mask_t = np.empty((TILE, nt), dtype=np.float32)
    cvis, cpos, cseq = cell_scratch(TILE)
    qseq = query_seqs(q_seq, t0, t1)
    start_rows(acc, m, l)
    rows = np.empty(TILE, np.int64)
    qpp = np.int64(qp.ctypes.data)
    stp, sts = np.int64(st.ctypes.data), np.int64(R * 4)
    vbp, ptp, kbp = np.int64(vb.ctypes.data), np.int64(pt.ctypes.data), np.int64(kbuf.ctypes.data)
    accp, accs = np.int64(acc.ctypes.data), np.int64(acc.strides[0])
    mkp, mp, lp = np.int64(mask_t.ctypes.data), np.int64(m.ctypes.data), np.int64(l.ctypes.data)
    kp, krs = np.int64(k.ctypes.data), np.int64(k.strides[0])
    zp = np.int64(zrow.ctypes.data)
    row_bytes = np.int64(k.shape[1]) * np.int64(2)
    kb0 = v_off // KB
    n_parts = nkb + dv // (2 * GROUP) + 2  # a tile's score steps, value steps, and one share each side of the softmax
    tile_config(cfgp)
    for cb in range(c0, c1, TILE):
        nc = min(TILE, c1 - cb)
        if not tile_mask_t(mask_t, cvis, cpos, cseq, kv_idx, cb, nc, cell_pos, cell_seq, q_pos, qseq, t0, 0):
            continue
        direct = nc == TILE
        for j in range(TILE):
            rows[j] = kp + np.int64(kv_idx[cb + j]) * krs if j < nc and cvis[j] else zp
            direct = direct and rows[j] == rows[0] + j * krs
        # the rows PF_TILES tiles ahead, a few per score step, per value step and around the softmax (memory stays
        # busy while the tile unit and the vector units work), past the item's end too: the next split's first
        # tiles, which this thread likely reads
        pf_c = cb + PF_TILES * TILE
        n_pf = max(0, min(TILE, kv_idx.shape[0] - pf_c))
        for g in range(G):
            zero2()
            qg = qpp + (g0 + g) * nkb * 2 * TILE_BYTES
            for kb in range(nkb):
                if g == 0:
                    prefetch_rows_part(kp, krs, kv_idx, pf_c, n_pf, kb, n_parts, row_bytes)
                o = np.int64(kb * KB * 2)
                qb = qg + kb * 2 * TILE_BYTES
                if direct:
                    qk16_step(rows[0] + o, krs, qb, qb + TILE_BYTES, rows[16] + o)
                else:
                    for j in range(TILE):
                        bf16_row32(kbp + j * 64, 0, rows[j] + o)
                    qk16_step(kbp, 64, qb, qb + TILE_BYTES, kbp + 16 * 64)
                if g == 0 and kb >= kb0 and kb < kb0 + dv // KB:  # this block's values as value tiles
                    d = vbp + (kb - kb0) * 2 * TILE_BYTES
                    for i in range(GROUP):
                        pairs16(d + i * 64, rows[2 * i] + o, rows[2 * i + 1] + o)
            store2(stp + g * GROUP * 4, sts, stp + 16 * sts + g * GROUP * 4)
        prefetch_rows_part(kp, krs, kv_idx, pf_c, n_pf, n_parts - 2, n_parts, row_bytes)
        softmax_t(stp, sts, R, nc, mkp, nt, n_head, scale, mp, lp, accp, accs, dv)
        prefetch_rows_part(kp, krs, kv_idx, pf_c, n_pf, n_parts - 1, n_parts, row_bytes)
        for g in range(G):
            p16(ptp, stp + g * GROUP * 4, sts)
            load_p2(ptp, ptp + TILE_BYTES)
            ag = accp + g * GROUP * accs
            for c in range(0, dv // GROUP, 2):
                if g == 0:
                    prefetch_rows_part(kp, krs, kv_idx, pf_c, n_pf, nkb + c // 2, n_parts, row_bytes)
                pv16_2(ag + c * GROUP * 4, accs, vbp + c * TILE_BYTES, vbp + (c + 1) * TILE_BYTES)
    tile_release()
    inv = np.float32(1.0) / P_SCALE  # acc holds P_SCALE times the products of the probabilities l sums
    for r in range(R):
        for i in range(dv):
            acc[r, i] *= inv
    return vb.size + kbuf.size + st.size


# ---------------------------------------------------------------------------- detection

HAS_AMX_FP16_CPU = "amx-fp16" in _FEATS


@njit(cache=True, nogil=True)
def _probe_product(cfg):
    """One score step of ones against twos: every sum is 64 (32 values x 1 x 2, lo terms 0)."""
    a = np.full(TILE * KB, np.uint16(0x3C00))   # f16 1.0
    q = np.zeros(2 * TILE_BYTES // 2, np.uint16)
    q[:TILE_BYTES // 2] = np.uint16(0x4000)     # f16 2.0 (hi terms)
    s = np.empty((TILE, GROUP), np.float32)
    tile_config(np.int64(cfg.ctypes.data))
    zero2()
    ap, qpp, sp = np.int64(a.ctypes.data), np.int64(q.ctypes.data), np.int64(s.ctypes.data)
    qk16_step(ap, 64, qpp, qpp + TILE_BYTES, ap + 16 * 64)
    store2(sp, 64, sp + 16 * 64)
    tile_release()
    return bool(np.all(s == np.float32(64.0)))


def probe() -> bool:
    """Whether one tdpfp16ps product gives the right sums here (in this process: call it in a child)."""
    from .amx import enable
    from .attention_mla_amx import config_bytes
    return enable() and bool(_probe_product(config_bytes()))


def probe_child():
    """probe() in a child process: True where it succeeded, False where the sums came out wrong or the CPU
    killed the child for the instruction (SIGILL), None where the child could not tell (it could not start, timed
    out or ended otherwise)."""
    import signal
    import subprocess
    import sys
    env = {k: v for k, v in os.environ.items() if k != "PYRT_AMX_FP16"}
    code = "import sys; from pyrt._kernels.attention_mla_amx16 import probe; sys.exit(0 if probe() else 3)"
    try:
        rc = subprocess.run([sys.executable, "-c", code], env=env, timeout=600,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode
    except (OSError, subprocess.SubprocessError):
        return None
    return True if rc == 0 else False if rc in (3, -signal.SIGILL) else None
