"""A decoded token's whole dense transformer layer (llama / qwen2 / gemma3: RMSNorm, GQA attention with RoPE over
the KV cache, optionally QK-norm, sandwich norms and a sliding window, SwiGLU or GELU-tanh FFN) in one call: five
or six parallel regions with no Python between them. Same arithmetic as the layer run op by op (ops.basic norms,
RoPE and activations, the one-token matmuls, KVCache.store, flash_attn), so the logits and cache rows are the
same bits. Weights: Q8_0, Q4_0, Q5_0 (dotted against Q8_0 activations)
and Q4_K, Q5_K, Q6_K (against Q8_K activations).

Leaf module: numpy, numba and sibling kernel modules only.
"""

import numpy as np
from numba import njit, prange

from .attention import flash_attn
from .config import FASTMATH
from .dots_q8_0 import AUX_BYTES, AUX_WORDS
from .fused_mla import _matvec_q
from .fused_moe import FFN_TILE, _gate_up_tile
from .kv import encode_row
from .matmul_q8_0 import Q8_0_BYTES, QK, ROW_TILE, _is_block_q, _q_bias, quantize_rows_q8_0, x_aux_q8_0
from .norm import _rms_row
from .ir_k import is_k_quant
from .rope import _rope_neox_row, _rope_norm_row
from .rows import q8_k_rows, rows_any
from .simd import PREFETCH_BYTES

# kinds[] slots of dense_layer_decode's weights
W_Q, W_K, W_V, W_O, W_GATE_UP, W_DOWN = 0, 1, 2, 3, 4, 5


@njit(cache=True, nogil=True, fastmath=FASTMATH)
def _add_bias(y, b):
    """y += b where the projection has a bias (b of y's length; no bias: 0 values)."""
    if b.shape[0] > 0:
        for i in range(y.shape[0]):
            y[i] += b[i]


