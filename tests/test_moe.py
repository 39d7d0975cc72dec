"""MoE routing against a float64 reference, the fused one-token MoE kernel against the op-by-op path it
replaces, and the vectorized exp it (and every SwiGLU) uses."""

from __future__ import annotations

import numpy as np
import pytest
from gguf import GGMLQuantizationType as T
from gguf.quants import quantize
from numba import njit

from pyrt._kernels import act
from pyrt._kernels.config import FASTMATH
from pyrt.errors import InvalidArgumentError
from pyrt.ops import basic, moe
from pyrt.ops import matmul as mm


K_NAMES = {T.Q4_K: "q4_k", T.Q5_K: "q5_k", T.Q6_K: "q6_k"}


class W:
    """A weight as the models hold it: raw GGUF rows + type (K-quants: random blocks with sane scales, as
    gguf-py cannot quantize them; a's shape only)."""

    def __init__(self, a: np.ndarray, t: int):
        if t == T.F32:
            self.raw = np.ascontiguousarray(a, np.float32).view(np.uint8).reshape(a.shape[0], -1)
        elif t in K_NAMES:
            from test_quants_k import rand_blocks
            self.raw = rand_blocks(K_NAMES[t], a.shape[0], a.shape[1], int(abs(a[0, 0]) * 1e6))
            if t == T.Q6_K:  # keep the values ~0.05 like the others: d in [1e-3, 2e-2] times q-32 times sc
                d = self.raw.reshape(a.shape[0], -1, 210)[:, :, 208:210].copy().view(np.float16)
                self.raw.reshape(a.shape[0], -1, 210)[:, :, 208:210] = (d / 16).view(np.uint8)
        else:
            self.raw = quantize(a.astype(np.float32), t).view(np.uint8).reshape(a.shape[0], -1)
        self.raw.flags.writeable = False
        self.ggml_type = t


def _layer(rng, n_embd, n_ff, n_expert, n_sh, t_gu, t_d, t_sh=T.Q8_0, t_shd=T.Q8_0, t_r=T.F32):
    """Random router / experts / shared experts (3D expert tensors as [n_expert * rows, row_bytes] raw)."""
    s = 0.05
    gate_inp = W(rng.standard_normal((n_expert, n_embd)) * 0.3, t_r)
    ge = W(rng.standard_normal((n_expert * n_ff, n_embd)) * s, t_gu)
    ue = W(rng.standard_normal((n_expert * n_ff, n_embd)) * s, t_gu)
    de = W(rng.standard_normal((n_expert * n_embd, n_ff)) * s, t_d)
    sh = None
    if n_sh:
        sh = (W(rng.standard_normal((n_sh, n_embd)) * s, t_sh), W(rng.standard_normal((n_sh, n_embd)) * s, t_sh),
              W(rng.standard_normal((n_embd, n_sh)) * s, t_shd))
    return gate_inp, ge, ue, de, sh


def _op_by_op(x, gate_inp, probs_b, ge, ue, de, sh, n_ff, n_used, gating, norm_w, w_scale):
    logits = mm.matmul(x, gate_inp.raw, gate_inp.ggml_type)
    sel, w = moe.route(logits, n_used, gating, probs_b, norm_w, w_scale)
    y = moe.moe_ffn(x, sel, w, ge, ue, de, n_ff)
    if sh is not None:
        g, u = mm.matmul_multi(x, [(sh[0].raw, sh[0].ggml_type), (sh[1].raw, sh[1].ggml_type)])
        y += mm.matmul(basic.swiglu(g, u), sh[2].raw, sh[2].ggml_type)
    return y, sel, w


