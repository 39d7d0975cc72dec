"""FlashMLA on the CPU: absorbed multi-head latent attention over a K-only cache (one latent row per cell).

Leaf kernel module (numpy, numba and sibling kernel modules only). Every query head attends to the same cache row
[k_pe (n_rot) | c_kv (kv_lora_rank)]; V is the c_kv part of that row, so each KV tile is dequantized
once into an f32 scratch and serves the scores and the value sum of all heads. Shapes are numpy row-major.
"""

import numpy as np
from numba import njit, prange

from .attention import _exp_neg
from .config import FASTMATH
from .kv import Q8_0_BLOCK_BYTES, QK8_0, decode_row, encode_row
from .norm import _rms_row
from .quants_legacy import ROW_TILE, _q_bias, _rows_q_legacy, quantize_rows_q8_0, x_aux_q8_0
from .rope import _rope_norm_row
from .simd import PREFETCH_BYTES
from .simd_legacy import AUX_BYTES, AUX_WORDS

@njit(cache=True, nogil=True, fastmath=FASTMATH)
def _dot4x4(s, q0, q1, q2, q3, k0, k1, k2, k3, r0, j0, n):
    """s[r0:r0+4, j0:j0+4] = the 16 dot products of 4 query rows with 4 key rows (length n)."""
    z = np.float32(0.0)
    d00 = z; d01 = z; d02 = z; d03 = z  # noqa: E702
    d10 = z; d11 = z; d12 = z; d13 = z  # noqa: E702
    d20 = z; d21 = z; d22 = z; d23 = z  # noqa: E702
    d30 = z; d31 = z; d32 = z; d33 = z  # noqa: E702
    for i in range(n):
        a0 = q0[i]
        a1 = q1[i]
        a2 = q2[i]
        a3 = q3[i]
        b0 = k0[i]
        b1 = k1[i]
        b2 = k2[i]
        b3 = k3[i]
        d00 += a0 * b0; d01 += a0 * b1; d02 += a0 * b2; d03 += a0 * b3  # noqa: E702
        d10 += a1 * b0; d11 += a1 * b1; d12 += a1 * b2; d13 += a1 * b3  # noqa: E702
        d20 += a2 * b0; d21 += a2 * b1; d22 += a2 * b2; d23 += a2 * b3  # noqa: E702
        d30 += a3 * b0; d31 += a3 * b1; d32 += a3 * b2; d33 += a3 * b3  # noqa: E702
    s[r0, j0] = d00; s[r0, j0 + 1] = d01; s[r0, j0 + 2] = d02; s[r0, j0 + 3] = d03  # noqa: E702
    s[r0 + 1, j0] = d10; s[r0 + 1, j0 + 1] = d11; s[r0 + 1, j0 + 2] = d12; s[r0 + 1, j0 + 3] = d13  # noqa: E702
    s[r0 + 2, j0] = d20; s[r0 + 2, j0 + 1] = d21; s[r0 + 2, j0 + 2] = d22; s[r0 + 2, j0 + 3] = d23  # noqa: E702
    s[r0 + 3, j0] = d30; s[r0 + 3, j0 + 1] = d31; s[r0 + 3, j0 + 2] = d32; s[r0 + 3, j0 + 3] = d33  # noqa: E702


