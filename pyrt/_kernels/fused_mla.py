"""A decoded token's MLA attention in one call, from the CPU's fused paths: the absorbed attention with its
W_UK / W_UV products (mla_decode) and the whole attention block from the residual stream to its update
(mla_block_decode). Weights: Q8_0, Q4_0, Q5_0 (dotted against Q8_0 activations).

Leaf kernel module (numpy, numba and sibling kernel modules only).
"""

import numpy as np
from numba import njit, prange

from .attention_mla import _mla_item, flash_attn_mla
from .config import FASTMATH
from .dots_q8_0 import AUX_BYTES, AUX_WORDS
from .kv import Q8_0_BLOCK_BYTES, QK8_0, encode_row
from .matmul_q8_0 import ROW_TILE, _q_bias, _rows_q, quantize_rows_q8_0, x_aux_q8_0
from .norm import _rms_row
from .ir_k import is_k_quant
from .rows import q8_k_rows, rows_any
from .rope import _rope_norm_row
from .simd import PREFETCH_BYTES

# ------------------------------------------------------------------ one decoded token, fused
# q_nope . W_UK per head, FlashMLA over the latent cache, then . W_UV per head, in one call: the three
# parallel regions that ops.matmul.matmul_id + flash_attn_mla + matmul_id run, without Python between them
# (one region when the cells need no KV split).
HEAD_GROUP = 4  # heads per work item of the one-region decode (few cells); a multiple of _mla_item's 4