CASES = [  # (gate/up exps, down exps, shexp gate/up, shexp down, n_shexp rows, router, gating, bias, norm, scale)
    (T.Q4_0, T.Q4_0, T.Q4_0, T.Q4_0, 128, T.F32, moe.GATING_SOFTMAX, False, False, 1.0),
    (T.Q8_0, T.Q5_0, T.Q4_0, T.Q8_0, 64, T.Q8_0, moe.GATING_SIGMOID, True, True, 2.5),
    (T.Q5_0, T.Q8_0, T.Q8_0, T.Q8_0, 0, T.Q4_0, moe.GATING_SOFTMAX, True, True, 1.0),
    (T.Q4_0, T.Q8_0, T.Q5_0, T.Q4_0, 96, T.Q5_0, moe.GATING_SOFTMAX, False, False, 16.0),
    # K-quants (n_embd = n_ff = 256): a Q4_K_M DeepSeek mix (Q4_K gate/up, Q8_0 down, Q6_K shared down), all
    # K-quant, and K-quant experts beside Q8_0-family shared experts
    (T.Q4_K, T.Q8_0, T.Q4_K, T.Q6_K, 256, T.F32, moe.GATING_SOFTMAX, False, False, 1.0),
    (T.Q5_K, T.Q6_K, T.Q4_K, T.Q4_K, 256, T.Q8_0, moe.GATING_SIGMOID, True, True, 2.5),
    (T.Q4_K, T.Q4_K, T.Q4_0, T.Q8_0, 64, T.F32, moe.GATING_SOFTMAX, False, True, 1.0),
]


@pytest.mark.boundscheck
@pytest.mark.parametrize("case", CASES)
def test_fused_decode_matches_op_by_op(case):
    t_gu, t_d, t_sh, t_shd, n_sh, t_r, gating, bias, norm_w, w_scale = case
    rng = np.random.default_rng(7)
    n_embd, n_ff, n_expert, n_used = 96, 64, 11, 3   # odd n_expert: the router's last row pair is single
    if any(t in K_NAMES for t in case[:4]):
        n_embd, n_ff = 256, 256
    gate_inp, ge, ue, de, sh = _layer(rng, n_embd, n_ff, n_expert, n_sh, t_gu, t_d, t_sh, t_shd, t_r)
    probs_b = (rng.standard_normal(n_expert) * 0.05).astype(np.float32) if bias else None
    fused = moe.MoEDecode.build(gate_inp, probs_b, ge, ue, de, sh, n_ff, n_used, gating, norm_w, w_scale)
    assert fused is not None
    for i in range(5):
        x = rng.standard_normal((1, n_embd)).astype(np.float32)
        ref, sel, w = _op_by_op(x, gate_inp, probs_b, ge, ue, de, sh, n_ff, n_used, gating, norm_w, w_scale)
        y = fused(x)
        assert np.array_equal(fused.sel, sel[0]), i
        np.testing.assert_allclose(fused.wsel, w[0], rtol=2e-6)
        # same integer dots and requantized activations; only exp and the fused multiply-adds of the
        # weighted sum may round differently
        np.testing.assert_allclose(y, ref, rtol=1e-4, atol=1e-5 * float(np.abs(ref).max()))


def test_fused_decode_thread_count_independent():
    import numba
    rng = np.random.default_rng(3)
    gate_inp, ge, ue, de, sh = _layer(rng, 64, 96, 8, 64, T.Q4_0, T.Q4_0, T.Q8_0, T.Q8_0)
    fused = moe.MoEDecode.build(gate_inp, None, ge, ue, de, sh, 96, 2, moe.GATING_SOFTMAX, False, 1.0)
    x = rng.standard_normal((1, 64)).astype(np.float32)
    prev = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        one = fused(x)
        numba.set_num_threads(max(2, prev))
        assert np.array_equal(fused(x), one)
    finally:
        numba.set_num_threads(prev)


