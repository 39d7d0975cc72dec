"""The online-softmax core of every attention kernel (attention.flash_attn, attention_mla.flash_attn_mla):
masks of a KV tile from cell metadata, the running max / sum update of a tile's scores, and the fixed-order
merge of KV splits. A work item owns R = n_tok * n_group rows (row r: query token t0 + r // n_group, head
g * n_group + r % n_group); MLA is the case of one group holding every head.

Leaf kernel module (numpy, numba, llvmlite and sibling kernel modules only). The helpers are inlined where they
are called (Numba IR inlining), so they add no compiled functions and no calls; exp_neg_ir is exp_neg for the
vector IR of the AMX items' softmax (attention_mla_amx.softmax_t).
"""

import numpy as np
from llvmlite import ir
from numba import njit
from numba.core import cgutils

from .config import FASTMATH
from .simd import bits_to_f32, empty_lined


# Cephes expf: exp(x) = 2^n exp(r), n = floor(x log2(e) + 1/2), r = x - n ln(2) in two parts, exp(r) a polynomial
_LOG2E = 1.4426950408889634
_LN2_HI = 0.693359375
_LN2_LO = -2.12194440e-4
_EXP_P = (1.9875691500e-4, 1.3981999507e-3, 8.3334519073e-3, 4.1665795894e-2, 1.6666665459e-1, 5.0000001201e-1)
_EXP_MIN = -87.0


@njit(cache=True, nogil=True, fastmath=FASTMATH)
def exp_neg(x):
    """exp(x) for x <= 0 in f32 (Cephes expf polynomial, ~1e-6 relative), exactly 0 below -87 and for -inf.

    Numba has no vector exp without SVML; this inlines and vectorizes, which matters for the softmax.
    """
    xc = x if x > np.float32(_EXP_MIN) else np.float32(_EXP_MIN)
    n = np.floor(xc * np.float32(_LOG2E) + np.float32(0.5))
    r = xc - n * np.float32(_LN2_HI) - n * np.float32(_LN2_LO)
    p = np.float32(_EXP_P[0])
    p = p * r + np.float32(_EXP_P[1])
    p = p * r + np.float32(_EXP_P[2])
    p = p * r + np.float32(_EXP_P[3])
    p = p * r + np.float32(_EXP_P[4])
    p = p * r + np.float32(_EXP_P[5])
    p = p * r * r + r + np.float32(1.0)
    e = bits_to_f32((np.int32(n) + 127) << 23)
    return p * e if x >= np.float32(_EXP_MIN) else np.float32(0.0)


def exp_neg_ir(builder, x):
    """exp_neg of the lanes of an f32 vector x, in LLVM IR (the same polynomial and steps; FMAs where the target
    has them, as exp_neg under fastmath)."""
    ty = x.type
    w = ty.count

    def c(v):
        return ir.Constant(ty, [v] * w)

    fl = dict(flags=("contract",))
    lim = c(_EXP_MIN)
    xc = builder.select(builder.fcmp_ordered(">", x, lim), x, lim)
    floor = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ty, [ty]), f"llvm.floor.v{w}f32")
    n = builder.call(floor, [builder.fadd(builder.fmul(xc, c(_LOG2E), **fl), c(0.5), **fl)])
    r = builder.fsub(builder.fsub(xc, builder.fmul(n, c(_LN2_HI), **fl), **fl), builder.fmul(n, c(_LN2_LO), **fl),
                     **fl)
    p = c(_EXP_P[0])
    for k in _EXP_P[1:]:
        p = builder.fadd(builder.fmul(p, r, **fl), c(k), **fl)
    p = builder.fadd(builder.fadd(builder.fmul(builder.fmul(p, r, **fl), r, **fl), r, **fl), c(1.0), **fl)
    ti = ir.VectorType(ir.IntType(32), w)
    e = builder.bitcast(builder.shl(builder.add(builder.fptosi(n, ti), ir.Constant(ti, [127] * w)),
                                    ir.Constant(ti, [23] * w)), ty)
    return builder.select(builder.fcmp_ordered(">=", x, lim), builder.fmul(p, e, **fl), c(0.0))


@njit(cache=True, nogil=True, inline="always")
def query_seqs(q_seq, t0, t1):
    """[t1 - t0] uint64: the sequence bit index of each query of the item (tile_mask's qseq)."""
    qseq = np.empty(t1 - t0, dtype=np.uint64)
    for tl in range(t1 - t0):
        qseq[tl] = np.uint64(q_seq[t0 + tl])
    return qseq


