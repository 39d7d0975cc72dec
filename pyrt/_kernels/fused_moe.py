"""One decoded token's whole MoE FFN in one call (three parallel regions, no Python in between): router
logits, gating and top-k, the selected experts' gate/up rows together with the shared experts', SwiGLU
and requantization, the down rows, the weighted sum. Same arithmetic as ops.moe.route + moe_ffn + the
shared-expert FFN run op by op. Expert weights: Q8_0, Q4_0, Q5_0 (dotted against Q8_0 activations) and
Q4_K, Q5_K, Q6_K (against Q8_K activations, the hidden rows requantized once the SwiGLU region is done).

Leaf module: numpy, numba and sibling kernel modules only.
"""

import numpy as np
from numba import njit, prange

from .act import _geglu_table_row, _swiglu_row
from .config import FASTMATH
from .dots_q8_0 import AUX_BYTES, AUX_WORDS, ROWS
from .matmul_q8_0 import (Q8_0_BYTES, QK, ROW_TILE, _is_block_q, _q_bias, _rows_q, _tile_q, _x_aux_blocks,
                          _quantize_blocks_q8_0, quantize_rows_q8_0, x_aux_q8_0)
from .norm import _rms_row
from .ir_k import is_k_quant
from .rows import q8_k_rows, rows_any
from .simd import PREFETCH_BYTES, dot_f32_f32, prefetch

GATING_SOFTMAX = 1   # ops.moe's gating ids
GATING_SIGMOID = 2
W_NORM_MIN = 6.103515625e-5  # ggml clamps the sum of the selected weights at 2^-14


@njit(cache=True, nogil=True, fastmath=FASTMATH)
def _route_one(sel, wsel, probs, logits, probs_b, gating, norm_w, w_scale):
    """Gating probabilities, top-k by probs + bias (ties: lower expert id), weights as ops.moe.route.

    sel: [n_used] int32 out; wsel: [n_used] f32 out; probs: [n_expert] f32 scratch; logits, probs_b: [n_expert] f32.
    """
    n_expert = logits.shape[0]
    if gating == GATING_SOFTMAX:
        mx = logits[0]
        for e in range(1, n_expert):
            mx = max(mx, logits[e])
        s = 0.0  # f64 sum, as ggml's soft_max
        for e in range(n_expert):
            v = np.exp(logits[e] - mx)
            probs[e] = v
            s += v
        inv = np.float32(1.0 / s)
        for e in range(n_expert):
            probs[e] = probs[e] * inv
    else:
        for e in range(n_expert):
            probs[e] = np.float32(1.0) / (np.float32(1.0) + np.exp(-logits[e]))
    taken = np.zeros(n_expert, np.bool_)
    for k in range(sel.shape[0]):
        best = -1
        bv = np.float32(0.0)
        for e in range(n_expert):
            v = probs[e] + probs_b[e]
            if not taken[e] and (best < 0 or v > bv):
                best, bv = e, v
        taken[best] = True
        sel[k] = best
        wsel[k] = probs[best]
    if norm_w:
        s32 = np.float32(0.0)
        for k in range(sel.shape[0]):
            s32 += wsel[k]
        s32 = max(s32, np.float32(W_NORM_MIN))
        for k in range(sel.shape[0]):
            wsel[k] = wsel[k] / s32
    if w_scale != 0.0 and w_scale != 1.0:
        for k in range(sel.shape[0]):
            wsel[k] = wsel[k] * np.float32(w_scale)