@njit(cache=True, nogil=True, fastmath=FASTMATH)
def _rms_rows(x, w, eps, n):
    """In place: RMSNorm of each n-value row of x times w (QK-norm per head) where w has values."""
    if w.shape[0] > 0:
        for r in range(x.shape[0] // n):
            _rms_row(x[r * n:(r + 1) * n], x[r * n:(r + 1) * n], w, eps)


@njit(cache=True, nogil=True, fastmath=FASTMATH, parallel=True)
def _rows3(qv, kv, vv, wq, wk, wv, kinds, h):
    """qv = wq . h, kv = wk . h, vv = wv . h in one parallel region (ROW_TILE rows a work item; a weight may have
    0 rows), h quantized once (Q8_0 with each weight kind's aux words, and Q8_K where a weight is a K-quant);
    kinds[0:3] the weights' kinds."""
    n_embd = h.shape[0]
    nbx = n_embd // QK
    xq = np.empty((1, nbx * Q8_0_BYTES), np.uint8)          # [1, nbx*34] block_q8_0
    quantize_rows_q8_0(xq, h.reshape(1, n_embd))
    xc = np.empty((3, nbx, AUX_WORDS), np.int32)             # [3, nbx, 2] aux words of q, k, v's kinds
    for j in range(3):
        if _is_block_q(kinds[j]):
            x_aux_q8_0(xc[j:j + 1], xq, _q_bias(kinds[j]))
    xk, nbk = q8_k_rows(h.reshape(1, n_embd), is_k_quant(kinds[0]) or is_k_quant(kinds[1]) or is_k_quant(kinds[2]))
    n_q, n_k, n_v = qv.shape[0], kv.shape[0], vv.shape[0]
    t_q = (n_q + ROW_TILE - 1) // ROW_TILE
    t_k = (n_k + ROW_TILE - 1) // ROW_TILE
    t_v = (n_v + ROW_TILE - 1) // ROW_TILE
    pf = np.int64(PREFETCH_BYTES)
    for it in prange(t_q + t_k + t_v):
        if it < t_q:
            r0 = it * ROW_TILE
            rows_any(kinds[0], wq, np.int64(0), r0, min(r0 + ROW_TILE, n_q), np.int64(xq.ctypes.data),
                     np.int64(xc.ctypes.data), np.int64(nbx), xk[0], nbk, qv, pf)
        elif it < t_q + t_k:
            r0 = (it - t_q) * ROW_TILE
            rows_any(kinds[1], wk, np.int64(0), r0, min(r0 + ROW_TILE, n_k), np.int64(xq.ctypes.data),
                     np.int64(xc.ctypes.data) + nbx * AUX_BYTES, np.int64(nbx), xk[0], nbk, kv, pf)
        else:
            r0 = (it - t_q - t_k) * ROW_TILE
            rows_any(kinds[2], wv, np.int64(0), r0, min(r0 + ROW_TILE, n_v), np.int64(xq.ctypes.data),
                     np.int64(xc.ctypes.data) + 2 * nbx * AUX_BYTES, np.int64(nbx), xk[0], nbk, vv, pf)


@njit(cache=True, nogil=True, fastmath=FASTMATH, parallel=True)
def _ffn_rows(y, h, wg, wu, wd, kind_gu, kind_d, gelu):
    """y = down(act(gate . h) * (up . h)): the gate/up rows with the activation (SwiGLU, or GELU-tanh from the
    gelu table where it has values) and the down input's requantization in one region (FFN_TILE hidden rows a
    work item, as the MoE decode's shared experts), the down rows in a second."""
    n_embd = h.shape[0]
    n_ff = wg.shape[0]
    nbx = n_embd // QK
    xq = np.empty((1, nbx * Q8_0_BYTES), np.uint8)          # [1, nbx*34]
    quantize_rows_q8_0(xq, h.reshape(1, n_embd))
    xc = np.empty((1, nbx, AUX_WORDS), np.int32)
    if _is_block_q(kind_gu):
        x_aux_q8_0(xc, xq, _q_bias(kind_gu))
    xk, nbk = q8_k_rows(h.reshape(1, n_embd), is_k_quant(kind_gu))
    nbf = n_ff // QK
    g = np.empty(n_ff, np.float32)                            # act(gate) * up once the region is done
    u = np.empty(n_ff, np.float32)
    hq = np.empty(nbf * Q8_0_BYTES, np.uint8)                 # [nbf*34] g as block_q8_0
    hc = np.empty((nbf, AUX_WORDS), np.int32)                 # its aux words for the down kind
    k_dn = is_k_quant(kind_d)
    pf = np.int64(PREFETCH_BYTES)
    for it in prange((n_ff + FFN_TILE - 1) // FFN_TILE):
        r0 = it * FFN_TILE
        _gate_up_tile(kind_gu, wg, wu, np.int64(0), r0, min(r0 + FFN_TILE, n_ff), np.int64(xq.ctypes.data),
                      np.int64(xc.ctypes.data), np.int64(nbx), xk, nbk, g, u, hq, hc, _q_bias(kind_d), not k_dn, gelu,
                      pf)
    hk, nbfk = q8_k_rows(g.reshape(1, n_ff), k_dn)            # [1, nbfk*292] where the down rows are K-quants
    for it in prange((n_embd + ROW_TILE - 1) // ROW_TILE):
        r0 = it * ROW_TILE
        rows_any(kind_d, wd, np.int64(0), r0, min(r0 + ROW_TILE, n_embd), np.int64(hq.ctypes.data),
                 np.int64(hc.ctypes.data), np.int64(nbf), hk[0], nbfk, y, pf)


@njit(cache=True, nogil=True, fastmath=FASTMATH)
def dense_layer_decode(x, attn_norm, wq, wk, wv, bq, bk, bv, q_norm, k_norm, wo, post_attn_norm, ffn_norm, wg, wu, wd,
                       post_ffn_norm, gelu_table, kinds, eps, cos, sin, neox, kc, vc, kind_k, kind_v, seg_k, seg_v,
                       cell, cell_pos, cell_seq, kv_idx, q_pos, q_seq, scale, n_swa, n_head, n_head_kv, q_tile,
                       kv_tile, n_split):
    """x += attention block; x += FFN block, for one decoded token, its K and V rows stored in the cache.

    x          [n_embd] f32 in/out     the residual stream
    attn_norm, ffn_norm [n_embd] f32; eps: the RMSNorm epsilon
    wq, wk, wv [n_head*dk | n_head_kv*dk | n_head_kv*dv, rb] uint8; bq, bk, bv: their f32 biases or 0 values
    q_norm, k_norm [dk] f32: QK-norm weights, or 0 values (none)
    wo         [n_embd, row bytes of n_head*dv] uint8; wg, wu: [n_ff, rb] uint8 (one kind); wd: [n_embd, n_ff rb]
    post_attn_norm, post_ffn_norm [n_embd] f32: the sandwich norms of attn_output's and down's rows, or 0 values
    gelu_table [65536] f32: GELU-tanh by f16 bits (ops.basic.geglu_tanh's table) for a GELU FFN; 0 values: SwiGLU
    kinds      [6] int64: codes.Q8_0/Q4_0/Q5_0/Q4_K/Q5_K/Q6_K of q, k, v, o, gate/up, down (W_* slots)
    cos, sin   [n_rot/2] f32: the token's RoPE table row; neox: split halves (else adjacent pairs)
    kc, vc     [n_cells, row] the layer's K and V cache rows as the flash kernel reads them, of kind_k / kind_v
               (seg_k, seg_v: q8_KV segment lengths); cell: the row this token writes
    cell_pos .. n_split: flash_attn's arguments for one query (kv_idx holds the token's own cell; n_swa 0: no
               sliding window)
    Shapes are validated by ops.dense.DenseLayerDecode.
    """
    n_embd = x.shape[0]
    n_q, n_k, n_v = wq.shape[0], wk.shape[0], wv.shape[0]
    dk = n_k // n_head_kv
    dv = n_v // n_head_kv
    # (1) attn_norm, the q/k/v rows, biases, RoPE, the cache rows
    h = np.empty(n_embd, np.float32)
    _rms_row(h, x, attn_norm, eps)
    q = np.empty(n_q, np.float32)
    k = np.empty(n_k, np.float32)
    v = np.empty(n_v, np.float32)
    _rows3(q, k, v, wq, wk, wv, kinds, h)
    _add_bias(q, bq)
    _add_bias(k, bk)
    _add_bias(v, bv)
    _rms_rows(q, q_norm, eps, dk)
    _rms_rows(k, k_norm, eps, dk)
    for hh in range(n_head):
        if neox:
            _rope_neox_row(q[hh * dk:(hh + 1) * dk], cos, sin)
        else:
            _rope_norm_row(q[hh * dk:(hh + 1) * dk], cos, sin)
    for hh in range(n_head_kv):
        if neox:
            _rope_neox_row(k[hh * dk:(hh + 1) * dk], cos, sin)
        else:
            _rope_norm_row(k[hh * dk:(hh + 1) * dk], cos, sin)
    encode_row(kc[cell], k, kind_k, seg_k, np.int64(0), n_k)
    encode_row(vc[cell], v, kind_v, seg_v, np.int64(0), n_v)
    # (2) attention over the cells, (3) attn_output and the residual
    attn = np.empty((1, n_head, dv), np.float32)
    flash_attn(attn, q.reshape(1, n_head, dk), kc, vc, kind_k, kind_v, seg_k, seg_v, np.int64(0), n_head_kv, cell_pos,
               cell_seq, kv_idx, q_pos, q_seq, scale, n_swa, np.float32(0.0), q_tile, kv_tile, n_split)
    y = np.empty(n_embd, np.float32)
    _matvec_q(y, wo, kinds[W_O], attn.reshape(n_head * dv))
    if post_attn_norm.shape[0] > 0:
        _rms_row(y, y, post_attn_norm, eps)
    for i in range(n_embd):
        x[i] += y[i]
    # (4) ffn_norm, gate/up with the activation, down, the residual
    _rms_row(h, x, ffn_norm, eps)
    _ffn_rows(y, h, wg, wu, wd, kinds[W_GATE_UP], kinds[W_DOWN], gelu_table)
    if post_ffn_norm.shape[0] > 0:
        _rms_row(y, y, post_ffn_norm, eps)
    for i in range(n_embd):
        x[i] += y[i]
