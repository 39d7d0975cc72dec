"""Flash attention over the KV cache: online softmax over KV tiles, masks computed from cell metadata.

Leaf kernel module (numpy, numba and sibling kernel modules; the online softmax is softmax.py's). Shapes are
numpy row-major. Each K/V row is read once per kv head for all query heads of its GQA group (and all queries
of a query tile): f32/f16/bf16 rows by the register blocks in place (widened in registers) where an item has
few rows, otherwise dequantized one KV tile at a time into a small f32 scratch.
"""

import numpy as np
from numba import njit, prange

from .attn_blocks import HAS_BLOCKS, gathered, pv4_rows, row_addresses, scores_4, values_4
from .config import FASTMATH
from .kv import decode_tile
from .matmul_q8_0 import keep_alive
from .softmax import (_row_max, add_pv, cell_scratch, exp_neg, finish_item, merge_split_row, online_update, qk_scores,
                      query_seqs, split_partials, start_rows, tile_mask, work_item)


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
    blocks = HAS_BLOCKS and kv_tile % 4 == 0
    # f32/f16/bf16 rows of items of few rows: the register blocks read the cache rows themselves (by address,
    # widened in registers); otherwise each tile's rows are dequantized into f32 tiles first
    direct = blocks and gathered(kind_k, R) and gathered(kind_v, R)
    kt = np.zeros((0 if direct else kv_tile, dk), dtype=np.float32)  # [kv_tile, dk] dequantized K tile
    vt = np.zeros((0 if direct else kv_tile, dv), dtype=np.float32)  # [kv_tile, dv] dequantized V tile
    ka = np.empty(kv_tile + 4 if direct else 0, dtype=np.int64)  # the tile's K and V row addresses (padded to 4)
    va = np.empty(kv_tile + 4 if direct else 0, dtype=np.int64)
    zrow = np.zeros(max(dk, dv) * 4 if direct else 0, dtype=np.uint8)  # the row of cells no query sees
    va_p, z_p = np.int64(va.ctypes.data), np.int64(zrow.ctypes.data)
    a_p, a_rs = np.int64(acc.ctypes.data), np.int64(acc.strides[0])
    s = np.empty((R, kv_tile), dtype=np.float32)  # [R, kv_tile] scores, then probabilities
    mask = np.empty((nt, kv_tile), dtype=np.float32)  # [nt, kv_tile] 0 = visible, -inf = masked
    cvis, cpos, cseq = cell_scratch(kv_tile)  # cells visible to some query of the item; positions, sequences
    qseq = query_seqs(q_seq, t0, t1)
    start_rows(acc, m, l)
    R4 = R - R % 4 if blocks else 0  # rows in the register blocks; the others take the plain loops
    s_p, s_rs = np.int64(s.ctypes.data), np.int64(s.strides[0])
    for cb in range(c0, c1, kv_tile):
        nc = min(kv_tile, c1 - cb)
        if not tile_mask(mask, cvis, cpos, cseq, kv_idx, cb, nc, cell_pos, cell_seq, q_pos, qseq, t0, n_swa):
            continue
        # dequantize (or, in place, address) only the cells someone sees; the others stay finite (zeros or an old
        # row; in place: the zero row) and are masked
        if direct:
            row_addresses(ka, np.int64(k.ctypes.data), np.int64(k.strides[0]), np.int64(g * dk) * k.itemsize, kv_idx,
                          cb, nc, cvis, z_p)
            row_addresses(va, np.int64(v.ctypes.data), np.int64(v.strides[0]),
                          np.int64(v_off + g * dv) * v.itemsize, kv_idx, cb, nc, cvis, z_p)
        else:
            decode_tile(kt, k, kv_idx, cb, nc, cvis, g * dk, dk, kind_k, seg_k)
            decode_tile(vt, v, kv_idx, cb, nc, cvis, v_off + g * dv, dv, kind_v, seg_v)
        if blocks:  # 4 rows x 4 cells a block; the last block pads with the tile's other (finite, unused) rows, so a
            # score has the same arithmetic wherever the tile boundaries fall
            for j0 in range(0, (nc + 3) // 4 * 4, 4):
                scores_4(direct, kind_k, s, qs, ka, kt, j0, R4, dk)
        if not direct:  # (the rows the blocks leave: none in place)
            qk_scores(s, qs, kt, R4, R, 0, nc)
        online_update(s, mask, n_gqa, nc, scale, softcap, acc, m, l)
        if direct:  # acc += P @ V: 4 rows x 16-64 values in registers across the tile's cells
            for r0 in range(0, R4, 4):
                pv4_rows(kind_v, a_p + r0 * a_rs, a_rs, s_p + r0 * s_rs, s_rs, va_p, 0, nc, dv)
        elif blocks:
            values_4(acc, s, vt, 0, R4, nc)
        add_pv(acc, s, vt, 0, R4, R, 0, nc)
    keep_alive(ka, va, zrow)


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
    bounds, pm, pl, pacc = split_partials(n_kv, n_split, kv_tile, n_tok, n_head, dv)
    n_items = n_head_kv * n_qt * n_split
    for it in prange(n_items):
        g, sp, t0, t1, c0, c1, acc, m, l = work_item(it, n_split, n_qt, q_tile, n_tok, bounds, dv, n_gqa)
        _attn_item(acc, m, l, q, k, v, kind_k, kind_v, seg_k, seg_v, v_off, cell_pos, cell_seq, kv_idx, q_pos, q_seq,
                   scale, n_swa, softcap, g, t0, t1, c0, c1, kv_tile)
        finish_item(dst, pm, pl, pacc, acc, m, l, t0, g, n_gqa, sp, n_split)
    if n_split == 1:
        return
    for th in prange(n_tok * n_head):
        merge_split_row(dst, pm, pl, pacc, th // n_head, th % n_head)


@njit(cache=True, nogil=True, fastmath=FASTMATH)
def softmax_masked_rows(s, n_gqa, t0, q_pos, q_seq, cell_pos, cell_seq, n_swa, softcap):
    """In place: masked softmax of score rows for the matrix-product prompt path (serial; called per task).

    s: [n_rows, n] f32, row r belongs to query t0 + r // n_gqa; cell_pos [n] int32 and cell_seq [n]
    uint64 describe the columns (cells in scan order); q_pos/q_seq [n_tok] int32. Rows that see no
    cell become zeros. softcap > 0 applies softcap*tanh(s/softcap) before the mask.
    """
    n_rows, n = s.shape
    neg = np.float32(-np.inf)
    # the cells of the query's sequence, computed when the sequence changes; each row then masks by position in
    # one branch-free (vectorized) pass
    sok = np.empty(n, np.bool_)
    seq_of = -1
    for r in range(n_rows):
        t = t0 + r // n_gqa
        if q_seq[t] != seq_of:
            seq_of = q_seq[t]
            bit = np.uint64(1) << np.uint64(seq_of)
            for c in range(n):
                sok[c] = (cell_seq[c] & bit) != 0
        qp = q_pos[t]
        row = s[r]
        if softcap > 0.0:
            for c in range(n):
                row[c] = softcap * np.tanh(row[c] / softcap)
        if n_swa <= 0:
            for c in range(n):
                row[c] = row[c] if sok[c] & (cell_pos[c] <= qp) else neg
        else:
            for c in range(n):
                row[c] = row[c] if sok[c] & (cell_pos[c] <= qp) & (qp - cell_pos[c] < n_swa) else neg
        m = _row_max(row, n)
        if m == neg:
            for c in range(n):
                row[c] = 0.0
            continue
        z = np.float32(0.0)
        for c in range(n):
            e = exp_neg(row[c] - m)
            row[c] = e
            z += e
        inv = np.float32(1.0) / z
        for c in range(n):
            row[c] *= inv
