"""Flash attention over the KV cache: online softmax over KV tiles, masks computed from cell metadata.

Leaf kernel module (numpy, numba only). Shapes are numpy row-major. The cache rows are read in their
storage type and dequantized one KV tile at a time into a small f32 scratch, so each K/V row is read
once per kv head for all query heads of its GQA group (and all queries of a query tile).
"""

import numpy as np
from numba import njit, prange

from .config import FASTMATH
from .kv import decode_row
from .simd import bits_to_f32

@njit(cache=True, nogil=True, fastmath=FASTMATH)
def _exp_neg(x):
    """exp(x) for x <= 0 in f32 (Cephes expf polynomial, ~1e-6 relative), exactly 0 below -87 and for -inf.

    Numba has no vector exp without SVML; this inlines and vectorizes, which matters for the softmax.
    """
    xc = x if x > np.float32(-87.0) else np.float32(-87.0)
    n = np.floor(xc * np.float32(1.4426950408889634) + np.float32(0.5))
    r = xc - n * np.float32(0.693359375) - n * np.float32(-2.12194440e-4)
    p = np.float32(1.9875691500e-4)
    p = p * r + np.float32(1.3981999507e-3)
    p = p * r + np.float32(8.3334519073e-3)
    p = p * r + np.float32(4.1665795894e-2)
    p = p * r + np.float32(1.6666665459e-1)
    p = p * r + np.float32(5.0000001201e-1)
    p = p * r * r + r + np.float32(1.0)
    e = bits_to_f32((np.int32(n) + 127) << 23)
    return p * e if x >= np.float32(-87.0) else np.float32(0.0)