@njit(cache=True, nogil=True, fastmath=FASTMATH, parallel=True)
def mla_decode(dst, q_nope, q_pe, k_b, kb_kind, v_b, v_row0, vb_kind, k, kind, cell_pos, cell_seq, kv_idx,
               q_pos, q_seq, scale, kv_tile, n_split, amx_cfg):
    """Absorbed MLA attention of one token; weights W_UK in Q8_0, Q4_0 or Q5_0, W_UV in those or Q4_K, Q5_K,
    Q6_K (kb_kind, vb_kind: pyrt._kernels.codes).

    dst      [n_head, dv] f32          out: per head o_lat . W_UV (dv = the value head size)
    q_nope   [n_head, dn] f32          the no-rope query part; q_pe [n_head, n_rot] f32 (roped)
    k_b      [n_head*C, dn row bytes]  W_UK, head h's C rows from row h*C (C = kv_lora_rank)
    v_b      [rows, C row bytes]       W_UV, head h's dv rows from row v_row0[h] ([n_head] int64)
    k, kind, cell_pos, cell_seq, kv_idx, q_pos, q_seq, scale, kv_tile, n_split, amx_cfg: as flash_attn_mla
    (one token, q_tile 1; the one-region path of few cells keeps the f32 items). Validated by ops.mla.
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
    nbo = C // QK8_0
    if n_split == 1 and n_head % HEAD_GROUP == 0:
        # few cells: one parallel region, a work item per group of HEAD_GROUP heads running W_UK, the attention
        # and W_UV of its heads back to back (each item reads the few cache rows itself). The same arithmetic
        # per head as the three regions below: _mla_item treats heads in fours, whatever the group.
        for g in prange(n_head // HEAD_GROUP):
            h0 = g * HEAD_GROUP
            h1 = h0 + HEAD_GROUP
            for h in range(h0, h1):
                _rows_q(kb_kind, np.int64(k_b.ctypes.data) + h * C * kbs, kbs, np.int64(0), C,
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
            ok, nbok = q8_k_rows(og, is_k_quant(vb_kind))
            for r in range(HEAD_GROUP):
                rows_any(vb_kind, v_b, v_row0[h0 + r], np.int64(0), dv,
                         np.int64(oq.ctypes.data) + r * np.int64(oq.strides[0]),
                         np.int64(oc.ctypes.data) + r * nbo * AUX_BYTES, np.int64(nbo), ok[r], nbok, dst[h0 + r], pf)
        return
    nt = (C + ROW_TILE - 1) // ROW_TILE
    for it in prange(n_head * nt):
        h = it // nt
        r0 = (it % nt) * ROW_TILE
        _rows_q(kb_kind, np.int64(k_b.ctypes.data) + h * C * kbs, kbs, r0, min(r0 + ROW_TILE, C),
                np.int64(qq.ctypes.data) + h * np.int64(qq.strides[0]),
                np.int64(qc.ctypes.data) + h * nbq * AUX_BYTES, np.int64(nbq), qa[0, h, n_rot:], pf)
    o_lat = np.empty((1, n_head, C), np.float32)               # [1, n_head, C] attention over the latents
    flash_attn_mla(o_lat, qa, k, kind, n_rot, cell_pos, cell_seq, kv_idx, q_pos, q_seq, scale, 1, kv_tile, n_split,
                   amx_cfg)
    oq = np.empty((n_head, nbo * Q8_0_BLOCK_BYTES), np.uint8)  # [n_head, nbo*34] o_lat as Q8_0
    quantize_rows_q8_0(oq, o_lat[0])
    oc = np.empty((n_head, nbo, AUX_WORDS), np.int32)
    x_aux_q8_0(oc, oq, _q_bias(vb_kind))
    ok, nbok = q8_k_rows(o_lat[0], is_k_quant(vb_kind))
    nt2 = (dv + ROW_TILE - 1) // ROW_TILE
    for it in prange(n_head * nt2):
        h = it // nt2
        r0 = (it % nt2) * ROW_TILE
        rows_any(vb_kind, v_b, v_row0[h], r0, min(r0 + ROW_TILE, dv),
                 np.int64(oq.ctypes.data) + h * np.int64(oq.strides[0]), np.int64(oc.ctypes.data) + h * nbo * AUX_BYTES,
                 np.int64(nbo), ok[h], nbok, dst[h], pf)


# ---------------------------------------------------------------------- a decoded token's attention block
# One call for everything between the residual stream and its update: attn_norm, the q (or q_a, q_a_norm,
# q_b) and kv_a rows, kv_a_norm, RoPE, the cache store, the absorbed attention and attn_output. The same
# arithmetic as the model's op-by-op path (rms_norm, linear_multi, rope, KVCache.store, mla_decode,
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
def _matvec_q(dst, w, kind, x):
    """dst = w . x for one token: ROW_TILE rows a work item (as matmul_q runs one token).

    dst: [n_out] f32; w: [n_out, row bytes] uint8 of kind (codes.Q8_0/Q4_0/Q5_0/Q4_K/Q5_K/Q6_K); x: [n_in] f32.
    """
    xq, xc = _q8_0_with_aux(x, kind)
    xk, nbk = q8_k_rows(x.reshape(1, x.shape[0]), is_k_quant(kind))
    nb = np.int64(xc.shape[1])
    n_out = w.shape[0]
    pf = np.int64(PREFETCH_BYTES)
    for it in prange((n_out + ROW_TILE - 1) // ROW_TILE):
        r0 = it * ROW_TILE
        rows_any(kind, w, np.int64(0), r0, min(r0 + ROW_TILE, n_out), np.int64(xq.ctypes.data),
                 np.int64(xc.ctypes.data), nb, xk[0], nbk, dst, pf)


@njit(cache=True, nogil=True, fastmath=FASTMATH, parallel=True)
def mla_block_decode(x, attn_norm, eps, wq, q_kind, wkv, kv_kind, wqb, qb_kind, q_a_norm, kv_a_norm, cos,
                     sin, k_b, kb_kind, v_b, v_row0, vb_kind, k, kind, cell, cell_pos, cell_seq, kv_idx,
                     q_pos, q_seq, scale, kv_tile, n_split, amx_cfg, wo, wo_kind, dn, dv):
    """x += attn_output(MLA attention of rmsnorm(x) * attn_norm) for one token, its latent row stored in the cache.

    x          [n_embd] f32 in/out     the residual stream
    attn_norm  [n_embd] f32; eps: the RMSNorm epsilon
    wq         [n_q, rb] uint8         attn_q (n_q = n_head*(dn + n_rot)), or attn_q_a (n_q = q_lora_rank)
    wkv        [C + n_rot, rb] uint8   attn_kv_a_mqa; q_kind, kv_kind: their codes.Q8_0/Q4_0/Q5_0/Q4_K/Q5_K/Q6_K
    wqb        [n_head*(dn + n_rot), n_q row bytes] uint8 attn_q_b, or 0 rows (no q_lora); q_a_norm [n_q] f32
    kv_a_norm  [C] f32; cos, sin: [n_rot/2] f32 the token's RoPE table row (GPT-J pairs)
    k_b .. vb_kind, k, kind, cell_pos .. amx_cfg: as mla_decode; cell: the cache row this token writes
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
    xk, nbk = q8_k_rows(h.reshape(1, n_embd), is_k_quant(q_kind) or is_k_quant(kv_kind))
    nbx = np.int64(xc.shape[1])
    n_q = wq.shape[0]
    n_kva = wkv.shape[0]
    qa = np.empty(n_q, np.float32)
    kva = np.empty(n_kva, np.float32)
    nt_q = (n_q + ROW_TILE - 1) // ROW_TILE
    for it in prange(nt_q + (n_kva + ROW_TILE - 1) // ROW_TILE):
        if it < nt_q:
            r0 = it * ROW_TILE
            rows_any(q_kind, wq, np.int64(0), r0, min(r0 + ROW_TILE, n_q), np.int64(xq.ctypes.data),
                     np.int64(xc.ctypes.data), nbx, xk[0], nbk, qa, pf)
        else:
            r0 = (it - nt_q) * ROW_TILE
            rows_any(kv_kind, wkv, np.int64(0), r0, min(r0 + ROW_TILE, n_kva), np.int64(xq.ctypes.data),
                     np.int64(xc2.ctypes.data), nbx, xk[0], nbk, kva, pf)
    # (2) with q_lora: q = attn_q_b(rmsnorm(q_a) * q_a_norm)
    if wqb.shape[0] > 0:
        qn = np.empty(n_q, np.float32)
        _rms_row(qn, qa, q_a_norm, eps)
        q = np.empty(wqb.shape[0], np.float32)
        _matvec_q(q, wqb, qb_kind, qn)
    else:
        q = qa
    # the cache row [rope(k_pe) | rmsnorm(c_kv)], the heads' q_nope and rope(q_pe)
    row = np.empty(n_rot + C, np.float32)
    _rms_row(row[n_rot:], kva[:C], kv_a_norm, eps)
    for i in range(n_rot):
        row[i] = kva[C + i]
    _rope_norm_row(row[:n_rot], cos, sin)
    encode_row(k[cell], row, kind, np.int64(0), np.int64(0), row.shape[0])
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
    mla_decode(attn, q_nope, q_pe, k_b, kb_kind, v_b, v_row0, vb_kind, k, kind, cell_pos, cell_seq, kv_idx,
               q_pos, q_seq, scale, kv_tile, n_split, amx_cfg)
    # (4) attn_output and the residual
    y = np.empty(n_embd, np.float32)
    _matvec_q(y, wo, wo_kind, attn.reshape(n_head * dv))
    for i in range(n_embd):
        x[i] += y[i]