@njit(cache=True, nogil=True, fastmath=FASTMATH)
def _axpy4x4(a0, a1, a2, a3, s, r0, j0, v0, v1, v2, v3, n):
    """a_r[:n] += sum_j s[r0+r, j0+j] * v_j[:n] for 4 accumulator rows and 4 value rows."""
    p00 = s[r0, j0]; p01 = s[r0, j0 + 1]; p02 = s[r0, j0 + 2]; p03 = s[r0, j0 + 3]  # noqa: E702
    p10 = s[r0 + 1, j0]; p11 = s[r0 + 1, j0 + 1]; p12 = s[r0 + 1, j0 + 2]; p13 = s[r0 + 1, j0 + 3]  # noqa: E702
    p20 = s[r0 + 2, j0]; p21 = s[r0 + 2, j0 + 1]; p22 = s[r0 + 2, j0 + 2]; p23 = s[r0 + 2, j0 + 3]  # noqa: E702
    p30 = s[r0 + 3, j0]; p31 = s[r0 + 3, j0 + 1]; p32 = s[r0 + 3, j0 + 2]; p33 = s[r0 + 3, j0 + 3]  # noqa: E702
    for i in range(n):
        b0 = v0[i]
        b1 = v1[i]
        b2 = v2[i]
        b3 = v3[i]
        a0[i] += p00 * b0 + p01 * b1 + p02 * b2 + p03 * b3
        a1[i] += p10 * b0 + p11 * b1 + p12 * b2 + p13 * b3
        a2[i] += p20 * b0 + p21 * b1 + p22 * b2 + p23 * b3
        a3[i] += p30 * b0 + p31 * b1 + p32 * b2 + p33 * b3


