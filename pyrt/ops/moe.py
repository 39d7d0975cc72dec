"""Mixture-of-experts FFN: routing (softmax/sigmoid gating, selection bias, top-k, weight norm/scale) and
the experts' SwiGLU FFNs run only on the tokens routed to them, one matrix call per expert and weight.

Expert weights are 3D GGUF tensors whose raw view is [n_expert * n_out, row_bytes]; an expert is a
contiguous slice of rows. Imports pyrt.ops and pyrt.errors only.
"""

from __future__ import annotations

import numpy as np

from ..errors import InvalidArgumentError
from . import basic
from . import matmul as mm

# Up to this many tokens, every (token, expert) pair is one group of a single grouped-matmul launch per
# weight (ggml's mul_mat_id); above it, the tokens routed to an expert share one matrix call, which
# reads that expert's rows once for all of them.
ID_MAX_TOKENS = 1

GATING_SOFTMAX = 1
GATING_SIGMOID = 2


def route(logits: np.ndarray, n_expert_used: int, gating: int, exp_probs_b: np.ndarray | None,
          norm_w: bool, w_scale: float) -> tuple[np.ndarray, np.ndarray]:
    """logits [n_tok, n_expert] f32 -> (selected [n_tok, n_used] int32, weights [n_tok, n_used] f32), as llama.cpp.

    The bias only steers the selection; the weights are the unbiased probabilities, optionally
    divided by their sum (clamped at 2^-14 like ggml) and multiplied by w_scale (unless 0 or 1).
    """
    n_tok, n_expert = logits.shape
    if not 0 < n_expert_used <= n_expert:
        raise InvalidArgumentError(f"moe: n_expert_used {n_expert_used} not in [1, {n_expert}]")
    x = logits.astype(np.float32)
    if gating == GATING_SOFTMAX:
        e = np.exp(x - x.max(axis=1, keepdims=True))
        probs = (e / e.sum(axis=1, keepdims=True)).astype(np.float32)
    elif gating == GATING_SIGMOID:
        probs = (np.float32(1.0) / (np.float32(1.0) + np.exp(-x))).astype(np.float32)
    else:
        raise InvalidArgumentError(f"moe: unsupported gating function {gating}")
    sel_probs = probs if exp_probs_b is None else probs + exp_probs_b[None, :]
    # top-k, highest first; ties keep the lower expert id first (a stable sort of the negated values)
    selected = np.argsort(-sel_probs, axis=1, kind="stable")[:, :n_expert_used].astype(np.int32)
    weights = np.take_along_axis(probs, selected, axis=1).astype(np.float32)
    if norm_w:
        s = np.maximum(weights.sum(axis=1, keepdims=True), np.float32(6.103515625e-5))
        weights = (weights / s).astype(np.float32)
    if w_scale != 0.0 and w_scale != 1.0:
        weights = (weights * np.float32(w_scale)).astype(np.float32)
    return selected, weights


def moe_ffn(x: np.ndarray, selected: np.ndarray, weights: np.ndarray, gate_exps, up_exps, down_exps,
            n_ff_exp: int, gate_up: np.ndarray | None = None) -> np.ndarray:
    """sum_k weights[t,k] * down_e(silu(gate_e(x_t)) * up_e(x_t)) for e = selected[t,k] -> [n_tok, n_embd] f32.

    x [n_tok, n_embd] f32; gate_exps/up_exps/down_exps: objects with .raw ([n_expert*n_out, row_bytes]
    uint8) and .ggml_type. Tokens routed to the same expert go through it as one batch. gate_up: optional
    raw view of gate_exps' rows directly followed by up_exps' (models.base.adjacent_rows), for the
    few-token path's single gate+up launch.
    """
    n_tok, n_embd = x.shape
    n_used = selected.shape[1]
    if n_tok <= ID_MAX_TOKENS:
        return _moe_ffn_id(x, selected, weights, gate_exps, up_exps, down_exps, n_ff_exp, gate_up)
    ys = np.zeros((n_used, n_tok, n_embd), dtype=np.float32)  # [n_used, n_tok, n_embd] per selection slot
    flat = selected.reshape(-1)
    order = np.argsort(flat, kind="stable")
    experts, starts = np.unique(flat[order], return_index=True)
    bounds = list(starts) + [flat.shape[0]]
    for i, e in enumerate(experts):
        idx = order[bounds[i]:bounds[i + 1]]   # entries (token * n_used + slot) routed to expert e
        toks = idx // n_used
        slots = idx % n_used
        xe = np.ascontiguousarray(x[toks])    # [n_e, n_embd]
        r0, r1 = int(e) * n_ff_exp, (int(e) + 1) * n_ff_exp
        g, u = mm.matmul_multi(xe, [(gate_exps.raw[r0:r1], gate_exps.ggml_type),
                                    (up_exps.raw[r0:r1], up_exps.ggml_type)])
        h = basic.swiglu(g, u)                 # [n_e, n_ff_exp]
        d0, d1 = int(e) * n_embd, (int(e) + 1) * n_embd
        y = mm.matmul(h, down_exps.raw[d0:d1], down_exps.ggml_type)  # [n_e, n_embd]
        y *= weights[toks, slots][:, None]
        ys[slots, toks] = y
    out = ys[0].copy()
    for k in range(1, n_used):  # ggml adds the slots in order
        out += ys[k]
    return out


def _moe_ffn_id(x, selected, weights, gate_exps, up_exps, down_exps, n_ff_exp, gate_up=None):
    """moe_ffn for a few tokens: grouped-matmul launches (gate and up, or both at once, then down)."""
    n_tok, n_embd = x.shape
    n_used = selected.shape[1]
    e = selected.reshape(-1).astype(np.int64)              # [n_tok * n_used] expert of each group
    x_row = np.repeat(np.arange(n_tok, dtype=np.int64), n_used)
    if gate_up is not None and gate_exps.ggml_type == up_exps.ggml_type:
        n_g = e.shape[0]
        gu = mm.matmul_id(x, gate_up, gate_exps.ggml_type, np.concatenate([e, e + gate_exps.raw.shape[0] // n_ff_exp])
                          * n_ff_exp, np.concatenate([x_row, x_row]), n_ff_exp)
        g, u = gu[:n_g], gu[n_g:]
    else:
        g = mm.matmul_id(x, gate_exps.raw, gate_exps.ggml_type, e * n_ff_exp, x_row, n_ff_exp)
        u = mm.matmul_id(x, up_exps.raw, up_exps.ggml_type, e * n_ff_exp, x_row, n_ff_exp)
    h = basic.swiglu(g, u)                                  # [n_tok * n_used, n_ff_exp]
    y = mm.matmul_id(h, down_exps.raw, down_exps.ggml_type, e * n_embd,
                     np.arange(e.shape[0], dtype=np.int64), n_embd)
    y = y.reshape(n_tok, n_used, n_embd)
    y *= weights[:, :, None]
    out = y[:, 0].copy()
    for k in range(1, n_used):  # ggml adds the slots in order
        out += y[:, k]
    return out
