"""FlashMLA on the CPU: absorbed multi-head latent attention over a K-only cache (one latent row per cell).

Leaf kernel module (numpy, numba and sibling kernel modules only). Every query head attends to the same cache row
[k_pe (n_rot) | c_kv (kv_lora_rank)]; V is the c_kv part of that row, so each cell's row serves the scores
and the value sum of all heads: f32/f16/bf16 rows read in place by the register blocks (items of few rows),
otherwise dequantized once per KV tile into an f32 scratch. A q8_0 cache's scores are integer block dots
against the queries quantized to Q8_0, as llama.cpp computes q8_0 K (its tile then dequantizes V's part
only). Shapes are numpy row-major.
"""

import numpy as np
from numba import njit, prange

from .attention_mla_amx import HAS_AMX_BF16, TILE as AMX_TILE, amx_fits, mla_item_amx, pack_q
from .attention_mla_amx16 import amx16_fits, mla_item_amx16, pack_q16, query_scale
from .attn_blocks import HAS_BLOCKS, gathered, pv4_rows, row_addresses, scores_4, values_4
from .config import FASTMATH
from .dots_q8_0 import AUX_WORDS, ROWS, dot_q8_0_q8_0
from .kv import KIND_F32, KIND_Q8_0, Q8_0_BLOCK_BYTES, QK8_0, decode_row
from .matmul_q8_0 import NT, _q_bias, _tile_q, keep_alive, quantize_rows_q8_0, tile_tokens, x_aux_q8_0
from .simd import PREFETCH_BYTES, prefetch
from .softmax import (add_pv, cell_scratch, finish_item, merge_split_row, online_update, qk_scores, query_seqs,
                      split_partials, start_rows, tile_mask, work_item)

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
def _scores_q8_0(s, qq, qc, k, kv_idx, cb, nc, k8, nb):
    """s[r, j] = the Q8_0 dot of query row r (qq, its aux words qc) with cache row kv_idx[cb + j], for j < nc:
    the integer block sums of llama.cpp's q8_0 K against its Q8_0-quantized Q, on the matmuls' 8-row tiles
    (8 cells x NT query rows a pass; 8 cells whose rows are not adjacent are copied into k8 first), the tile's
    last nc % 8 cells one by one (the same bits: every kernel sums a block pair alike)."""
    R = s.shape[0]
    k_p, k_rs = np.int64(k.ctypes.data), np.int64(k.strides[0])
    q_p, q_rs = np.int64(qq.ctypes.data), np.int64(qq.strides[0])
    c_p, c_rs = np.int64(qc.ctypes.data), np.int64(qc.strides[0])
    s_p, s_rs = np.int64(s.ctypes.data), np.int64(s.strides[0])
    pf = np.int64(PREFETCH_BYTES)
    rb = k8.shape[1]
    n8 = nc - nc % ROWS
    for j0 in range(0, n8, ROWS):
        c0 = np.int64(kv_idx[cb + j0])
        adjacent = True
        for i in range(1, ROWS):
            adjacent = adjacent and np.int64(kv_idx[cb + j0 + i]) == c0 + i
        if adjacent:
            wp, ws = k_p + c0 * k_rs, k_rs
        else:
            for i in range(ROWS):
                k8[i, :] = k[kv_idx[cb + j0 + i], :rb]
            wp, ws = np.int64(k8.ctypes.data), np.int64(k8.strides[0])
        r = 0
        while r < R:
            n = tile_tokens(R - r, NT)
            _tile_q(KIND_Q8_0, n, wp, ws, q_p + r * q_rs, q_rs, c_p + r * c_rs, c_rs, nb, s_p + r * s_rs + j0 * 4,
                    s_rs // 4, pf)
            r += n
    for j in range(n8, nc):
        rp = k_p + np.int64(kv_idx[cb + j]) * k_rs
        for r in range(R):
            s[r, j] = dot_q8_0_q8_0(rp, q_p + r * q_rs, c_p + r * c_rs, nb, pf)
    keep_alive(k8, qq)


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
    blocks = HAS_BLOCKS and kv_tile % 4 == 0
    # f32/f16/bf16 rows of items of few rows: the register blocks read the cache rows themselves (by address,
    # widened in registers); otherwise (a q8_0 cache aside) each tile's rows are dequantized into an f32 tile first
    direct = blocks and gathered(kind, R)
    kt = np.empty((0 if direct else kv_tile, dk), dtype=np.float32)  # [kv_tile, dk] dequantized latent rows (K and V)
    ka = np.empty(kv_tile + 4 if direct else 0, dtype=np.int64)  # the tile's row addresses, padded to 4 cells
    zrow = np.zeros(dk * 4 if direct else 0, dtype=np.uint8)  # the row of cells no query sees (zeros in any kind)
    ka_p = np.int64(ka.ctypes.data)
    z_p = np.int64(zrow.ctypes.data)
    a_p = np.int64(acc.ctypes.data)
    a_rs = np.int64(acc.strides[0])
    v_ob = np.int64(v_off) * np.int64(k.itemsize)
    s = np.empty((R, kv_tile), dtype=np.float32)  # [R, kv_tile] scores, then probabilities
    mask = np.empty((nt, kv_tile), dtype=np.float32)  # [nt, kv_tile] 0 visible, -inf masked
    cvis, cpos, cseq = cell_scratch(kv_tile)  # cells visible to some query of the item; positions, sequences
    qseq = query_seqs(q_seq, t0, t1)
    start_rows(acc, m, l)
    s_p = np.int64(s.ctypes.data)  # address and byte stride of the value blocks' probability rows
    s_rs = np.int64(s.strides[0])
    k_p = np.int64(k.ctypes.data)
    k_rs = np.int64(k.strides[0])
    row_bytes = np.int64(k.shape[1]) * np.int64(k.itemsize)
    R4 = R - R % 4
    # a q8_0 cache: the scores are integer dots with the queries quantized to Q8_0 (llama.cpp's q8_0 K), the
    # tile's f32 rows hold only V's part
    q8 = kind == KIND_Q8_0
    nbk = dk // QK8_0 if q8 else 0
    qq = np.empty((R if q8 else 0, nbk * Q8_0_BLOCK_BYTES), dtype=np.uint8)
    qc = np.empty((R if q8 else 0, nbk, AUX_WORDS), dtype=np.int32)
    k8 = np.empty((ROWS if q8 else 0, nbk * Q8_0_BLOCK_BYTES), dtype=np.uint8)
    if q8:
        quantize_rows_q8_0(qq, qs)
        x_aux_q8_0(qc, qq, _q_bias(np.int64(KIND_Q8_0)))
    for cb in range(c0, c1, kv_tile):
        nc = min(kv_tile, c1 - cb)
        if not tile_mask(mask, cvis, cpos, cseq, kv_idx, cb, nc, cell_pos, cell_seq, q_pos, qseq, t0, 0):
            continue
        # one dequantization (or, in place, one address) per cell serves every head's K and V (a q8_0 cache's: V's
        # part, its scores read the rows themselves); the rows of cells no query sees and the rows the 4-cell blocks
        # read past the tile's cells are zeros (finite: their probabilities are 0)
        if direct:
            row_addresses(ka, k_p, k_rs, 0, kv_idx, cb, nc, cvis, z_p)
        else:
            for j in range(min(kv_tile, (nc + 3) // 4 * 4)):
                if j < nc and cvis[j] and q8:
                    decode_row(kt[j, v_off:], k[kv_idx[cb + j]], v_off, dk - v_off, kind, np.int64(0))
                elif j < nc and cvis[j]:
                    decode_row(kt[j], k[kv_idx[cb + j]], np.int64(0), dk, kind, np.int64(0))
                else:
                    kt[j, :] = np.float32(0.0)
        nc4 = nc - nc % 4
        n_next = min(kv_tile, c1 - cb - kv_tile)
        # cells in 4 x 4 blocks; the register blocks pad the last four with the tile's other (finite, unused)
        # rows, so a cell's score has the same arithmetic wherever the tile boundaries fall
        ncb = nc4
        if q8:  # (the Q8_0 tiles' own prefetches run ahead along adjacent cache rows)
            _scores_q8_0(s, qq, qc, k, kv_idx, cb, nc, k8, nbk)
            for j in range(nc):
                if not cvis[j]:  # a cell no query sees: its probabilities are 0, its score must be finite
                    for r in range(R):
                        s[r, j] = np.float32(0.0)
        elif blocks:
            ncb = (nc + 3) // 4 * 4
            for j0 in range(0, ncb, 4):
                for j in range(j0 * n_next // ncb, (j0 + 4) * n_next // ncb):  # the next tile's rows, a few a block
                    ra = k_p + np.int64(kv_idx[cb + kv_tile + j]) * k_rs
                    for o in range(0, row_bytes, 64):
                        prefetch(ra + o)
                scores_4(direct, kind, s, qs, ka, kt, j0, R4, dk)
        else:
            for j0 in range(0, nc4, 4):  # 4 cells x 4 heads per pass: 8 row loads feed 16 accumulators
                k0 = kt[j0]
                k1 = kt[j0 + 1]
                k2 = kt[j0 + 2]
                k3 = kt[j0 + 3]
                for r0 in range(0, R4, 4):
                    _dot4x4(s, qs[r0], qs[r0 + 1], qs[r0 + 2], qs[r0 + 3], k0, k1, k2, k3, r0, j0, dk)
        if not q8 and not direct:  # (the rows and cells the blocks leave: none in place)
            qk_scores(s, qs, kt, R4, R, 0, ncb)
            qk_scores(s, qs, kt, 0, R, ncb, nc)
        online_update(s, mask, n_head, nc, scale, np.float32(0.0), acc, m, l)
        if direct:  # 4 heads x 16-64 values in registers across the tile's cells
            for r0 in range(0, R4, 4):
                pv4_rows(kind, a_p + r0 * a_rs, a_rs, s_p + r0 * s_rs, s_rs, ka_p, v_ob, nc, dv)
        elif blocks:
            values_4(acc, s, kt, v_off, R4, nc)
        else:
            for r0 in range(0, R4, 4):  # 4 heads x 4 cells per pass over the accumulators
                for j0 in range(0, nc4, 4):
                    _axpy4x4(acc[r0], acc[r0 + 1], acc[r0 + 2], acc[r0 + 3], s, r0, j0, kt[j0, v_off:v_off + dv],
                             kt[j0 + 1, v_off:v_off + dv], kt[j0 + 2, v_off:v_off + dv],
                             kt[j0 + 3, v_off:v_off + dv], dv)
            add_pv(acc, s, kt, v_off, 0, R4, nc4, nc)
        add_pv(acc, s, kt, v_off, R4, R, 0, nc)
    keep_alive(ka, zrow)


@njit(cache=True, nogil=True)
def _no_amx_item(acc, m, l, qp, n_head, k, kind, v_off, cell_pos, cell_seq, kv_idx, q_pos, q_seq, scale, t0, t1, c0,
                 c1, g0, cfgp):
    """mla_item_amx's place on targets without AMX-BF16 (whose inline asm they must not compile); never called."""
    return 0


# the AMX items (inline asm) are compiled into flash_attn_mla only for targets that have the tiles
_amx_item = mla_item_amx if HAS_AMX_BF16 else _no_amx_item
_amx16_item = mla_item_amx16 if HAS_AMX_BF16 else _no_amx_item


@njit(cache=True, nogil=True, fastmath=FASTMATH, parallel=True)
def flash_attn_mla(dst, q, k, kind, v_off, cell_pos, cell_seq, kv_idx, q_pos, q_seq, scale, q_tile, kv_tile,
                   n_split, amx_cfg):
    """Absorbed MLA attention of a ubatch over latent cache rows, online softmax over KV tiles.

    dst      [n_tok, n_head, dv] f32     output: per head the attention-weighted sum of c_kv (latent, dv = kv_lora_rank)
    q        [n_tok, n_head, dk] f32     per head [q_pe (n_rot) | q_nope . W_UK (kv_lora_rank)], the cache row order
    k        [n_cells, row]              cache rows [k_pe | c_kv]: uint32 (f32 bits) | uint16 (f16/bf16) | uint8 (q8_0)
    kind     KIND_F32 | KIND_F16 | KIND_BF16 | KIND_Q8_0
    v_off    int    element offset of c_kv inside a row (n_rot); dk = v_off + dv
    cell_pos [n_cells] int32, cell_seq [n_cells] uint64 bitsets, kv_idx [n_kv] int32 cells in scan order
    q_pos [n_tok] int32, q_seq [n_tok] int32; scale f32 (the softmax scale, mscale^2/sqrt(head_dim_k))
    q_tile tokens per item (all heads of a token share the K tile); kv_tile cells per tile; n_split KV splits.
    amx_cfg  uint8: attention_mla_amx.config_bytes() where its AMX-BF16 items may run (amx.enable() said True),
             else empty; they take the items when the cache is not f32 and rows, heads and widths fit their tiles.
             A 65th byte 1: an f16 cache's items run on AMX-FP16 tiles (attention_mla_amx16) where they fit.
    Items (query tile, split) run in parallel; the splits are merged in a fixed order afterwards, so
    the result does not depend on the thread count. A query that sees no cell gets zeros.
    """
    n_tok = q.shape[0]
    n_head = q.shape[1]
    dv = dst.shape[2]
    n_kv = kv_idx.shape[0]
    n_qt = (n_tok + q_tile - 1) // q_tile
    use_amx = HAS_AMX_BF16 and amx_cfg.size >= 64 and amx_fits(kind, n_head, q.shape[2], dv)
    if use_amx:
        kv_tile = AMX_TILE  # splits start on the AMX items' tile boundaries
    cfgp = np.int64(amx_cfg.ctypes.data)
    use16 = use_amx and amx_cfg.size > 64 and amx_cfg[64] != 0 and amx16_fits(kind, n_head, q.shape[2], dv, v_off)
    s16 = query_scale(q) if use16 else np.float32(1.0)
    if use16:
        qp = pack_q16(q, s16)
    elif use_amx:
        qp = pack_q(q)  # every item's queries, packed once
    else:
        qp = np.empty((0, 0, 2, 16, 32), np.uint16)
    bounds, pm, pl, pacc = split_partials(n_kv, n_split, kv_tile, n_tok, n_head, dv)
    for it in prange(n_qt * n_split):
        _, sp, t0, t1, c0, c1, acc, m, l = work_item(it, n_split, n_qt, q_tile, n_tok, bounds, dv, n_head)
        if use16:
            _amx16_item(acc, m, l, qp, n_head, k, kind, v_off, cell_pos, cell_seq, kv_idx, q_pos, q_seq, scale / s16,
                        t0, t1, c0, c1, t0 * n_head // 16, cfgp)
        elif use_amx:
            _amx_item(acc, m, l, qp, n_head, k, kind, v_off, cell_pos, cell_seq, kv_idx, q_pos, q_seq, scale, t0, t1,
                      c0, c1, t0 * n_head // 16, cfgp)
        else:
            _mla_item(acc, m, l, q, k, kind, v_off, cell_pos, cell_seq, kv_idx, q_pos, q_seq, scale, t0, t1, c0, c1,
                      kv_tile)
        finish_item(dst, pm, pl, pacc, acc, m, l, t0, 0, n_head, sp, n_split)
    if n_split == 1:
        return
    for th in prange(n_tok * n_head):
        merge_split_row(dst, pm, pl, pacc, th // n_head, th % n_head)
    keep_alive(amx_cfg, qp)


@njit(cache=True, nogil=True, fastmath=FASTMATH, parallel=True)
def flash_attn_heads_amx(dst, qp, k, v_off, cell_pos, cell_seq, kv_idx, q_pos, q_seq, scale, q_tile, n_split,
                         amx_cfg):
    """Attention of heads that each have their own f32 K/V rows (MLA's prompt attention over decompressed cells)
    on AMX-BF16 tiles, online softmax over 32-cell tiles.
    dst   [n_tok, n_head, dv] f32     output
    qp    pack_q of the queries laid out [n_head, n_tok, dk] (head-major), n_tok and q_tile multiples of 16
    k     [n_cells, n_head, w] uint32 (f32 bits): each head's rows, the scores' dk values first, V's dv values
          from v_off (v_off + dv <= w)
    cell_pos, cell_seq, kv_idx, q_pos, q_seq, scale: as flash_attn_mla; n_split KV splits per (head, query tile).
    amx_cfg: config_bytes(); run only where the target has AMX-BF16 and amx.enable() said True.
    Items (head, query tile, split) run in parallel, splits merged in a fixed order: thread-count independent.
    """
    n_head = k.shape[1]
    n_tok = dst.shape[0]
    dv = dst.shape[2]
    n_kv = kv_idx.shape[0]
    n_qt = (n_tok + q_tile - 1) // q_tile
    cfgp = np.int64(amx_cfg.ctypes.data)
    bounds, pm, pl, pacc = split_partials(n_kv, n_split, AMX_TILE, n_tok, n_head, dv)
    for it in prange(n_head * n_qt * n_split):
        h, sp, t0, t1, c0, c1, acc, m, l = work_item(it, n_split, n_qt, q_tile, n_tok, bounds, dv, 1)
        _amx_item(acc, m, l, qp, np.int64(1), k[:, h], np.int64(KIND_F32), v_off, cell_pos, cell_seq, kv_idx, q_pos,
                  q_seq, scale, t0, t1, c0, c1, (h * n_tok + t0) // 16, cfgp)
        finish_item(dst, pm, pl, pacc, acc, m, l, t0, h, 1, sp, n_split)
    if n_split == 1:
        return
    for th in prange(n_tok * n_head):
        merge_split_row(dst, pm, pl, pacc, th // n_head, th % n_head)
    keep_alive(amx_cfg, qp)


@njit(cache=True, nogil=True, parallel=True)
def head_rows(dst, pe, kv):
    """dst[c, h] = [pe[c] | kv[c, h]] for every cell c and head h: the rows of flash_attn_heads_amx from a
    shared part pe [n, r] and per-head parts kv [n, n_head, w] (dst [n, n_head, r + w] f32)."""
    r = pe.shape[1]
    w = kv.shape[2]
    for c in prange(dst.shape[0]):
        for h in range(dst.shape[1]):
            d = dst[c, h]
            for i in range(r):
                d[i] = pe[c, i]
            s = kv[c, h]
            for i in range(w):
                d[r + i] = s[i]