@njit(cache=True, nogil=True, fastmath=FASTMATH)
def _attn_item(acc, m, l, q, k, v, kind_k, kind_v, seg_k, seg_v, v_off, cell_pos, cell_seq, kv_idx, q_pos, q_seq,
               scale, n_swa, softcap, g, t0, t1, c0, c1, kv_tile):
    """One work item: kv head g, query tokens [t0, t1), cells kv_idx[c0:c1]. Unnormalized result.

    acc [R, dv] f32, m [R] f32, l [R] f32 with R = (t1 - t0) * n_gqa, row r = (t - t0) * n_gqa + head in group.
    """
    dk = q.shape[2]
    dv = acc.shape[1]
    n_gqa = acc.shape[0] // (t1 - t0)
    nt = t1 - t0
    R = nt * n_gqa
    qs = np.empty((R, dk), dtype=np.float32)  # [R, dk] the item's query rows, gathered contiguously
    for tl in range(nt):
        for hl in range(n_gqa):
            h = g * n_gqa + hl
            for i in range(dk):
                qs[tl * n_gqa + hl, i] = q[t0 + tl, h, i]
    kt = np.zeros((kv_tile, dk), dtype=np.float32)  # [kv_tile, dk] dequantized K tile
    vt = np.zeros((kv_tile, dv), dtype=np.float32)  # [kv_tile, dv] dequantized V tile
    s = np.empty((R, kv_tile), dtype=np.float32)  # [R, kv_tile] scores, then probabilities
    mask = np.empty((nt, kv_tile), dtype=np.float32)  # [nt, kv_tile] 0 = visible, -inf = masked
    cvis = np.empty(kv_tile, dtype=np.bool_)  # [kv_tile] visible to some query of the item
    qseq = np.empty(nt, dtype=np.uint64)
    for tl in range(nt):
        qseq[tl] = np.uint64(q_seq[t0 + tl])
    one = np.uint64(1)
    neg_inf = np.float32(-np.inf)
    zero = np.float32(0.0)
    for r in range(R):
        m[r] = neg_inf
        l[r] = zero
        for i in range(dv):
            acc[r, i] = zero
    for cb in range(c0, c1, kv_tile):
        nc = min(kv_tile, c1 - cb)
        any_vis = False
        for j in range(nc):
            c = kv_idx[cb + j]
            cs = cell_seq[c]
            cp = cell_pos[c]
            cv = False
            for tl in range(nt):
                qp = q_pos[t0 + tl]
                ok = ((cs >> qseq[tl]) & one) == one and cp <= qp
                if n_swa > 0 and qp - cp >= n_swa:
                    ok = False
                mask[tl, j] = zero if ok else neg_inf
                cv = cv or ok
            cvis[j] = cv
            any_vis = any_vis or cv
        if not any_vis:
            continue
        # dequantize only the cells someone sees; the others stay finite (zeros or an old row) and are masked
        for j in range(nc):
            if cvis[j]:
                decode_row(kt[j], k[kv_idx[cb + j]], g * dk, dk, kind_k, seg_k)
                decode_row(vt[j], v[kv_idx[cb + j]], v_off + g * dv, dv, kind_v, seg_v)
        for j in range(nc):  # scores; 1-D row views keep the inner loops simple enough to vectorize
            kr = kt[j]
            for r in range(R):
                qr = qs[r]
                dot = zero
                for i in range(dk):
                    dot += qr[i] * kr[i]
                s[r, j] = dot
        for r in range(R):
            sr = s[r]
            mr = mask[r // n_gqa]
            if softcap > zero:
                sc_in = scale / softcap
                for j in range(nc):
                    sr[j] = softcap * np.tanh(sr[j] * sc_in) + mr[j]
            else:
                for j in range(nc):
                    sr[j] = sr[j] * scale + mr[j]
            smax = neg_inf
            for j in range(nc):
                if sr[j] > smax:
                    smax = sr[j]
            if smax == neg_inf:
                for j in range(nc):
                    sr[j] = zero
                continue
            m_old = m[r]
            m_new = smax if smax > m_old else m_old
            alpha = _exp_neg(m_old - m_new)  # 0 while m[r] is still -inf
            lsum = zero
            for j in range(nc):
                p = _exp_neg(sr[j] - m_new)
                sr[j] = p
                lsum += p
            l[r] = l[r] * alpha + lsum
            m[r] = m_new
            if alpha != np.float32(1.0):
                ar = acc[r]
                for i in range(dv):
                    ar[i] *= alpha
        # acc += P @ V, four rows at a time so each V row load feeds four accumulators
        R4 = R - R % 4
        for r0 in range(0, R4, 4):
            a0 = acc[r0]
            a1 = acc[r0 + 1]
            a2 = acc[r0 + 2]
            a3 = acc[r0 + 3]
            for j in range(nc):
                p0 = s[r0, j]
                p1 = s[r0 + 1, j]
                p2 = s[r0 + 2, j]
                p3 = s[r0 + 3, j]
                vr = vt[j]
                for i in range(dv):
                    vi = vr[i]
                    a0[i] += p0 * vi
                    a1[i] += p1 * vi
                    a2[i] += p2 * vi
                    a3[i] += p3 * vi
        for r in range(R4, R):
            ar = acc[r]
            for j in range(nc):
                p = s[r, j]
                vr = vt[j]
                for i in range(dv):
                    ar[i] += p * vr[i]


@njit(cache=True, nogil=True, fastmath=FASTMATH, parallel=True)
def flash_attn(dst, q, k, v, kind_k, kind_v, seg_k, seg_v, v_off, n_head_kv, cell_pos, cell_seq, kv_idx,
               q_pos, q_seq, scale, n_swa, softcap, q_tile, kv_tile, n_split):
    """Flash attention of a ubatch's queries over the KV cache cells kv_idx, in that order, with on-the-fly masks.

    dst      [n_tok, n_head, dv] f32       output (a query that sees no cell gets zeros)
    q        [n_tok, n_head, dk] f32
    k        [n_kv, >= n_head_kv*dk]       cache rows: uint32 (f32 bits) | uint16 (f16/bf16 bits) | uint8 (q8_0)
    v        [n_kv, >= v_off + n_head_kv*dv]  V rows in the same encodings; may be k itself (MLA)
    kind_k, kind_v  KIND_F32 | KIND_F16 | KIND_BF16 | KIND_Q8_0 | KIND_Q8_KV
    seg_k, seg_v    q8_KV segment lengths (values per scale; ignored for the other kinds)
    v_off    int      element offset of V head 0 inside a V row (multiple of 32 for q8_0)
    n_head_kv int     n_head is a multiple of it; head h reads kv head h // (n_head / n_head_kv)
    cell_pos [n_cells] int32, cell_seq [n_cells] uint64 (bitset), q_pos [n_tok] int32, q_seq [n_tok] int32
    kv_idx   [n_kv] int32    the cells to scan, in scan order (the caller's canonical order makes the
                             result independent of where the cells sit in the cache)
    scale    f32; n_swa int (0 = no window; cell masked when q_pos - cell_pos >= n_swa); softcap f32 (0 = none)
    q_tile   query tokens per work item; kv_tile cells per tile; n_split fixed KV splits (>= 1) per item
    Work items (kv head, query tile, split) run in parallel; splits are merged in a fixed order, so the
    result does not depend on the thread count.
    """
    n_tok = q.shape[0]
    n_head = q.shape[1]
    dv = dst.shape[2]
    n_kv = kv_idx.shape[0]
    n_gqa = n_head // n_head_kv
    n_qt = (n_tok + q_tile - 1) // q_tile
    split_len = (n_kv + n_split - 1) // n_split
    split_len = (split_len + kv_tile - 1) // kv_tile * kv_tile  # splits on tile boundaries
    ns = n_split if n_split > 1 else 0  # one split: items write dst directly, no partials
    pm = np.empty((ns, n_tok, n_head), dtype=np.float32)  # [n_split, n_tok, n_head] running max
    pl = np.empty((ns, n_tok, n_head), dtype=np.float32)  # [n_split, n_tok, n_head] softmax sum
    pacc = np.empty((ns, n_tok, n_head, dv), dtype=np.float32)  # [n_split, n_tok, n_head, dv]
    n_items = n_head_kv * n_qt * n_split
    for it in prange(n_items):
        sp = it % n_split
        qt = (it // n_split) % n_qt
        g = it // (n_split * n_qt)
        t0 = qt * q_tile
        t1 = min(n_tok, t0 + q_tile)
        c0 = min(n_kv, sp * split_len)
        c1 = min(n_kv, c0 + split_len)
        R = (t1 - t0) * n_gqa
        acc = np.empty((R, dv), dtype=np.float32)  # [R, dv]
        m = np.empty(R, dtype=np.float32)
        l = np.empty(R, dtype=np.float32)
        _attn_item(acc, m, l, q, k, v, kind_k, kind_v, seg_k, seg_v, v_off, cell_pos, cell_seq, kv_idx, q_pos, q_seq,
                   scale, n_swa, softcap, g, t0, t1, c0, c1, kv_tile)
        for r in range(R):
            t = t0 + r // n_gqa
            h = g * n_gqa + r % n_gqa
            if n_split == 1:
                inv = np.float32(1.0) / l[r] if l[r] > np.float32(0.0) else np.float32(0.0)
                for i in range(dv):
                    dst[t, h, i] = acc[r, i] * inv
                continue
            pm[sp, t, h] = m[r]
            pl[sp, t, h] = l[r]
            for i in range(dv):
                pacc[sp, t, h, i] = acc[r, i]
    if n_split == 1:
        return
    for th in prange(n_tok * n_head):
        t = th // n_head
        h = th % n_head
        mx = np.float32(-np.inf)
        for sp in range(n_split):
            mx = max(mx, pm[sp, t, h])
        if mx == np.float32(-np.inf):
            for i in range(dv):
                dst[t, h, i] = np.float32(0.0)
            continue
        den = np.float32(0.0)
        for i in range(dv):
            dst[t, h, i] = np.float32(0.0)
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


@njit(cache=True, nogil=True, fastmath=FASTMATH)
def softmax_masked_rows(s, n_gqa, t0, q_pos, q_seq, cell_pos, cell_seq, n_swa, softcap):
    """In place: masked softmax of score rows for the matrix-product prompt path (serial; called per task).

    s: [n_rows, n] f32, row r belongs to query t0 + r // n_gqa; cell_pos [n] int32 and cell_seq [n]
    uint64 describe the columns (cells in scan order); q_pos/q_seq [n_tok] int32. Rows that see no
    cell become zeros. softcap > 0 applies softcap*tanh(s/softcap) before the mask.
    """
    n_rows, n = s.shape
    for r in range(n_rows):
        t = t0 + r // n_gqa
        qp = q_pos[t]
        bit = np.uint64(1) << np.uint64(q_seq[t])
        row = s[r]
        m = np.float32(-np.inf)
        for c in range(n):
            x = row[c]
            if softcap > 0.0:
                x = softcap * np.tanh(x / softcap)
            ok = (cell_seq[c] & bit) != 0 and cell_pos[c] <= qp and (n_swa <= 0 or qp - cell_pos[c] < n_swa)
            x = x if ok else np.float32(-np.inf)
            row[c] = x
            m = max(m, x)
        if m == np.float32(-np.inf):
            for c in range(n):
                row[c] = 0.0
            continue
        z = np.float32(0.0)
        for c in range(n):
            e = _exp_neg(row[c] - m)
            row[c] = e
            z += e
        inv = np.float32(1.0) / z
        for c in range(n):
            row[c] *= inv