@njit(cache=True, nogil=True, inline="always")
def start_rows(acc, m, l):
    """An item's accumulators before its first tile: acc [R, dv] = 0, m [R] = -inf, l [R] = 0."""
    for r in range(acc.shape[0]):
        m[r] = np.float32(-np.inf)
        l[r] = np.float32(0.0)
        for i in range(acc.shape[1]):
            acc[r, i] = np.float32(0.0)


@njit(cache=True, nogil=True, inline="always")
def _tile_cells(cvis, cpos, cseq, kv_idx, cb, nc, cell_pos, cell_seq):
    """The positions and sequence sets of cells kv_idx[cb:cb+nc] gathered into cpos, cseq (the item's scratch,
    >= nc each) so that the mask loops over them vectorize; cvis[:nc] cleared."""
    for j in range(nc):
        c = kv_idx[cb + j]
        cpos[j] = cell_pos[c]
        cseq[j] = cell_seq[c]
        cvis[j] = False


@njit(cache=True, nogil=True, inline="always")
def _sees(cseq, cpos, sh, qp, n_swa):
    """Whether a query at position qp of sequence bit sh sees a cell (branch-free, for vector loops)."""
    return (((cseq >> sh) & np.uint64(1)) == np.uint64(1)) & (cpos <= qp) & ((n_swa <= 0) | (qp - cpos < n_swa))


@njit(cache=True, nogil=True, inline="always")
def cell_scratch(kv_tile):
    """An item's scratch for tile_mask / tile_mask_t: cvis, cpos, cseq of kv_tile cells."""
    return np.empty(kv_tile, np.bool_), np.empty(kv_tile, np.int32), np.empty(kv_tile, np.uint64)


@njit(cache=True, nogil=True, fastmath=FASTMATH, inline="always")
def tile_mask(mask, cvis, cpos, cseq, kv_idx, cb, nc, cell_pos, cell_seq, q_pos, qseq, t0, n_swa):
    """Masks of cells kv_idx[cb:cb+nc] for the item's queries; returns whether any query sees any of them.

    mask [nt, >= nc] f32 out: 0 where query t0 + tl sees the cell (its sequence bit is set, the cell's
    position is not after the query's and, with n_swa > 0, within the window), else -inf; cvis [>= nc]
    bool out: the cell is visible to some query of the item; cpos [>= nc] int32, cseq [>= nc] uint64: scratch
    (cell_scratch). qseq: query_seqs(q_seq, t0, t0 + nt).
    """
    _tile_cells(cvis, cpos, cseq, kv_idx, cb, nc, cell_pos, cell_seq)
    for tl in range(qseq.shape[0]):
        qp = q_pos[t0 + tl]
        sh = qseq[tl]
        mrow = mask[tl]
        for j in range(nc):
            ok = _sees(cseq[j], cpos[j], sh, qp, n_swa)
            mrow[j] = np.float32(0.0) if ok else np.float32(-np.inf)
            cvis[j] = cvis[j] | ok
    any_vis = False
    for j in range(nc):
        any_vis = any_vis or cvis[j]
    return any_vis


@njit(cache=True, nogil=True, fastmath=FASTMATH, inline="always")
def tile_mask_t(mask_t, cvis, cpos, cseq, kv_idx, cb, nc, cell_pos, cell_seq, q_pos, qseq, t0, n_swa):
    """tile_mask with the mask cells-major: mask_t [>= nc, nt]."""
    nt = qseq.shape[0]
    _tile_cells(cvis, cpos, cseq, kv_idx, cb, nc, cell_pos, cell_seq)
    qp = q_pos[t0:t0 + nt]
    any_vis = False
    for j in range(nc):
        mrow = mask_t[j]
        cp = cpos[j]
        cs = cseq[j]
        cv = False
        for tl in range(nt):
            ok = _sees(cs, cp, qseq[tl], qp[tl], n_swa)
            mrow[tl] = np.float32(0.0) if ok else np.float32(-np.inf)
            cv = cv | ok
        cvis[j] = cv
        any_vis = any_vis or cv
    return any_vis