@njit(cache=True, nogil=True, inline="always")
def _tile_rows(base, row_bytes):
    """Rows of a tile of row_bytes-byte rows: ROW_TILE rows' worth of base-byte rows, a multiple of ROWS."""
    return max(ROWS, (ROW_TILE * base + row_bytes // 2) // row_bytes // ROWS * ROWS)


@njit(cache=True, nogil=True, fastmath=FASTMATH)
def _tile_table(rows, row_bytes):
    """(group, first row, end row) of the tiles of groups of rows[g] rows of row_bytes[g] bytes each.

    A tile holds ROW_TILE rows of the narrowest group and about as many bytes in the others, so that the
    parallel loop's equal split of tiles between threads is an equal split of the weight bytes.
    rows, row_bytes: [n_group] int64.
    """
    base = row_bytes[0]
    for g in range(rows.shape[0]):
        base = min(base, row_bytes[g])
    n = 0
    for g in range(rows.shape[0]):
        rpt = _tile_rows(base, row_bytes[g])
        n += (rows[g] + rpt - 1) // rpt
    tg = np.empty(n, np.int64)
    tr = np.empty(n, np.int64)
    te = np.empty(n, np.int64)
    i = 0
    for g in range(rows.shape[0]):
        rpt = _tile_rows(base, row_bytes[g])
        for r0 in range(0, rows[g], rpt):
            tg[i] = g
            tr[i] = r0
            te[i] = min(r0 + rpt, rows[g])
            i += 1
    return tg, tr, te


@njit(cache=True, nogil=True, inline="always")
def _prefetch_start(addr, pf):
    """Prefetch of the first pf bytes at addr: the start of the next weight group a tile loop reaches (the
    dots prefetch pf ahead along their own rows, so nothing else asks for a group's first lines before
    its first tile does)."""
    for o in range(0, pf, 64):
        prefetch(addr + o)


FFN_TILE = QK  # hidden rows per work item of the fused gate/up: one Q8_0 block of the hidden row (~74 KB of Q4_0 weights at 2048 columns)


@njit(cache=True, nogil=True, fastmath=FASTMATH)
def _gate_up_tile(kind, gw, uw, row0, r0, r1, xg, cp, nbx, xk, nbk, g, u, hq, hc, bias, requant, gelu, pf):
    """Hidden rows [r0, r1) of one gate/up pair, all the way to the down projection's input.

    g[r] = gate row r . x and u[r] = up row r . x, then g[r0:r1] = silu(g) * u (gelu: [65536] f32, GELU-tanh by f16
    bits as ops.basic.geglu_tanh's table: gelu(g) * u instead; 0 values: SwiGLU) and, with requant, quantized
    to the Q8_0 blocks r0/QK..r1/QK of hq with their aux words in hc (bias: the down weights' kind's). The
    same arithmetic as the row matmuls, the activation and quantize_rows_q8_0 + x_aux_q8_0 over the whole row: each
    block depends on its own 32 values only. Q8_0-family kinds run 8-row tiles of each weight in turn (both
    streams run ahead under their prefetches) against the Q8_0 row xg (aux words cp, nbx blocks); K-quants
    run rows_any against the Q8_K row xk ([1, nbk*292] uint8).
    gw, uw: the gate and up weights [rows, row_bytes] uint8, rows row0 + r; g, u: [n_ff] f32;
    hq: [nbf*34] uint8; hc: [nbf, 2] int32; r0, r1: multiples of QK (and of ROWS).
    """
    if is_k_quant(kind):
        no = np.int64(0)  # no Q8_0 row: the K-quants read xk
        rows_any(kind, gw, row0, r0, r1, no, no, no, xk[0], nbk, g, pf)
        rows_any(kind, uw, row0, r0, r1, no, no, no, xk[0], nbk, u, pf)
    else:
        ws = np.int64(gw.strides[0])
        wg = np.int64(gw.ctypes.data) + row0 * ws
        wu = np.int64(uw.ctypes.data) + row0 * ws
        gp = np.int64(g.ctypes.data)
        up = np.int64(u.ctypes.data)
        for r in range(r0, r1, ROWS):
            _tile_q(kind, 1, wg + r * ws, ws, xg, 0, cp, 0, nbx, gp + r * 4, 0, pf)
            _tile_q(kind, 1, wu + r * ws, ws, xg, 0, cp, 0, nbx, up + r * 4, 0, pf)
    if gelu.shape[0] > 0:
        _geglu_table_row(g[r0:r1], g[r0:r1], u[r0:r1], gelu)
    else:
        _swiglu_row(g[r0:r1], g[r0:r1], u[r0:r1], np.empty(r1 - r0, np.float32))
    if requant:
        _quantize_blocks_q8_0(hq, g, r0 // QK, r1 // QK)
        _x_aux_blocks(hc, hq, bias, r0 // QK, r1 // QK)


@njit(cache=True, nogil=True, fastmath=FASTMATH, parallel=True)
def moe_ffn_decode(y, sel, wsel, x, gate_inp, probs_b, gate_exps, up_exps, down_exps,
                   gate_shexp, up_shexp, down_shexp, kinds, gating, norm_w, w_scale):
    """One token's MoE FFN: y = sum_k wsel[k] * down_e(silu(gate_e(x)) * up_e(x)) (+ the shared experts' FFN).

    y: [n_embd] f32 out; sel: [n_used] int32 out (experts, best first); wsel: [n_used] f32 out (their
    weights); x: [n_embd] f32 (the ffn_norm output); gate_inp: [n_expert, rb_r] uint8 (router rows);
    probs_b: [n_expert] f32 selection bias (zeros for none); gate_exps, up_exps: [n_expert*n_ff_exp, rb]
    uint8; down_exps: [n_expert*n_embd, rb_ff] uint8; gate_shexp, up_shexp: [n_ff_sh, rb] uint8 and
    down_shexp: [n_embd, rb_sh] uint8, or 0 rows for no shared experts; kinds: [5] int64 KIND_Q8_0/Q4_0/Q5_0/
    Q4_K/Q5_K/Q6_K of (gate/up exps, down exps, gate/up shexp, down shexp), then the router's (KIND_Q8_0/
    Q4_0/Q5_0 or KIND_F32). Shapes are validated by ops.moe (n_ff_exp and n_ff_sh multiples of QK, and of
    QK_K where the weights that read them, or x, are K-quants).

    Three parallel regions: (1) the router rows and the shared experts' gate/up (which need no routing),
    (2) after top-k, the selected experts' gate/up, (3) every down row; SwiGLU and the requantization of
    the hidden rows run inside the gate/up work items (_gate_up_tile), and each region's work items carry
    about the same number of weight bytes.
    """
    n_embd = x.shape[0]
    n_expert = gate_inp.shape[0]
    n_used = sel.shape[0]
    n_ff = gate_exps.shape[0] // n_expert
    n_sh = gate_shexp.shape[0]
    n_dn = n_used + (1 if n_sh > 0 else 0)
    pf = np.int64(PREFETCH_BYTES)
    # x as Q8_0 once, with the aux words for the experts', the shared experts' and the router's kinds
    nbx = n_embd // QK
    xq = np.empty((1, nbx * Q8_0_BYTES), np.uint8)           # [1, nbx*34] block_q8_0
    quantize_rows_q8_0(xq, x.reshape(1, n_embd))
    xc = np.empty((3, nbx, AUX_WORDS), np.int32)              # [3, nbx, 2] aux (exps, shexp, router)
    x_aux_q8_0(xc[0:1], xq, _q_bias(kinds[0]))
    x_aux_q8_0(xc[1:2], xq, _q_bias(kinds[2]))
    # ... and as Q8_K where gate/up weights are K-quants
    xk, nbk = q8_k_rows(x.reshape(1, n_embd), is_k_quant(kinds[0]) or is_k_quant(kinds[2]))  # [1, nbk*292]
    if _is_block_q(kinds[4]):
        x_aux_q8_0(xc[2:3], xq, _q_bias(kinds[4]))
    # (raw addresses are taken where they are used: Numba frees an array after the last use of its name, so an
    # address kept in an int while the array is otherwise dead points at memory that later arrays reuse)
    # hidden rows: f32 gate (then silu(gate)*up in place) and up, and the Q8_0 input of the down rows
    nbf, nbs = n_ff // QK, n_sh // QK
    hg = np.empty((n_used, n_ff), np.float32)                 # [n_used, n_ff] f32
    hu = np.empty((n_used, n_ff), np.float32)
    hq = np.empty((n_used, nbf * Q8_0_BYTES), np.uint8)       # [n_used, nbf*34] block_q8_0
    hc = np.empty((n_used, nbf, AUX_WORDS), np.int32)         # [n_used, nbf, 2] aux of the down kind
    sg = np.empty(n_sh, np.float32)                           # [n_sh] f32: the shared experts' hidden
    su = np.empty(n_sh, np.float32)
    sq = np.empty(max(nbs, 1) * Q8_0_BYTES, np.uint8)         # [nbs*34]
    sc = np.empty((max(nbs, 1), AUX_WORDS), np.int32)
    # the hidden rows as Q8_K where the down weights are K-quants (quantized after their region)
    k_dn, k_sdn = is_k_quant(kinds[1]), is_k_quant(kinds[3])
    swiglu = np.empty(0, np.float32)                          # _gate_up_tile's activation: no GELU table
    # (1) router logits (as the router's own matmul would give them) and the shared experts' gate/up
    logits = np.empty(n_expert, np.float32)                   # [n_expert] f32
    gp, gs = np.int64(gate_inp.ctypes.data), np.int64(gate_inp.strides[0])
    n_rt = (n_expert + ROWS - 1) // ROWS
    for it in prange(n_rt + (n_sh + FFN_TILE - 1) // FFN_TILE):
        if it < n_rt:
            e0 = ROWS * it
            if _is_block_q(kinds[4]):
                _rows_q(kinds[4], gp, gs, e0, min(e0 + ROWS, n_expert), np.int64(xq.ctypes.data),
                        np.int64(xc.ctypes.data) + 2 * nbx * AUX_BYTES, np.int64(nbx), logits, pf)
            else:
                for e in range(e0, min(e0 + ROWS, n_expert)):
                    logits[e] = dot_f32_f32(gp + e * gs, np.int64(x.ctypes.data), np.int64(n_embd))
        else:
            r0 = (it - n_rt) * FFN_TILE
            _gate_up_tile(kinds[2], gate_shexp, up_shexp, np.int64(0), r0, min(r0 + FFN_TILE, n_sh),
                          np.int64(xq.ctypes.data), np.int64(xc.ctypes.data) + nbx * AUX_BYTES, np.int64(nbx), xk, nbk,
                          sg, su, sq, sc, _q_bias(kinds[3]), not k_sdn, swiglu, pf)
    sk, nbsk = q8_k_rows(sg.reshape(1, n_sh), k_sdn)          # [1, nbsk*292]
    probs = np.empty(n_expert, np.float32)
    _route_one(sel, wsel, probs, logits, probs_b, gating, norm_w, w_scale)
    # (2) the selected experts' gate/up, FFN_TILE hidden rows a work item
    ws = np.int64(gate_exps.strides[0])
    e_g = np.empty(n_used, np.int64)
    e_u = np.empty(n_used, np.int64)
    for k in range(n_used):
        e_g[k] = np.int64(gate_exps.ctypes.data) + np.int64(sel[k]) * n_ff * ws
        e_u[k] = np.int64(up_exps.ctypes.data) + np.int64(sel[k]) * n_ff * ws
    per = (n_ff + FFN_TILE - 1) // FFN_TILE
    bias_dn = _q_bias(kinds[1])
    for it in prange(n_used * per):
        ke = it // per
        h0 = (it - ke * per) * FFN_TILE
        if h0 + FFN_TILE >= n_ff and ke + 1 < n_used:  # the next expert's first lines: nothing else asks for them yet
            _prefetch_start(e_g[ke + 1], pf)
            _prefetch_start(e_u[ke + 1], pf)
        _gate_up_tile(kinds[0], gate_exps, up_exps, np.int64(sel[ke]) * n_ff, h0, min(h0 + FFN_TILE, n_ff),
                      np.int64(xq.ctypes.data), np.int64(xc.ctypes.data), np.int64(nbx), xk, nbk, hg[ke], hu[ke],
                      hq[ke], hc[ke], bias_dn, not k_dn, swiglu, pf)
    hk, nbfk = q8_k_rows(hg, k_dn)                            # [n_used, nbfk*292]
    # (3) down: the experts' rows and the shared experts' rows in one region
    dn = np.empty((n_dn, n_embd), np.float32)                # [n_dn, n_embd] f32
    d_w = np.empty(n_dn, np.int64)
    d_rows = np.full(n_dn, n_embd, np.int64)
    d_s = np.empty(n_dn, np.int64)
    for k in range(n_used):
        d_w[k] = np.int64(down_exps.ctypes.data) + np.int64(sel[k]) * n_embd * np.int64(down_exps.strides[0])
        d_s[k] = np.int64(down_exps.strides[0])
    if n_sh > 0:
        d_w[n_used] = np.int64(down_shexp.ctypes.data)
        d_s[n_used] = np.int64(down_shexp.strides[0])
    tg2, tr2, te2 = _tile_table(d_rows, d_s)
    for it in prange(tg2.shape[0]):
        k = tg2[it]
        if it + 1 < tg2.shape[0] and tg2[it + 1] != k:
            _prefetch_start(d_w[tg2[it + 1]], pf)
        r0 = tr2[it]
        r1 = te2[it]
        if k < n_used:
            rows_any(kinds[1], down_exps, np.int64(sel[k]) * n_embd, r0, r1,
                     np.int64(hq.ctypes.data) + k * np.int64(hq.strides[0]),
                     np.int64(hc.ctypes.data) + k * np.int64(nbf * AUX_BYTES), np.int64(nbf), hk[k], nbfk,
                     dn[k], pf)
        else:
            rows_any(kinds[3], down_shexp, np.int64(0), r0, r1, np.int64(sq.ctypes.data), np.int64(sc.ctypes.data),
                     np.int64(nbs), sk[0], nbsk, dn[k], pf)
    # weighted sum in slot order, then the shared experts (as ggml adds them)
    for i in range(n_embd):
        acc = dn[0, i] * wsel[0]
        for k in range(1, n_used):
            acc += dn[k, i] * wsel[k]
        if n_sh > 0:
            acc += dn[n_used, i]
        y[i] = acc


@njit(cache=True, nogil=True, fastmath=FASTMATH)
def moe_block_decode(x, ffn_norm, eps, sel, wsel, gate_inp, probs_b, gate_exps, up_exps, down_exps,
                     gate_shexp, up_shexp, down_shexp, kinds, gating, norm_w, w_scale):
    """x += moe_ffn_decode(rmsnorm(x) * ffn_norm): a decoded token's whole FFN block.

    x: [n_embd] f32 in/out (the residual stream); ffn_norm: [n_embd] f32; eps: the RMSNorm epsilon;
    the other arguments as moe_ffn_decode.
    """
    n_embd = x.shape[0]
    h = np.empty(n_embd, np.float32)
    _rms_row(h, x, ffn_norm, eps)
    y = np.empty(n_embd, np.float32)
    moe_ffn_decode(y, sel, wsel, h, gate_inp, probs_b, gate_exps, up_exps, down_exps, gate_shexp, up_shexp,
                   down_shexp, kinds, gating, norm_w, w_scale)
    for i in range(n_embd):
        x[i] += y[i]


@njit(cache=True, nogil=True, parallel=True)
def scatter_scaled(ys, y, w, toks, slots):
    """ys[slots[i], toks[i]] = y[i] * w[toks[i], slots[i]] for the rows i of y (one expert's outputs into
    their selection slots). ys: [n_used, n_tok, n] f32; y: [n_e, n] f32; w: [n_tok, n_used] f32;
    toks, slots: [n_e] in range (the caller's routing makes them)."""
    for i in prange(y.shape[0]):
        t, k = toks[i], slots[i]
        s = w[t, k]
        dst = ys[k, t]
        src = y[i]
        for j in range(y.shape[1]):
            dst[j] = src[j] * s


@njit(cache=True, nogil=True, parallel=True)
def sum_slots(out, ys):
    """out[t] = (ys[0, t] + ys[1, t]) + ... + ys[n_used-1, t], slots added in order as ggml does (no
    reassociation). out: [n_tok, n] f32; ys: [n_used, n_tok, n] f32."""
    n_used, n_tok, n = ys.shape
    for t in prange(n_tok):
        o = out[t]
        o[:] = ys[0, t]
        for k in range(1, n_used):
            src = ys[k, t]
            for j in range(n):
                o[j] = o[j] + src[j]