def test_fused_decode_falls_back_or_refuses():
    rng = np.random.default_rng(1)
    gate_inp, ge, ue, de, sh = _layer(rng, 64, 64, 4, 64, T.Q4_0, T.Q4_0)
    b = moe.MoEDecode.build
    assert b(gate_inp, None, W(rng.standard_normal((256, 64)), T.F16), ue, de, sh, 64, 2, 1, False, 1.0) is None
    assert b(W(rng.standard_normal((4, 64)), T.F16), None, ge, ue, de, sh, 64, 2, 1, False, 1.0) is None  # router
    assert b(gate_inp, None, ge, ue, W(rng.standard_normal((256, 64)), T.F32), sh, 64, 2, 1, False, 1.0) is None
    assert b(gate_inp, None, ge, W(rng.standard_normal((256, 64)), T.Q8_0), de, sh, 64, 2, 1, False, 1.0) is None
    with pytest.raises(InvalidArgumentError):  # 4 experts of 64 rows do not fit 3 experts' worth of rows
        b(gate_inp, None, W(rng.standard_normal((192, 64)), T.Q4_0), ue, de, sh, 64, 2, 1, False, 1.0)
    with pytest.raises(InvalidArgumentError):
        b(gate_inp, np.zeros(3, np.float32), ge, ue, de, sh, 64, 2, 1, False, 1.0)
    f = b(gate_inp, None, ge, ue, de, sh, 64, 2, 1, False, 1.0)
    for bad in (np.zeros((2, 64), np.float32), np.zeros((1, 32), np.float32), np.zeros((1, 64), np.float64)):
        with pytest.raises(InvalidArgumentError):
            f(bad)


@pytest.mark.parametrize("gating", [moe.GATING_SOFTMAX, moe.GATING_SIGMOID])
def test_route_against_float64(gating):
    rng = np.random.default_rng(gating)
    logits = rng.standard_normal((20, 16)).astype(np.float32) * 3
    bias = (rng.standard_normal(16) * 0.5).astype(np.float32)
    sel, w = moe.route(logits, 4, gating, bias, True, 2.0)
    x = logits.astype(np.float64)
    p = np.exp(x - x.max(1, keepdims=True)) if gating == moe.GATING_SOFTMAX else 1 / (1 + np.exp(-x))
    if gating == moe.GATING_SOFTMAX:
        p /= p.sum(1, keepdims=True)
    ref_sel = np.argsort(-(p + bias), axis=1, kind="stable")[:, :4]
    assert np.array_equal(sel, ref_sel)
    ref_w = np.take_along_axis(p, ref_sel, 1)
    ref_w = ref_w / ref_w.sum(1, keepdims=True) * 2.0
    np.testing.assert_allclose(w, ref_w, rtol=1e-6)


@njit(fastmath=FASTMATH, error_model="numpy")
def _exp_all(dst, x):
    for i in range(x.shape[0]):
        dst[i] = act.exp_f32(x[i])


def test_exp_f32_within_one_ulp():
    x = np.concatenate([np.linspace(-87.3, 88.0, 400_001), np.random.default_rng(0).standard_normal(100_000) * 20,
                        [0.0, -0.0, 1.0, -1.0, 1e-30]]).astype(np.float32)
    x = x[(x > act.EXP_X_MIN) & (x < act.EXP_X_MAX)]
    got = np.empty_like(x)
    _exp_all(got, x)
    ref = np.exp(x.astype(np.float64))
    ulp = np.spacing(ref.astype(np.float32)).astype(np.float64)
    assert float((np.abs(got - ref) / ulp).max()) < 1.0
    edge = np.array([-np.inf, -200.0, -88.0, np.inf, np.nan], np.float32)
    out = np.empty_like(edge)
    _exp_all(out, edge)
    assert out[0] == 0 and out[1] == 0 and out[2] == 0 and np.isfinite(out[3]) and out[3] > 1e38
    assert np.isnan(basic.swiglu(np.array([[np.nan]], np.float32), np.ones((1, 1), np.float32))[0, 0])