@njit(cache=True, nogil=True, fastmath=FASTMATH, inline="always")
def _row_max(sr, nc):
    """max(sr[:nc]) (-inf for none; NaNs never win, as in a running `if x > m`): eight partial maxima over
    branch-free selects, which vectorize (a running max with a branch mispredicts on score rows). Exact in any
    order."""
    neg_inf = np.float32(-np.inf)
    m0 = m1 = m2 = m3 = m4 = m5 = m6 = m7 = neg_inf
    j = 0
    while j + 8 <= nc:
        x0, x1, x2, x3 = sr[j], sr[j + 1], sr[j + 2], sr[j + 3]
        x4, x5, x6, x7 = sr[j + 4], sr[j + 5], sr[j + 6], sr[j + 7]
        m0 = x0 if x0 > m0 else m0
        m1 = x1 if x1 > m1 else m1
        m2 = x2 if x2 > m2 else m2
        m3 = x3 if x3 > m3 else m3
        m4 = x4 if x4 > m4 else m4
        m5 = x5 if x5 > m5 else m5
        m6 = x6 if x6 > m6 else m6
        m7 = x7 if x7 > m7 else m7
        j += 8
    while j < nc:
        x = sr[j]
        m0 = x if x > m0 else m0
        j += 1
    a = m0 if m0 > m1 else m1
    b = m2 if m2 > m3 else m3
    c = m4 if m4 > m5 else m5
    d = m6 if m6 > m7 else m7
    a = a if a > b else b
    c = c if c > d else d
    return a if a > c else c