@njit(cache=True, nogil=True, fastmath=FASTMATH)
def _mla_item(acc, m, l, q, k, kind, v_off, cell_pos, cell_seq, kv_idx, q_pos, q_seq, scale, t0, t1, c0, c1,
              kv_tile):
    """One work item: every head of query tokens [t0, t1) over cells kv_idx[c0:c1]; unnormalized result.

    acc [R, dv] f32, m [R] f32, l [R] f32 with R = (t1 - t0) * n_head, row r = (t - t0) * n_head + h.
    """
    n_head = q.shape[1]
    dk = q.shape[2]
    dv = acc.shape[1]
    nt = t1 - t0
    R = nt * n_head
    qs = np.empty((R, dk), dtype=np.float32)  # [R, dk] the item's query rows, contiguous
    for tl in range(nt):
        for h in range(n_head):
            qr = qs[tl * n_head + h]
            src = q[t0 + tl, h]
            for i in range(dk):
                qr[i] = src[i]
    kt = np.zeros((kv_tile, dk), dtype=np.float32)  # [kv_tile, dk] dequantized latent rows (K and V)
    s = np.empty((R, kv_tile), dtype=np.float32)  # [R, kv_tile] scores, then probabilities
    mask = np.empty((nt, kv_tile), dtype=np.float32)  # [nt, kv_tile] 0 visible, -inf masked
    cvis = np.empty(kv_tile, dtype=np.bool_)
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
    R4 = R - R % 4
    for cb in range(c0, c1, kv_tile):
        nc = min(kv_tile, c1 - cb)
        any_vis = False
        for j in range(nc):
            c = kv_idx[cb + j]
            cs = cell_seq[c]
            cp = cell_pos[c]
            cv = False
            for tl in range(nt):
                ok = ((cs >> qseq[tl]) & one) == one and cp <= q_pos[t0 + tl]
                mask[tl, j] = zero if ok else neg_inf
                cv = cv or ok
            cvis[j] = cv
            any_vis = any_vis or cv
        if not any_vis:
            continue
        for j in range(nc):  # one dequantization per cell serves every head's K and V
            if cvis[j]:
                decode_row(kt[j], k[kv_idx[cb + j]], 0, dk, kind, 0)
        nc4 = nc - nc % 4
        for j0 in range(0, nc4, 4):  # 4 cells x 4 heads per pass: 8 row loads feed 16 accumulators
            k0 = kt[j0]
            k1 = kt[j0 + 1]
            k2 = kt[j0 + 2]
            k3 = kt[j0 + 3]
            for r0 in range(0, R4, 4):
                _dot4x4(s, qs[r0], qs[r0 + 1], qs[r0 + 2], qs[r0 + 3], k0, k1, k2, k3, r0, j0, dk)
            for r in range(R4, R):
                qr = qs[r]
                for jj in range(4):
                    kr = kt[j0 + jj]
                    d = zero
                    for i in range(dk):
                        d += qr[i] * kr[i]
                    s[r, j0 + jj] = d
        for j in range(nc4, nc):
            kr = kt[j]
            for r in range(R):
                qr = qs[r]
                d = zero
                for i in range(dk):
                    d += qr[i] * kr[i]
                s[r, j] = d
        for r in range(R):
            sr = s[r]
            mr = mask[r // n_head]
            smax = neg_inf
            for j in range(nc):
                sr[j] = sr[j] * scale + mr[j]
                if sr[j] > smax:
                    smax = sr[j]
            if smax == neg_inf:
                for j in range(nc):
                    sr[j] = zero
                continue
            m_old = m[r]
            m_new = smax if smax > m_old else m_old
            alpha = _exp_neg(m_old - m_new)
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
        for r0 in range(0, R4, 4):  # 4 heads x 4 cells per pass over the accumulators
            a0 = acc[r0]
            a1 = acc[r0 + 1]
            a2 = acc[r0 + 2]
            a3 = acc[r0 + 3]
            for j0 in range(0, nc4, 4):
                _axpy4x4(a0, a1, a2, a3, s, r0, j0, kt[j0, v_off:v_off + dv], kt[j0 + 1, v_off:v_off + dv],
                         kt[j0 + 2, v_off:v_off + dv], kt[j0 + 3, v_off:v_off + dv], dv)
            for j in range(nc4, nc):
                p0 = s[r0, j]
                p1 = s[r0 + 1, j]
                p2 = s[r0 + 2, j]
                p3 = s[r0 + 3, j]
                vr = kt[j, v_off:v_off + dv]
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
                vr = kt[j, v_off:v_off + dv]
                for i in range(dv):
                    ar[i] += p * vr[i]


@njit(cache=True, nogil=True, fastmath=FASTMATH, parallel=True)
def flash_attn_mla(dst, q, k, kind, v_off, cell_pos, cell_seq, kv_idx, q_pos, q_seq, scale, q_tile, kv_tile,
                   n_split):
    """Absorbed MLA attention of a ubatch over latent cache rows, online softmax over KV tiles.

    dst      [n_tok, n_head, dv] f32     output: per head the attention-weighted sum of c_kv (latent, dv = kv_lora_rank)
    q        [n_tok, n_head, dk] f32     per head [q_pe (n_rot) | q_nope . W_UK (kv_lora_rank)], the cache row order
    k        [n_cells, row]              cache rows [k_pe | c_kv]: uint32 (f32 bits) | uint16 (f16/bf16) | uint8 (q8_0)
    kind     KIND_F32 | KIND_F16 | KIND_BF16 | KIND_Q8_0
    v_off    int    element offset of c_kv inside a row (n_rot); dk = v_off + dv
    cell_pos [n_cells] int32, cell_seq [n_cells] uint64 bitsets, kv_idx [n_kv] int32 cells in scan order
    q_pos [n_tok] int32, q_seq [n_tok] int32; scale f32 (the softmax scale, mscale^2/sqrt(head_dim_k))
    q_tile tokens per item (all heads of a token share the K tile); kv_tile cells per tile; n_split KV splits.
    Items (query tile, split) run in parallel; the splits are merged in a fixed order afterwards, so
    the result does not depend on the thread count. A query that sees no cell gets zeros.
    """
    n_tok = q.shape[0]
    n_head = q.shape[1]
    dv = dst.shape[2]
    n_kv = kv_idx.shape[0]
    n_qt = (n_tok + q_tile - 1) // q_tile
    split_len = (n_kv + n_split - 1) // n_split
    split_len = (split_len + kv_tile - 1) // kv_tile * kv_tile
    ns = n_split if n_split > 1 else 0
    pm = np.empty((ns, n_tok, n_head), dtype=np.float32)  # [n_split, n_tok, n_head] running max
    pl = np.empty((ns, n_tok, n_head), dtype=np.float32)  # [n_split, n_tok, n_head] softmax sum
    pacc = np.empty((ns, n_tok, n_head, dv), dtype=np.float32)  # [n_split, n_tok, n_head, dv]
    for it in prange(n_qt * n_split):
        sp = it % n_split
        qt = it // n_split
        t0 = qt * q_tile
        t1 = min(n_tok, t0 + q_tile)
        c0 = min(n_kv, sp * split_len)
        c1 = min(n_kv, c0 + split_len)
        R = (t1 - t0) * n_head
        acc = np.empty((R, dv), dtype=np.float32)  # [R, dv]
        m = np.empty(R, dtype=np.float32)
        l = np.empty(R, dtype=np.float32)
        _mla_item(acc, m, l, q, k, kind, v_off, cell_pos, cell_seq, kv_idx, q_pos, q_seq, scale, t0, t1, c0, c1,
                  kv_tile)
        for r in range(R):
            t = t0 + r // n_head
            h = r % n_head
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
        for i in range(dv):
            dst[t, h, i] = np.float32(0.0)
        if mx == np.float32(-np.inf):
            continue
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


# ------------------------------------------------------------------ one decoded token, fused
# q_nope . W_UK per head, FlashMLA over the latent cache, then . W_UV per head, in one call: the three
# parallel regions that ops.matmul.matmul_id + flash_attn_mla + matmul_id run, without Python between them
# (one region when the cells need no KV split).
HEAD_GROUP = 4  # heads per work item of the one-region decode (few cells); a multiple of _mla_item's 4


@njit(cache=True, nogil=True, fastmath=FASTMATH, parallel=True)
def mla_decode_legacy(dst, q_nope, q_pe, k_b, kb_kind, v_b, v_row0, vb_kind, k, kind, cell_pos, cell_seq, kv_idx,
                      q_pos, q_seq, scale, kv_tile, n_split):
    """Absorbed MLA attention of one token; weights W_UK / W_UV in a legacy quant format (KIND_Q8_0/Q4_0/Q5_0
    of quants_legacy).

    dst      [n_head, dv] f32          out: per head o_lat . W_UV (dv = the value head size)
    q_nope   [n_head, dn] f32          the no-rope query part; q_pe [n_head, n_rot] f32 (roped)
    k_b      [n_head*C, dn row bytes]  W_UK, head h's C rows from row h*C (C = kv_lora_rank)
    v_b      [rows, C row bytes]       W_UV, head h's dv rows from row v_row0[h] ([n_head] int64)
    k, kind, cell_pos, cell_seq, kv_idx, q_pos, q_seq, scale, kv_tile, n_split: as flash_attn_mla
    (one token, q_tile 1). Validated by ops.mla.
    """
    n_head, dn = q_nope.shape
    n_rot = q_pe.shape[1]
    C = k_b.shape[0] // n_head
    dv = dst.shape[1]
    pf = np.int64(PREFETCH_BYTES)
    nbq = dn // QK8_0
    qq = np.empty((n_head, nbq * Q8_0_BLOCK_BYTES), np.uint8)   # [n_head, nbq*34] q_nope as Q8_0
    quantize_rows_q8_0(qq, q_nope)
    qc = np.empty((n_head, nbq, AUX_WORDS), np.int32)
    x_aux_q8_0(qc, qq, _q_bias(kb_kind))
    qa = np.empty((1, n_head, n_rot + C), np.float32)          # [1, n_head, n_rot + C] = [q_pe | q_nope W_UK]
    for h in range(n_head):
        for i in range(n_rot):
            qa[0, h, i] = q_pe[h, i]
    kbs = np.int64(k_b.strides[0])
    vbs = np.int64(v_b.strides[0])
    nbo = C // QK8_0
    if n_split == 1 and n_head % HEAD_GROUP == 0:
        # few cells: one parallel region, a work item per group of HEAD_GROUP heads running W_UK, the attention
        # and W_UV of its heads back to back (each item reads the few cache rows itself). The same arithmetic
        # per head as the three regions below: _mla_item treats heads in fours, whatever the group.
        for g in prange(n_head // HEAD_GROUP):
            h0 = g * HEAD_GROUP
            h1 = h0 + HEAD_GROUP
            for h in range(h0, h1):
                _rows_q_legacy(kb_kind, np.int64(k_b.ctypes.data) + h * C * kbs, kbs, 0, C,
                               np.int64(qq.ctypes.data) + h * np.int64(qq.strides[0]),
                               np.int64(qc.ctypes.data) + h * nbq * AUX_BYTES, np.int64(nbq), qa[0, h, n_rot:], pf)
            acc = np.empty((HEAD_GROUP, C), dtype=np.float32)
            m = np.empty(HEAD_GROUP, dtype=np.float32)
            l = np.empty(HEAD_GROUP, dtype=np.float32)
            _mla_item(acc, m, l, qa[:, h0:h1, :], k, kind, n_rot, cell_pos, cell_seq, kv_idx, q_pos, q_seq, scale,
                      0, 1, 0, kv_idx.shape[0], kv_tile)
            og = np.empty((HEAD_GROUP, C), dtype=np.float32)
            for r in range(HEAD_GROUP):
                inv = np.float32(1.0) / l[r] if l[r] > np.float32(0.0) else np.float32(0.0)
                for i in range(C):
                    og[r, i] = acc[r, i] * inv
            oq = np.empty((HEAD_GROUP, nbo * Q8_0_BLOCK_BYTES), np.uint8)
            quantize_rows_q8_0(oq, og)
            oc = np.empty((HEAD_GROUP, nbo, AUX_WORDS), np.int32)
            x_aux_q8_0(oc, oq, _q_bias(vb_kind))
            for r in range(HEAD_GROUP):
                _rows_q_legacy(vb_kind, np.int64(v_b.ctypes.data) + v_row0[h0 + r] * vbs, vbs, 0, dv,
                               np.int64(oq.ctypes.data) + r * np.int64(oq.strides[0]),
                               np.int64(oc.ctypes.data) + r * nbo * AUX_BYTES, np.int64(nbo), dst[h0 + r], pf)
        return
    nt = (C + ROW_TILE - 1) // ROW_TILE
    for it in prange(n_head * nt):
        h = it // nt
        r0 = (it % nt) * ROW_TILE
        _rows_q_legacy(kb_kind, np.int64(k_b.ctypes.data) + h * C * kbs, kbs, r0, min(r0 + ROW_TILE, C),
                       np.int64(qq.ctypes.data) + h * np.int64(qq.strides[0]),
                       np.int64(qc.ctypes.data) + h * nbq * AUX_BYTES, np.int64(nbq), qa[0, h, n_rot:], pf)
    o_lat = np.empty((1, n_head, C), np.float32)               # [1, n_head, C] attention over the latents
    flash_attn_mla(o_lat, qa, k, kind, n_rot, cell_pos, cell_seq, kv_idx, q_pos, q_seq, scale, 1, kv_tile, n_split)
    oq = np.empty((n_head, nbo * Q8_0_BLOCK_BYTES), np.uint8)  # [n_head, nbo*34] o_lat as Q8_0
    quantize_rows_q8_0(oq, o_lat[0])
    oc = np.empty((n_head, nbo, AUX_WORDS), np.int32)
    x_aux_q8_0(oc, oq, _q_bias(vb_kind))
    nt2 = (dv + ROW_TILE - 1) // ROW_TILE
    for it in prange(n_head * nt2):
        h = it // nt2
        r0 = (it % nt2) * ROW_TILE
        _rows_q_legacy(vb_kind, np.int64(v_b.ctypes.data) + v_row0[h] * vbs, vbs, r0, min(r0 + ROW_TILE, dv),
                       np.int64(oq.ctypes.data) + h * np.int64(oq.strides[0]),
                       np.int64(oc.ctypes.data) + h * nbo * AUX_BYTES, np.int64(nbo), dst[h], pf)


# ---------------------------------------------------------------------- a decoded token's attention block
# One call for everything between the residual stream and its update: attn_norm, the q (or q_a, q_a_norm,
# q_b) and kv_a rows, kv_a_norm, RoPE, the cache store, the absorbed attention and attn_output. The same
# arithmetic as the model's op-by-op path (rms_norm, linear_multi, rope, KVCache.store, mla_decode_legacy,
# Linear): each output row is one fixed-order block dot, whatever the tiling.


@njit(cache=True, nogil=True, fastmath=FASTMATH)
def _q8_0_with_aux(x, kind):
    """x [n] f32 -> (the Q8_0 row [1, n/32*34] uint8, its aux words [1, n/32, 2] int32 for weights of kind)."""
    nb = x.shape[0] // QK8_0
    xq = np.empty((1, nb * Q8_0_BLOCK_BYTES), np.uint8)
    quantize_rows_q8_0(xq, x.reshape(1, x.shape[0]))
    xc = np.empty((1, nb, AUX_WORDS), np.int32)
    x_aux_q8_0(xc, xq, _q_bias(kind))
    return xq, xc


@njit(cache=True, nogil=True, fastmath=FASTMATH, parallel=True)
def _matvec_legacy(dst, w, kind, x):
    """dst = w . x for one token: ROW_TILE rows a work item (as matmul_q_legacy runs one token).

    dst: [n_out] f32; w: [n_out, row bytes] uint8 of kind (quants_legacy KIND_Q8_0/Q4_0/Q5_0); x: [n_in] f32.
    """
    xq, xc = _q8_0_with_aux(x, kind)
    nb = np.int64(xc.shape[1])
    n_out = w.shape[0]
    pf = np.int64(PREFETCH_BYTES)
    for it in prange((n_out + ROW_TILE - 1) // ROW_TILE):
        r0 = it * ROW_TILE
        _rows_q_legacy(kind, np.int64(w.ctypes.data), np.int64(w.strides[0]), r0, min(r0 + ROW_TILE, n_out),
                       np.int64(xq.ctypes.data), np.int64(xc.ctypes.data), nb, dst, pf)


@njit(cache=True, nogil=True, fastmath=FASTMATH, parallel=True)
def mla_block_decode_legacy(x, attn_norm, eps, wq, q_kind, wkv, kv_kind, wqb, qb_kind, q_a_norm, kv_a_norm, cos,
                            sin, k_b, kb_kind, v_b, v_row0, vb_kind, k, kind, cell, cell_pos, cell_seq, kv_idx,
                            q_pos, q_seq, scale, kv_tile, n_split, wo, wo_kind, dn, dv):
    """x += attn_output(MLA attention of rmsnorm(x) * attn_norm) for one token, its latent row stored in the cache.

    x          [n_embd] f32 in/out     the residual stream
    attn_norm  [n_embd] f32; eps: the RMSNorm epsilon
    wq         [n_q, rb] uint8         attn_q (n_q = n_head*(dn + n_rot)), or attn_q_a (n_q = q_lora_rank)
    wkv        [C + n_rot, rb] uint8   attn_kv_a_mqa; q_kind, kv_kind: their quants_legacy KIND_*
    wqb        [n_head*(dn + n_rot), n_q row bytes] uint8 attn_q_b, or 0 rows (no q_lora); q_a_norm [n_q] f32
    kv_a_norm  [C] f32; cos, sin: [n_rot/2] f32 the token's RoPE table row (GPT-J pairs)
    k_b .. vb_kind, k, kind, cell_pos .. n_split: as mla_decode_legacy; cell: the cache row this token writes
    wo         [n_embd, n_head*dv row bytes] uint8 attn_output of wo_kind
    Shapes are validated by ops.mla.MLABlockDecode (every row length a multiple of 32).
    """
    n_embd = x.shape[0]
    n_head = v_row0.shape[0]
    C = kv_a_norm.shape[0]
    n_rot = cos.shape[0] * 2
    dk = dn + n_rot
    pf = np.int64(PREFETCH_BYTES)
    # (1) attn_norm, x as Q8_0 once, the q (or q_a) rows and the kv_a rows in one region
    h = np.empty(n_embd, np.float32)
    _rms_row(h, x, attn_norm, eps)
    xq, xc = _q8_0_with_aux(h, q_kind)
    xc2 = np.empty((1, xc.shape[1], AUX_WORDS), np.int32)
    x_aux_q8_0(xc2, xq, _q_bias(kv_kind))
    nbx = np.int64(xc.shape[1])
    n_q = wq.shape[0]
    n_kva = wkv.shape[0]
    qa = np.empty(n_q, np.float32)
    kva = np.empty(n_kva, np.float32)
    nt_q = (n_q + ROW_TILE - 1) // ROW_TILE
    for it in prange(nt_q + (n_kva + ROW_TILE - 1) // ROW_TILE):
        if it < nt_q:
            r0 = it * ROW_TILE
            _rows_q_legacy(q_kind, np.int64(wq.ctypes.data), np.int64(wq.strides[0]), r0, min(r0 + ROW_TILE, n_q),
                           np.int64(xq.ctypes.data), np.int64(xc.ctypes.data), nbx, qa, pf)
        else:
            r0 = (it - nt_q) * ROW_TILE
            _rows_q_legacy(kv_kind, np.int64(wkv.ctypes.data), np.int64(wkv.strides[0]), r0,
                           min(r0 + ROW_TILE, n_kva), np.int64(xq.ctypes.data), np.int64(xc2.ctypes.data), nbx,
                           kva, pf)
    # (2) with q_lora: q = attn_q_b(rmsnorm(q_a) * q_a_norm)
    if wqb.shape[0] > 0:
        qn = np.empty(n_q, np.float32)
        _rms_row(qn, qa, q_a_norm, eps)
        q = np.empty(wqb.shape[0], np.float32)
        _matvec_legacy(q, wqb, qb_kind, qn)
    else:
        q = qa
    # the cache row [rope(k_pe) | rmsnorm(c_kv)], the heads' q_nope and rope(q_pe)
    row = np.empty(n_rot + C, np.float32)
    _rms_row(row[n_rot:], kva[:C], kv_a_norm, eps)
    for i in range(n_rot):
        row[i] = kva[C + i]
    _rope_norm_row(row[:n_rot], cos, sin)
    encode_row(k[cell], row, kind, 0, 0, row.shape[0])
    q_nope = np.empty((n_head, dn), np.float32)
    q_pe = np.empty((n_head, n_rot), np.float32)
    for hh in range(n_head):
        for i in range(dn):
            q_nope[hh, i] = q[hh * dk + i]
        for i in range(n_rot):
            q_pe[hh, i] = q[hh * dk + dn + i]
        _rope_norm_row(q_pe[hh], cos, sin)
    # (3) W_UK, FlashMLA, W_UV
    attn = np.empty((n_head, dv), np.float32)
    mla_decode_legacy(attn, q_nope, q_pe, k_b, kb_kind, v_b, v_row0, vb_kind, k, kind, cell_pos, cell_seq, kv_idx,
                      q_pos, q_seq, scale, kv_tile, n_split)
    # (4) attn_output and the residual
    y = np.empty(n_embd, np.float32)
    _matvec_legacy(y, wo, wo_kind, attn.reshape(n_head * dv))
    for i in range(n_embd):
        x[i] += y[i]
