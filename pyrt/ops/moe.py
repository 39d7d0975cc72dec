"""Mixture-of-experts FFN: routing (softmax/sigmoid gating, selection bias, top-k, weight norm/scale) and
the experts' SwiGLU FFNs run only on the tokens routed to them, one matrix call per expert and weight;
a decoded token's whole MoE FFN as one fused kernel call (MoEDecode).

Expert weights are 3D GGUF tensors whose raw view is [n_expert * n_out, row_bytes]; an expert is a
contiguous slice of rows. The `*_device` functions run the same on numba-cuda device arrays
(pyrt._kernels.cuda, imported on first use). Imports pyrt.ops, pyrt.formats, pyrt._kernels and pyrt.errors only.
"""

from __future__ import annotations

import numpy as np
from gguf import GGMLQuantizationType as T

from .._kernels import fused_moe as fm
from ..errors import InvalidArgumentError
from ..formats.qtypes import get_qtype
from . import basic
from . import matmul as mm
from . import paths
from ..backends import backend_of
from .mla import _DeviceRows, _wrap, is_device_array

GATING_SOFTMAX = fm.GATING_SOFTMAX
GATING_SIGMOID = fm.GATING_SIGMOID

# weights the fused kernel dots: the Q8_0 family (and an F32 router) against Q8_0, the K-quants against Q8_K
_FUSED_KINDS = {int(t): get_qtype(t).code for t in (T.Q8_0, T.Q4_0, T.Q5_0, T.F32, T.Q4_K, T.Q5_K, T.Q6_K)}
_K_TYPES = frozenset(int(t) for t in (T.Q4_K, T.Q5_K, T.Q6_K))