@njit(cache=True, nogil=True, fastmath=FASTMATH, inline="always")
def online_update(s, mask, n_group, nc, scale, softcap, acc, m, l):
    """One tile of the online softmax, in place for every row r of the item.

    s [R, >= nc] f32: the tile's raw scores q.k, replaced by exp(score - m_new) (zeros for a row that sees
    no cell of the tile); mask as tile_mask (row r reads mask[r // n_group]); scale f32; softcap f32
    (> 0: softcap * tanh(score * scale / softcap)); acc [R, dv], m, l [R]: rescaled to the new running max.
    """
    zero = np.float32(0.0)
    neg_inf = np.float32(-np.inf)
    for r in range(s.shape[0]):
        sr = s[r]
        mr = mask[r // n_group]
        if softcap > zero:
            sc_in = scale / softcap
            for j in range(nc):
                sr[j] = softcap * np.tanh(sr[j] * sc_in) + mr[j]
        else:
            for j in range(nc):
                sr[j] = sr[j] * scale + mr[j]
        smax = _row_max(sr, nc)
        if smax == neg_inf:
            for j in range(nc):
                sr[j] = zero
            continue
        m_old = m[r]
        m_new = smax if smax > m_old else m_old
        alpha = exp_neg(m_old - m_new)  # 0 while m[r] is still -inf
        lsum = zero
        for j in range(nc):
            p = exp_neg(sr[j] - m_new)
            sr[j] = p
            lsum += p
        l[r] = l[r] * alpha + lsum
        m[r] = m_new
        if alpha != np.float32(1.0):
            ar = acc[r]
            for i in range(ar.shape[0]):
                ar[i] *= alpha


@njit(cache=True, nogil=True, fastmath=FASTMATH, inline="always")
def qk_scores(s, qs, krows, r0, r1, j0, j1):
    """s[r, j] = qs[r] . krows[j] for rows [r0, r1) and cells [j0, j1) (qs [R, dk], krows [>= j1, >= dk] f32)."""
    dk = qs.shape[1]
    for j in range(j0, j1):  # 1-D row views keep the inner loop simple enough to vectorize
        kr = krows[j]
        for r in range(r0, r1):
            qr = qs[r]
            d = np.float32(0.0)
            for i in range(dk):
                d += qr[i] * kr[i]
            s[r, j] = d


@njit(cache=True, nogil=True, fastmath=FASTMATH, inline="always")
def add_pv(acc, s, vrows, v_off, r0, r1, j0, j1):
    """acc[r] += sum_j s[r, j] * vrows[j, v_off:v_off + dv] for rows [r0, r1) and cells [j0, j1), in cell
    order per row; four rows at a time, so each value row load feeds four accumulators."""
    dv = acc.shape[1]
    r4 = r0 + (r1 - r0) // 4 * 4
    for ra in range(r0, r4, 4):
        a0 = acc[ra]
        a1 = acc[ra + 1]
        a2 = acc[ra + 2]
        a3 = acc[ra + 3]
        for j in range(j0, j1):
            p0 = s[ra, j]
            p1 = s[ra + 1, j]
            p2 = s[ra + 2, j]
            p3 = s[ra + 3, j]
            vr = vrows[j, v_off:v_off + dv]
            for i in range(dv):
                vi = vr[i]
                a0[i] += p0 * vi
                a1[i] += p1 * vi
                a2[i] += p2 * vi
                a3[i] += p3 * vi
    for r in range(r4, r1):
        ar = acc[r]
        for j in range(j0, j1):
            p = s[r, j]
            vr = vrows[j, v_off:v_off + dv]
            for i in range(dv):
                ar[i] += p * vr[i]


@njit(cache=True, nogil=True, inline="always")
def work_item(it, n_split, n_qt, q_tile, n_tok, bounds, dv, n_group):
    """Work item `it` of a (group, query tile, split) grid, split fastest: (g, sp, t0, t1, c0, c1, acc, m, l)
    with queries [t0, t1), scan positions [c0, c1) of kv_idx (split_partials' bounds) and the item's scratch
    acc [R, dv], m, l [R] (R = (t1 - t0) * n_group rows)."""
    sp = it % n_split
    qt = (it // n_split) % n_qt
    g = it // (n_split * n_qt)
    t0 = qt * q_tile
    t1 = min(n_tok, t0 + q_tile)
    c0 = bounds[sp]
    c1 = bounds[sp + 1]
    R = (t1 - t0) * n_group
    acc = empty_lined(R * dv, np.float32).reshape((R, dv))  # tile rows on cache lines
    m = np.empty(R, dtype=np.float32)
    l = np.empty(R, dtype=np.float32)
    return g, sp, t0, t1, c0, c1, acc, m, l


@njit(cache=True, nogil=True, inline="always")
def split_partials(n_kv, n_split, kv_tile, n_tok, n_head, dv):
    """(bounds, pm, pl, pacc) for n_split KV splits of n_kv cells: split sp scans [bounds[sp], bounds[sp + 1])
    ([n_split + 1] int64), whole tiles of kv_tile cells (the last may be partial), the same number of tiles to
    within one in every split, so that the items are equal work for the threads (4097 cells, 129 tiles of 32,
    in 16 splits: fifteen of 8 tiles and one of 9); the partials are [n_split, n_tok, n_head] running max and
    sum and [n_split, n_tok, n_head, dv] accumulators (empty with one split: items then write dst directly)."""
    n_tiles = (n_kv + kv_tile - 1) // kv_tile
    bounds = np.empty(n_split + 1, dtype=np.int64)
    for sp in range(n_split + 1):
        bounds[sp] = min(n_kv, sp * n_tiles // n_split * kv_tile)
    ns = n_split if n_split > 1 else 0
    pm = np.empty((ns, n_tok, n_head), dtype=np.float32)
    pl = np.empty((ns, n_tok, n_head), dtype=np.float32)
    pacc = np.empty((ns, n_tok, n_head, dv), dtype=np.float32)
    return bounds, pm, pl, pacc


@njit(cache=True, nogil=True, fastmath=FASTMATH, inline="always")
def finish_item(dst, pm, pl, pacc, acc, m, l, t0, g, n_group, sp, n_split):
    """An item's rows out: normalized into dst [n_tok, n_head, dv] with one split, else kept as split sp's
    partials pm, pl [n_split, n_tok, n_head], pacc [n_split, n_tok, n_head, dv] for merge_splits."""
    dv = acc.shape[1]
    for r in range(acc.shape[0]):
        t = t0 + r // n_group
        h = g * n_group + r % n_group
        if n_split == 1:
            inv = np.float32(1.0) / l[r] if l[r] > np.float32(0.0) else np.float32(0.0)
            for i in range(dv):
                dst[t, h, i] = acc[r, i] * inv
            continue
        pm[sp, t, h] = m[r]
        pl[sp, t, h] = l[r]
        for i in range(dv):
            pacc[sp, t, h, i] = acc[r, i]


@njit(cache=True, nogil=True, fastmath=FASTMATH, inline="always")
def merge_split_row(dst, pm, pl, pacc, t, h):
    """dst[t, h] from the partials of every split, in split order (the result does not depend on which
    thread ran which split); zeros when no split saw a cell."""
    n_split = pm.shape[0]
    dv = dst.shape[2]
    mx = np.float32(-np.inf)
    for sp in range(n_split):
        mx = max(mx, pm[sp, t, h])
    for i in range(dv):
        dst[t, h, i] = np.float32(0.0)
    if mx == np.float32(-np.inf):
        return
    den = np.float32(0.0)
    for sp in range(n_split):
        if pm[sp, t, h] == np.float32(-np.inf):
            continue
        w = np.exp(pm[sp, t, h] - mx)
        den += w * pl[sp, t, h]
        for i in range(dv):
            dst[t, h, i] += w * pacc[sp, t, h, i]
    inv = np.float32(1.0) / den
    for i in range(dv):
        dst[t, h, i] *= inv