def _moe_ffn_ref(x, sel, w, ge, ue, de, n_ff):
    """The prompt-path MoE FFN from public matmuls on each expert's gathered f32 rows, slots added in order."""
    n_tok, n_embd = x.shape
    ys = np.zeros((sel.shape[1], n_tok, n_embd), np.float32)
    for e in np.unique(sel):
        toks, slots = np.nonzero(sel == e)
        xe = np.ascontiguousarray(x[toks])
        g = mm.matmul(xe, ge.raw[e * n_ff:(e + 1) * n_ff], ge.ggml_type)
        u = mm.matmul(xe, ue.raw[e * n_ff:(e + 1) * n_ff], ue.ggml_type)
        y = mm.matmul(basic.swiglu(g, u), de.raw[e * n_embd:(e + 1) * n_embd], de.ggml_type)
        ys[slots, toks] = y * w[toks, slots][:, None]
    return ys.sum(axis=0) if sel.shape[1] == 1 else ys[0] + ys[1]


def _weight(rng, n_out, n_in, t):
    """Random weights of type t (K-quants as random blocks: gguf cannot quantize them)."""
    if t in (T.Q4_K, T.Q5_K, T.Q6_K):
        from test_quants_k import rand_blocks
        w = W.__new__(W)
        w.raw, w.ggml_type = rand_blocks(T(t).name.lower(), n_out, n_in, int(rng.integers(1 << 30))), t
        return w
    return W(rng.standard_normal((n_out, n_in)) * 0.05, t)


@pytest.mark.boundscheck
@pytest.mark.parametrize("t_g, t_u, t_d", [(T.Q4_0, T.Q4_0, T.Q8_0), (T.Q8_0, T.Q5_0, T.Q4_0),
                                           (T.Q4_K, T.Q4_K, T.Q6_K), (T.Q4_K, T.Q8_0, T.Q4_0)])
def test_prompt_moe_quantizes_once_with_the_same_bits(t_g, t_u, t_d):
    """Gate/up activations quantized once for all tokens and gathered per expert give the bits of
    quantizing each expert's rows (one expert takes every token: AMX/BLAS sizes; the rest ~27: dot)."""
    rng = np.random.default_rng(7)
    n_tok, n_embd, n_ff, n_expert = 80, 256, 512, 4
    x = rng.standard_normal((n_tok, n_embd)).astype(np.float32)
    ge, ue, de = (_weight(rng, n_expert * n_out, n_in, t)
                  for n_out, n_in, t in ((n_ff, n_embd, t_g), (n_ff, n_embd, t_u), (n_embd, n_ff, t_d)))
    sel = np.stack([np.zeros(n_tok, np.int32), rng.integers(1, n_expert, n_tok).astype(np.int32)], axis=1)
    w = rng.uniform(0.1, 1.0, (n_tok, 2)).astype(np.float32)
    y = moe.moe_ffn(x, sel, w, ge, ue, de, n_ff)
    assert np.array_equal(y, _moe_ffn_ref(x, sel, w, ge, ue, de, n_ff))


def test_matmul_quantized_checks_its_rows():
    rng = np.random.default_rng(8)
    x = rng.standard_normal((5, 64)).astype(np.float32)
    wq = W(rng.standard_normal((32, 64)), T.Q4_0)
    xq = mm.quantized_rows(x, T.Q4_0)
    assert np.array_equal(mm.matmul_quantized(xq[[4, 1]], wq.raw, T.Q4_0, 64),
                          mm.matmul(np.ascontiguousarray(x[[4, 1]]), wq.raw, T.Q4_0))
    assert mm.quantized_rows(x, T.F32) is None
    for bad in (xq[:, :-1], xq.view(np.int8), xq[:, ::2]):
        with pytest.raises(InvalidArgumentError):
            mm.matmul_quantized(bad, wq.raw, T.Q4_0, 64)
    with pytest.raises(InvalidArgumentError):
        mm.matmul_quantized(xq, wq.raw, T.Q4_0, 96)
