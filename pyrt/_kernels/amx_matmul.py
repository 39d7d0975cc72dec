"""Prompt-sized matmuls on AMX-INT8 tiles: Q8_0/Q4_0/Q5_0 weights x Q8_0 activations (amx's tiles) and
Q4_K/Q5_K/Q6_K weights x Q8_K activations (amx_k's), by work items of 16 weight rows packed once and
multiplied with every 16-token tile. Only where amx.enable() said True.

Leaf module (numba and sibling kernel modules).
"""

import numpy as np
from numba import njit, prange

from .amx import BLOCK_TILE, Q8_0_BYTES, QK, TM, TN, _pack, tile_block_amx, tile_config, tile_release
from .amx_k import (CHAIN_MIN_TOKENS, K_AUX_BYTES, K_AUX_WORDS, K_DM_WORDS, K_MP_WORDS, KIND_Q4_K, KIND_Q5_K, KIND_Q6_K,
                    QK_K, SB_TILES, _pack_k, k_aux_words, tile_block_amx_k, tile_block_amx_q6_k, tile_chain_q4_k,
                    tile_chain_q5_k)
from .config import FASTMATH
from .dots_q8_0 import AUX_BYTES, AUX_WORDS
from .ir_k import BLOCK_BYTES_Q8_K, is_k_quant
from .matmul_q8_0 import _pad_tail, _q_bias, _rows_q, keep_alive, x_aux_q8_0
from .simd import PREFETCH_BYTES


@njit(cache=True, nogil=True, fastmath=FASTMATH, parallel=True)
def matmul_q_amx(dst, w, xq, kind, cfg):
    """dst[t, r] = dot(w[r], xq[t]) on AMX tiles for Q8_0/Q4_0/Q5_0 weights (kind) and Q8_0 activations (the
    same bits as matmul_q8_0.matmul_q) or Q4_K/Q5_K/Q6_K weights and Q8_K activations (the same bits as
    quants_k.matmul_k's row dots). Only where `amx.enable()` said True.

    dst: [n_tok, n_out] f32 C-contiguous; w: [n_out, row_bytes] uint8; xq: [n_tok, n_in/32*34] (Q8_0) or
    [n_tok, n_in/256*292] (Q8_K) uint8 C-contiguous; cfg: config_bytes(). A work item is 16 weight rows:
    packed once, then multiplied with every 16-token tile. The last n_out % 16 rows are one more work item:
    one-row dots (matmul_q8_0's) for the Q8_0 family, a zero-padded 16-row tile for the K-quants.
    """
    n_tok, n_out = dst.shape
    k_quant = is_k_quant(kind)
    if k_quant:  # nb: super-blocks
        nb = np.int64(xq.shape[1] // BLOCK_BYTES_Q8_K)
        xc = np.empty((n_tok, nb, K_AUX_WORDS), np.int32)
        k_aux_words(xc, xq)
        cs = np.int64(nb * K_AUX_BYTES)
    else:  # nb: 32-value blocks; word 1, dx, for the tiles; word 0 for the one-row dots
        nb = np.int64(xq.shape[1] // Q8_0_BYTES)
        xc = np.empty((n_tok, nb, AUX_WORDS), np.int32)
        x_aux_q8_0(xc, xq, _q_bias(kind))
        cs = np.int64(nb * AUX_BYTES)
    n_full = n_tok // TM * TM
    m = n_tok - n_full
    xq_pad, xc_pad = _pad_tail(xq, xc, n_full, m, np.int64(TM))
    wp, ws = np.int64(w.ctypes.data), np.int64(w.strides[0])
    xp, xs = np.int64(xq.ctypes.data), np.int64(xq.strides[0])
    xpp, cpp = np.int64(xq_pad.ctypes.data), np.int64(xc_pad.ctypes.data)
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


@njit(cache=True, nogil=True, fastmath=FASTMATH)
def _item(kind, wp, ws, nb, cfgp, n_full, m, xp, xs, cp, cs, xpp, cpp, dp, n_out):
    """One work item of matmul_q_amx: 16 weight rows at wp (stride ws), packed, times every token tile;
    dp: output of token 0, row 0 of the item; n_out: the output row stride. nb: 32-value blocks (Q8_0
    family) or super-blocks (K-quants)."""
    k_quant = is_k_quant(kind)
    n_prod = nb * (2 * (QK_K // QK) if kind == KIND_Q6_K else QK_K // QK) if k_quant else nb
    wbuf = np.empty(max(n_prod * BLOCK_TILE, nb * SB_TILES if k_quant else 0) + 64, np.uint8)
    # the Q8_0 family's block scales [n_prod, 16] f32; the K-quants' K_SC, K_DM, K_MP
    words = np.empty(n_prod * TN + (nb * (K_DM_WORDS + K_MP_WORDS) if k_quant else 0) + 16, np.int32)
    wbp = (np.int64(wbuf.ctypes.data) + 63) // 64 * 64
    scp = (np.int64(words.ctypes.data) + 63) // 64 * 64
    dmp = scp + n_prod * TN * 4
    mpp = dmp + nb * K_DM_WORDS * 4
    chain = (kind == KIND_Q4_K or kind == KIND_Q5_K) and n_full + m >= CHAIN_MIN_TOKENS
    if k_quant:
        _pack_k(kind, chain, wp, ws, nb, wbp, scp, dmp, mpp)
    else:
        _pack(kind, wp, ws, nb, wbp, scp)
    tile_config(cfgp + 64 if chain else cfgp)
    for t0 in range(0, n_full + (TM if m > 0 else 0), TM):
        x0, c0, nt = xp + t0 * xs, cp + t0 * cs, np.int64(TM)
        if t0 == n_full:  # the padded tail tile of m tokens
            x0, c0, nt = xpp, cpp, np.int64(m)
        if kind == KIND_Q6_K:
            tile_block_amx_q6_k(wbp, scp, dmp, mpp, x0, xs, c0, cs, nb, dp + t0 * n_out * 4, n_out, nt)
        elif kind == KIND_Q4_K and chain:
            tile_chain_q4_k(wbp, dmp, mpp, x0, xs, c0, cs, nb, dp + t0 * n_out * 4, n_out, nt)
        elif kind == KIND_Q5_K and chain:
            tile_chain_q5_k(wbp, dmp, mpp, x0, xs, c0, cs, nb, dp + t0 * n_out * 4, n_out, nt)
        elif k_quant:
            tile_block_amx_k(wbp, scp, dmp, mpp, x0, xs, c0, cs, nb, dp + t0 * n_out * 4, n_out, nt)
        else:
            tile_block_amx(wbp, scp, x0, xs, c0, cs, nb, dp + t0 * n_out * 4, n_out, nt)
    tile_release()
    return wbuf.size + words.size


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