def route(logits: np.ndarray, n_expert_used: int, gating: int, exp_probs_b: np.ndarray | None,
          norm_w: bool, w_scale: float) -> tuple[np.ndarray, np.ndarray]:
    """logits [n_tok, n_expert] f32 -> (selected [n_tok, n_used] int32, weights [n_tok, n_used] f32), as llama.cpp.

    The bias only steers the selection; the weights are the unbiased probabilities, optionally
    divided by their sum (clamped at 2^-14 like ggml) and multiplied by w_scale (unless 0 or 1).
    Device logits (a numba-cuda array) run route_device (exp_probs_b then on the device too).
    """
    if is_device_array(logits):
        return route_device(logits, n_expert_used, gating, exp_probs_b, norm_w, w_scale)
    if type(logits) is not np.ndarray and (b := backend_of(logits)) is not None:
        sel, w = route_device(logits.a, n_expert_used, gating, None if exp_probs_b is None else b.weight(exp_probs_b),
                              norm_w, w_scale)
        return _wrap(b, sel), _wrap(b, w)
    n_tok, n_expert = logits.shape
    if not 0 < n_expert_used <= n_expert:
        raise InvalidArgumentError(f"moe: n_expert_used {n_expert_used} not in [1, {n_expert}]")
    x = logits.astype(np.float32)
    if gating == GATING_SOFTMAX:
        e = np.exp(x - x.max(axis=1, keepdims=True))  # as ggml's soft_max: f64 sum, one f32 scale
        probs = (e * (1.0 / e.sum(axis=1, keepdims=True, dtype=np.float64)).astype(np.float32)).astype(np.float32)
    elif gating == GATING_SIGMOID:
        probs = (np.float32(1.0) / (np.float32(1.0) + np.exp(-x))).astype(np.float32)
    else:
        raise InvalidArgumentError(f"moe: unsupported gating function {gating}")
    sel_probs = probs if exp_probs_b is None else probs + exp_probs_b[None, :]
    # top-k, highest first; ties keep the lower expert id first (a stable sort of the negated values)
    selected = np.argsort(-sel_probs, axis=1, kind="stable")[:, :n_expert_used].astype(np.int32)
    weights = np.take_along_axis(probs, selected, axis=1).astype(np.float32)
    if norm_w:
        s = np.maximum(weights.sum(axis=1, keepdims=True), np.float32(fm.W_NORM_MIN))
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
    few-token path's single gate+up launch. A device x (a numba-cuda array) runs moe_ffn_device (the
    weights' .raw, selected and weights then on the device too).
    """
    if is_device_array(x):
        return moe_ffn_device(x, selected, weights, gate_exps, up_exps, down_exps, n_ff_exp)
    if type(x) is not np.ndarray and (b := backend_of(x)) is not None:
        dw = [_DeviceRows(b.weight(w.raw).reshape(w.raw.shape), w.ggml_type) for w in (gate_exps, up_exps, down_exps)]
        return _wrap(b, moe_ffn_device(x.a, selected.a, weights.a, *dw, n_ff_exp))
    n_tok, n_embd = x.shape
    n_used = selected.shape[1]
    if n_tok <= paths.current().moe_id_max_tokens:
        return _moe_ffn_id(x, selected, weights, gate_exps, up_exps, down_exps, n_ff_exp, gate_up)
    # [n_used, n_tok, n_embd] per selection slot: every (token, slot) has one expert, so all rows are written
    # (a reused buffer: a fresh one per layer spent its time in first-touch page faults)
    ys = mm.scratch("moe_slots", np.float32, (n_used, n_tok, n_embd))
    w32 = np.ascontiguousarray(weights, dtype=np.float32)
    if n_used < 1 or selected.shape != (n_tok, n_used) or w32.shape != selected.shape:
        raise InvalidArgumentError(f"moe_ffn: selected {selected.shape} and weights {w32.shape} must be "
                                   f"[{n_tok} tokens, n_used]")
    flat = selected.reshape(-1)
    order = np.argsort(flat, kind="stable")
    experts, starts = np.unique(flat[order], return_index=True)
    if experts.shape[0] and (experts[0] < 0 or experts[-1] >= gate_exps.raw.shape[0] // n_ff_exp):
        raise InvalidArgumentError(f"moe_ffn: expert ids must be in [0, {gate_exps.raw.shape[0] // n_ff_exp})")
    bounds = list(starts) + [flat.shape[0]]
    tg, tu = gate_exps.ggml_type, up_exps.ggml_type
    # gate and up read x in one activation format: quantized once for all tokens, gathered per expert
    xq = None
    if x.dtype == np.float32 and x.flags.c_contiguous and get_qtype(tg).dot_type == get_qtype(tu).dot_type:
        xq = mm.quantized_rows(x, tg)
    for i, e in enumerate(experts):
        idx = order[bounds[i]:bounds[i + 1]]   # entries (token * n_used + slot) routed to expert e
        toks = idx // n_used
        slots = idx % n_used
        r0, r1 = int(e) * n_ff_exp, (int(e) + 1) * n_ff_exp
        if xq is not None and mm.quantized_path(tg, toks.shape[0]) and mm.quantized_path(tu, toks.shape[0]):
            xqe = xq[toks]                     # [n_e, row bytes]
            g = mm.matmul_quantized(xqe, gate_exps.raw[r0:r1], tg, n_embd)
            u = mm.matmul_quantized(xqe, up_exps.raw[r0:r1], tu, n_embd)
        else:
            xe = np.ascontiguousarray(x[toks])  # [n_e, n_embd]
            g, u = mm.matmul_multi(xe, [(gate_exps.raw[r0:r1], tg), (up_exps.raw[r0:r1], tu)])
        h = basic.swiglu(g, u)                 # [n_e, n_ff_exp]
        d0, d1 = int(e) * n_embd, (int(e) + 1) * n_embd
        y = mm.matmul(h, down_exps.raw[d0:d1], down_exps.ggml_type)  # [n_e, n_embd]
        fm.scatter_scaled(ys, y, w32, toks, slots)
    out = np.empty((n_tok, n_embd), np.float32)
    fm.sum_slots(out, ys)
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


class MoEDecode:
    """One MoE layer's weights checked once, for fused_moe.moe_ffn_decode (one token per call).

    `build` returns None when the layer does not fit the fused kernel (expert or shared-expert weights
    not Q8_0/Q4_0/Q5_0/Q4_K/Q5_K/Q6_K, router not Q8_0/Q4_0/Q5_0/F32, gate and up of different types); those
    layers run op by op. After a call, `sel` and `wsel` hold the experts chosen and their weights.
    """

    def __init__(self, gate_inp, probs_b, exps, sh, kinds, n_embd, n_used, gating, norm_w, w_scale):
        self.gate_inp, self.probs_b = gate_inp, probs_b
        self.gate_exps, self.up_exps, self.down_exps = exps
        self.gate_shexp, self.up_shexp, self.down_shexp = sh
        self.kinds, self.n_embd = kinds, n_embd
        self.n_used, self.gating, self.norm_w, self.w_scale = n_used, gating, bool(norm_w), float(w_scale)
        self.sel = np.zeros(n_used, np.int32)
        self.wsel = np.zeros(n_used, np.float32)

    @classmethod
    def build(cls, gate_inp, exp_probs_b, gate_exps, up_exps, down_exps, shexp, n_ff_exp: int, n_used: int,
              gating: int, norm_w: bool, w_scale: float) -> "MoEDecode | None":
        """gate_inp, gate/up/down_exps: weights (.raw [rows, row_bytes] uint8, .ggml_type), the experts'
        rows stacked; shexp: the shared experts' (gate, up, down) weights or None; exp_probs_b: [n_expert]
        f32 or None. Raises InvalidArgumentError when the tensors disagree in shape."""
        if not paths.current().fused_moe_decode or gating not in (GATING_SOFTMAX, GATING_SIGMOID):
            return None
        types = [int(gate_exps.ggml_type), int(down_exps.ggml_type)]
        types += [int(shexp[0].ggml_type), int(shexp[2].ggml_type)] if shexp else [int(T.Q8_0)] * 2
        if (any(t not in _FUSED_KINDS or t == T.F32 for t in types) or int(gate_inp.ggml_type) not in _FUSED_KINDS
                or int(gate_inp.ggml_type) in _K_TYPES
                or up_exps.ggml_type != gate_exps.ggml_type or (shexp and shexp[1].ggml_type != shexp[0].ggml_type)):
            return None
        n_expert = gate_inp.raw.shape[0]
        qt = get_qtype(gate_exps.ggml_type)
        if gate_exps.raw.ndim != 2 or gate_exps.raw.shape[1] % qt.type_size:
            raise InvalidArgumentError("moe: gate_exps must be [rows, row_bytes] raw rows")
        n_embd = gate_exps.raw.shape[1] // qt.type_size * qt.block_size
        if not 0 < n_used <= n_expert or n_ff_exp <= 0 or n_ff_exp % 32:
            return None
        gi = mm._check_raw(gate_inp.raw, get_qtype(gate_inp.ggml_type), n_embd, "moe ffn_gate_inp")
        ge = mm._check_raw(gate_exps.raw, qt, n_embd, "moe gate_exps")
        ue = mm._check_raw(up_exps.raw, get_qtype(up_exps.ggml_type), n_embd, "moe up_exps")
        de = mm._check_raw(down_exps.raw, get_qtype(down_exps.ggml_type), n_ff_exp, "moe down_exps")
        if ge.shape[0] != n_expert * n_ff_exp or ue.shape[0] != ge.shape[0] or de.shape[0] != n_expert * n_embd:
            raise InvalidArgumentError(f"moe: expert tensors do not hold {n_expert} experts of {n_ff_exp} x {n_embd}")
        if shexp:
            n_sh = shexp[0].raw.shape[0]
            if n_sh <= 0 or n_sh % 32:
                return None
            sh = (mm._check_raw(shexp[0].raw, get_qtype(shexp[0].ggml_type), n_embd, "moe gate_shexp"),
                  mm._check_raw(shexp[1].raw, get_qtype(shexp[1].ggml_type), n_embd, "moe up_shexp"),
                  mm._check_raw(shexp[2].raw, get_qtype(shexp[2].ggml_type), n_sh, "moe down_shexp"))
            if sh[1].shape[0] != n_sh or sh[2].shape[0] != n_embd:
                raise InvalidArgumentError("moe: shared expert tensors disagree in shape")
        else:
            z = np.zeros((0, 34), np.uint8)
            z.flags.writeable = False
            sh = (z, z, z)
        pb = np.zeros(n_expert, np.float32) if exp_probs_b is None else np.ascontiguousarray(exp_probs_b, np.float32)
        if pb.shape != (n_expert,):
            raise InvalidArgumentError(f"moe: exp_probs_b has shape {pb.shape}, expected ({n_expert},)")
        kinds = np.array([_FUSED_KINDS[t] for t in types + [int(gate_inp.ggml_type)]], np.int64)
        return cls(gi, pb, (ge, ue, de), sh, kinds, n_embd, n_used, gating, norm_w, w_scale)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """x [1, n_embd] f32 (one token) -> the FFN output [1, n_embd] f32 (routed experts + shared experts)."""
        if (not isinstance(x, np.ndarray) or x.dtype != np.float32 or x.shape != (1, self.n_embd)
                or not x.flags.c_contiguous):
            raise InvalidArgumentError(f"moe: x must be a C-contiguous float32 [1, {self.n_embd}] array")
        y = np.empty((1, self.n_embd), np.float32)
        fm.moe_ffn_decode(y[0], self.sel, self.wsel, x[0], self.gate_inp, self.probs_b, self.gate_exps,
                          self.up_exps, self.down_exps, self.gate_shexp, self.up_shexp, self.down_shexp,
                          self.kinds, self.gating, self.norm_w, self.w_scale)
        return y

    def block(self, x: np.ndarray, ffn_norm: np.ndarray, eps: float) -> None:
        """x += self(rms_norm(x) * ffn_norm) in one call: x [n_embd] f32, the residual stream of one token."""
        if (not isinstance(x, np.ndarray) or x.dtype != np.float32 or x.shape != (self.n_embd,)
                or not x.flags.c_contiguous or not x.flags.writeable):
            raise InvalidArgumentError(f"moe: x must be a writable C-contiguous float32 [{self.n_embd}] array")
        if (not isinstance(ffn_norm, np.ndarray) or ffn_norm.dtype != np.float32 or ffn_norm.shape != (self.n_embd,)
                or not ffn_norm.flags.c_contiguous):
            raise InvalidArgumentError(f"moe: ffn_norm must be a C-contiguous float32 [{self.n_embd}] array")
        fm.moe_block_decode(x, ffn_norm, float(eps), self.sel, self.wsel, self.gate_inp, self.probs_b,
                            self.gate_exps, self.up_exps, self.down_exps, self.gate_shexp, self.up_shexp,
                            self.down_shexp, self.kinds, self.gating, self.norm_w, self.w_scale)


# ------------------------------------------------------------------------------------------------ the device
# The same MoE over device arrays (numba-cuda), for the cuda backend: weights are objects with .raw (a device
# [rows, row_bytes] uint8 array of GGUF blocks) and .ggml_type, as on the CPU. Only the selected experts' rows
# are read. The kernels are imported on first use, so a CPU install never imports numba.cuda.

def _device_type(ggml_type: int, what: str) -> str:
    from .._kernels.cuda import moe as cmoe
    name = T(int(ggml_type)).name
    if name not in cmoe.TYPES:
        raise InvalidArgumentError(f"moe on the device: {what} type {name} is not one of {', '.join(cmoe.TYPES)}")
    return name


def _check_device_rows(w, n_in: int, what: str) -> str:
    name = _device_type(w.ggml_type, what)
    qt = get_qtype(w.ggml_type)
    if w.raw.dtype != np.uint8 or len(w.raw.shape) != 2 or n_in % qt.block_size \
            or w.raw.shape[1] != n_in // qt.block_size * qt.type_size:
        raise InvalidArgumentError(f"moe on the device: {what} rows do not hold {n_in} {name} values")
    return name


def route_device(logits, n_expert_used: int, gating: int, exp_probs_b, norm_w: bool, w_scale: float, stream=0):
    """route on the device: logits [n_tok, n_expert] f32 device array -> (selected [n_tok, n_used] int32,
    weights [n_tok, n_used] f32) device arrays. exp_probs_b: a [n_expert] f32 device array or None."""
    from numba import cuda

    from .._kernels.cuda import moe as cmoe
    n_tok, n_expert = logits.shape
    if not 0 < n_expert_used <= n_expert:
        raise InvalidArgumentError(f"moe: n_expert_used {n_expert_used} not in [1, {n_expert}]")
    if gating not in (GATING_SOFTMAX, GATING_SIGMOID):
        raise InvalidArgumentError(f"moe: unsupported gating function {gating}")
    if exp_probs_b is None:
        exp_probs_b = cuda.to_device(np.zeros(n_expert, np.float32), stream=stream)
    sel = cuda.device_array((n_tok, n_expert_used), np.int32, stream=stream)
    w = cuda.device_array((n_tok, n_expert_used), np.float32, stream=stream)
    if n_tok:
        cmoe.moe_route[n_tok, cmoe.ROUTE_THREADS, stream, cmoe.route_shared_bytes(n_expert)](
            sel, w, logits, exp_probs_b, int(gating), bool(norm_w), float(w_scale))
    return sel, w


def matmul_id_device(x, w, row0, x_row, n_out: int, stream=0):
    """dst[g] = w.raw[row0[g] : row0[g] + n_out] . x[x_row[g]] on the device -> [n_group, n_out] f32.

    x [n_x, n_in] f32; row0, x_row [n_group] int64 device arrays (ggml's mul_mat_id)."""
    from numba import cuda

    from .._kernels.cuda import moe as cmoe
    name = _check_device_rows(w, x.shape[1], "matmul_id")
    dst = cuda.device_array((row0.shape[0], n_out), np.float32, stream=stream)
    if row0.shape[0]:
        cmoe.MUL_MAT_ID[name][cmoe.row_blocks(row0.shape[0], n_out), cmoe.THREADS, stream](dst, x, w.raw, row0,
                                                                                          x_row)
    return dst


def moe_ffn_device(x, selected, weights, gate_exps, up_exps, down_exps, n_ff_exp: int, out=None, stream=0):
    """moe_ffn on the device: x [n_tok, n_embd] f32, selected/weights [n_tok, n_used] (route_device) ->
    out [n_tok, n_embd] f32 (added to when given): gate and up with SwiGLU in one launch, down, the weighted
    sum of the slots in order. Each (token, slot) reads only its expert's rows."""
    from numba import cuda

    from .._kernels.cuda import moe as cmoe
    n_tok, n_embd = x.shape
    n_used = selected.shape[1]
    tg = _check_device_rows(gate_exps, n_embd, "gate_exps")
    if _check_device_rows(up_exps, n_embd, "up_exps") != tg:
        raise InvalidArgumentError("moe on the device: gate_exps and up_exps must have one type")
    td = _check_device_rows(down_exps, n_ff_exp, "down_exps")
    n_group = n_tok * n_used
    row_g = cuda.device_array(n_group, np.int64, stream=stream)
    row_d = cuda.device_array(n_group, np.int64, stream=stream)
    x_row = cuda.device_array(n_group, np.int64, stream=stream)
    g_row = cuda.device_array(n_group, np.int64, stream=stream)
    accumulate = out is not None
    if out is None:
        out = cuda.device_array((n_tok, n_embd), np.float32, stream=stream)
    if n_tok == 0:
        return out
    cmoe.expert_rows[max(1, (n_group + 127) // 128), 128, stream](row_g, row_d, x_row, g_row, selected, n_ff_exp,
                                                                   n_embd)
    h = cuda.device_array((n_group, n_ff_exp), np.float32, stream=stream)
    cmoe.MOE_GATE_UP[tg][cmoe.row_blocks(n_group, n_ff_exp), cmoe.THREADS, stream](h, x, gate_exps.raw, up_exps.raw,
                                                                                   row_g, x_row)
    y = cuda.device_array((n_group, n_embd), np.float32, stream=stream)
    cmoe.MUL_MAT_ID[td][cmoe.row_blocks(n_group, n_embd), cmoe.THREADS, stream](y, h, down_exps.raw, row_d, g_row)
    cmoe.moe_combine[max(1, (n_tok * n_embd + 127) // 128), 128, stream](out, y, weights, accumulate)
    return out


def gate_up_device(x, w_gate, w_up, row0, x_row, n_ff: int, stream=0):
    """h[g] = silu(w_gate rows . x[x_row[g]]) * (w_up rows . x[x_row[g]]) on the device, each group's n_ff rows
    from row0[g] -> [n_group, n_ff] f32 (one launch for gate, up and SwiGLU)."""
    from numba import cuda

    from .._kernels.cuda import moe as cmoe
    name = _check_device_rows(w_gate, x.shape[1], "gate")
    if _check_device_rows(w_up, x.shape[1], "up") != name:
        raise InvalidArgumentError("moe on the device: gate and up must have one type")
    h = cuda.device_array((row0.shape[0], n_ff), np.float32, stream=stream)
    if row0.shape[0]:
        cmoe.MOE_GATE_UP[name][cmoe.row_blocks(row0.shape[0], n_ff), cmoe.THREADS, stream](h, x, w_gate.raw,
                                                                                          w_up.raw, row0, x_row)
    return h


def moe_block_device(h, gate_inp, exp_probs_b, gate_exps, up_exps, down_exps, shexp, n_ff_exp: int, n_used: int,
                     gating: int, norm_w: bool, w_scale: float, stream=0):
    """A deepseek2 MoE FFN on the device: router, top-k, the selected experts' SwiGLU FFNs and the shared
    experts -> [n_tok, n_embd] f32 (what the layer adds to its residual).

    h [n_tok, n_embd] f32 (the ffn_norm output); gate_inp [n_expert, n_embd] and the expert tensors: weights with
    .raw on the device; shexp: (gate, up, down) shared-expert weights or None; exp_probs_b: [n_expert] f32 device
    array or None; the routing scalars as route."""
    from numba import cuda
    n_tok, n_embd = h.shape
    n_expert = gate_inp.raw.shape[0]
    zero = cuda.to_device(np.zeros(n_tok, np.int64), stream=stream)
    rows = cuda.to_device(np.arange(n_tok, dtype=np.int64), stream=stream)
    logits = matmul_id_device(h, gate_inp, zero, rows, n_expert, stream)
    sel, w = route_device(logits, n_used, gating, exp_probs_b, norm_w, w_scale, stream)
    if shexp is not None:
        n_sh = shexp[0].raw.shape[0]
        hs = gate_up_device(h, shexp[0], shexp[1], zero, rows, n_sh, stream)
        out = matmul_id_device(hs, shexp[2], zero, rows, n_embd, stream)
    else:
        out = None
    return moe_ffn_device(h, sel, w, gate_exps, up_exps, down_exps, n_ff_exp, out=out, stream=stream)
