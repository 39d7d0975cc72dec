"""MoE on the device: routing against pyrt.ops.moe.route, mul_mat_id per weight type against float64 over the
dequantized weights and against the CPU matmul_id, and the whole routed FFN against the CPU moe_ffn, in the
CUDA simulator (a child pytest, see tests/test_cuda_mla.py); every kernel compiled to PTX for cc 8.0 and 9.0.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
from gguf import GGMLQuantizationType as T
from gguf.quants import dequantize, quantize

pytest.importorskip("numba_cuda")

from simulator import SIM  # noqa: E402
from test_cuda_mla import sim_only  # noqa: E402

TYPES = [T.F32, T.F16, T.BF16, T.Q8_0, T.Q4_0, T.Q5_0, T.Q4_K, T.Q5_K, T.Q6_K]
# CPU matmul tolerance (tests/test_matmul.py): the CPU quantizes activations, the device does not
NMSE_CPU = {"F32": 5e-14, "F16": 4e-7, "BF16": 2e-5, "Q8_0": 1.5e-4, "Q5_0": 4e-3, "Q4_0": 1.5e-2,
            "Q6_K": 3e-4, "Q5_K": 2e-4, "Q4_K": 2e-4}
K_SCALES = {T.Q4_K: (0, 2), T.Q5_K: (0, 2), T.Q6_K: (208,)}


class W:
    """A weight as the models hold it (raw GGUF rows + type); `.dev()` the same with the rows on the device."""

    def __init__(self, rng, n_rows: int, n_in: int, t: int):
        if t in K_SCALES:  # gguf-py has no k-quant quantizer: random blocks with small positive f16 scales
            bs, ts = 256, {T.Q4_K: 144, T.Q5_K: 176, T.Q6_K: 210}[t]
            b = rng.integers(0, 256, (n_rows * n_in // bs, ts), dtype=np.uint8)
            for off in K_SCALES[t]:
                d = (rng.random(b.shape[0]) * 0.002 + 0.0005).astype(np.float16)
                b[:, off:off + 2] = d.view(np.uint8).reshape(-1, 2)
            self.raw = b.reshape(n_rows, -1)
        elif t == T.F32:
            self.raw = (0.1 * rng.standard_normal((n_rows, n_in))).astype(np.float32).view(np.uint8)
        else:
            self.raw = quantize((0.1 * rng.standard_normal((n_rows, n_in))).astype(np.float32), t).view(np.uint8)
        self.raw = np.ascontiguousarray(self.raw.reshape(n_rows, -1))
        self.raw.flags.writeable = False
        self.ggml_type = int(t)

    def values(self) -> np.ndarray:
        return dequantize(self.raw, T(self.ggml_type)).astype(np.float64)

    def dev(self):
        from numba import cuda
        from types import SimpleNamespace
        return SimpleNamespace(raw=cuda.to_device(self.raw), ggml_type=self.ggml_type)


def _nmse(a, ref):
    return float(((a - ref) ** 2).sum() / (ref ** 2).sum())


@pytest.mark.skipif(SIM, reason="the simulator has no compile_ptx")
@pytest.mark.parametrize("cc", [(8, 0), (9, 0)])
def test_kernels_compile_to_ptx(cc):
    from pyrt._kernels.cuda import moe, ptx  # noqa: F401  (registers the kernels)
    names = [n for n in ptx.REGISTRY if n.startswith("moe.")]
    assert len(names) == 2 * len(TYPES) + 3, names
    for name in names:
        fn, sigs = ptx.REGISTRY[name]
        for sig in sigs:
            text = ptx.compile_for(fn, sig, cc)
            assert f".target sm_{cc[0]}{cc[1]}" in text and ".entry" in text, name


@pytest.mark.skipif(SIM, reason="the simulator has no CUDADispatcher")
def test_registry_covers_every_kernel():
    """Every kernel of the MLA, MoE and YaRN modules (the per-type tables included) is in the PTX registry."""
    from numba.cuda.dispatcher import CUDADispatcher

    from pyrt._kernels.cuda import mla, moe, ptx, yarn
    registered = {id(fn) for fn, _ in ptx.REGISTRY.values()}
    n = 0
    for mod in (mla, moe, yarn):
        objs = list(vars(mod).values())
        objs += [k for table in (mla.FLASH_MLA, moe.MUL_MAT_ID, moe.MOE_GATE_UP) for k in table.values()]
        for obj in objs:
            if isinstance(obj, CUDADispatcher) and not obj.targetoptions.get("device"):
                assert id(obj.py_func) in registered, obj.py_func.__name__
                n += 1
    assert n >= 2 * len(TYPES) + 9


def test_constants_match_the_cpu_kernels():
    """The device kernels take the CPU kernels' codes (pyrt._kernels.codes) and routing constants."""
    from pyrt._kernels import codes as fk
    from pyrt._kernels import fused_moe as ql
    from pyrt._kernels.cuda import mla as cmla
    from pyrt._kernels.cuda import moe as cmoe
    assert (cmoe.GATING_SOFTMAX, cmoe.GATING_SIGMOID, cmoe.W_NORM_MIN) == (ql.GATING_SOFTMAX, ql.GATING_SIGMOID,
                                                                            ql.W_NORM_MIN)
    assert (cmla.KIND_F32, cmla.KIND_F16, cmla.KIND_BF16, cmla.KIND_Q8_0) == (fk.F32, fk.F16, fk.BF16, fk.Q8_0)
    assert cmla.shared_bytes(576) <= 48 * 1024  # DeepSeek's 512 + 64 latent rows fit a block


# ---------------------------------------------------------------------------------------- simulator tests
@sim_only
@pytest.mark.parametrize("gating,bias,norm_w,w_scale", [(1, False, False, 1.0), (2, True, True, 2.5),
                                                       (1, True, True, 16.0)])
def test_route_matches_cpu(gating, bias, norm_w, w_scale):
    from numba import cuda

    from pyrt.ops import moe
    rng = np.random.default_rng(gating * 10 + int(bias))
    n_tok, n_expert, n_used = 2, 140, 6   # more experts than threads: strided scans
    logits = (3 * rng.standard_normal((n_tok, n_expert))).astype(np.float32)
    logits[0, 5] = logits[0, 9]  # a tie: the lower expert id first
    pb = (0.5 * rng.standard_normal(n_expert)).astype(np.float32) if bias else None
    sel, w = moe.route(logits, n_used, gating, pb, norm_w, w_scale)
    dsel, dw = moe.route(cuda.to_device(logits), n_used, gating, None if pb is None else cuda.to_device(pb),
                         norm_w, w_scale)
    assert np.array_equal(dsel.copy_to_host(), sel)
    np.testing.assert_allclose(dw.copy_to_host(), w, rtol=2e-6)


@sim_only
@pytest.mark.parametrize("t", TYPES, ids=lambda t: T(t).name)
def test_matmul_id_matches_float64_and_cpu(t):
    """Rows of the selected experts only, each group with its own x row."""
    from numba import cuda

    from pyrt.ops import matmul as mm
    from pyrt.ops import moe
    rng = np.random.default_rng(int(t))
    n_expert, n_out, n_in = 4, 6, 256
    w = W(rng, n_expert * n_out, n_in, t)
    x = rng.standard_normal((2, n_in)).astype(np.float32)
    experts = np.array([3, 0, 3], np.int64)
    row0 = experts * n_out
    x_row = np.array([0, 1, 1], np.int64)
    got = moe.matmul_id_device(cuda.to_device(x), w.dev(), cuda.to_device(row0), cuda.to_device(x_row),
                               n_out).copy_to_host()
    wv = w.values()
    ref = np.stack([wv[r:r + n_out] @ x[xr].astype(np.float64) for r, xr in zip(row0, x_row)])
    assert _nmse(got, ref) < 1e-10
    cpu = mm.matmul_id(x, w.raw, w.ggml_type, row0, x_row, n_out)
    assert _nmse(got, cpu) < NMSE_CPU[T(t).name]


@sim_only
@pytest.mark.parametrize("t_gu,t_d", [(T.Q4_0, T.Q8_0)], ids=lambda t: T(t).name)
def test_moe_ffn_matches_cpu(t_gu, t_d):
    """route + the selected experts' SwiGLU FFNs + the weighted slot sum, added to an existing output (as the
    shared experts' sum is), against pyrt.ops.moe on the CPU and float64."""
    from numba import cuda

    from pyrt.ops import moe
    rng = np.random.default_rng(int(t_gu) + 7 * int(t_d))
    n_tok, n_embd, n_ff, n_expert, n_used = 2, 32, 32, 5, 2
    ge, ue = W(rng, n_expert * n_ff, n_embd, t_gu), W(rng, n_expert * n_ff, n_embd, t_gu)
    de = W(rng, n_expert * n_embd, n_ff, t_d)
    x = rng.standard_normal((n_tok, n_embd)).astype(np.float32)
    logits = rng.standard_normal((n_tok, n_expert)).astype(np.float32)
    sel, wts = moe.route(logits, n_used, moe.GATING_SOFTMAX, None, True, 1.0)
    cpu = moe.moe_ffn(x, sel, wts, ge, ue, de, n_ff)
    base = rng.standard_normal((n_tok, n_embd)).astype(np.float32)
    out = cuda.to_device(base)
    dsel, dw = moe.route_device(cuda.to_device(logits), n_used, moe.GATING_SOFTMAX, None, True, 1.0)
    moe.moe_ffn_device(cuda.to_device(x), dsel, dw, ge.dev(), ue.dev(), de.dev(), n_ff, out=out)
    got = out.copy_to_host() - base
    g, u, d = ge.values(), ue.values(), de.values()
    ref = np.zeros((n_tok, n_embd))
    for tk in range(n_tok):
        for k in range(n_used):
            e = sel[tk, k]
            a = g[e * n_ff:(e + 1) * n_ff] @ x[tk]
            h = a / (1 + np.exp(-a)) * (u[e * n_ff:(e + 1) * n_ff] @ x[tk])
            ref[tk] += wts[tk, k] * (d[e * n_embd:(e + 1) * n_embd] @ h)
    assert _nmse(got, ref) < 1e-10
    assert _nmse(got, cpu) < NMSE_CPU[T(t_gu).name] + NMSE_CPU[T(t_d).name]


@sim_only
def test_deepseek2_moe_block_on_device_matches_cpu(tmp_path):
    """A synthetic deepseek2 MoE layer (sigmoid gating with exp_probs_b, weight norm and scale 2.5, a shared
    expert) on the device against the model's op-by-op CPU path."""
    import sys
    from types import SimpleNamespace

    from numba import cuda

    from pyrt.io.gguf_file import GGUFFile
    from pyrt.models import deepseek2
    from pyrt.models.base import linear_multi
    from pyrt.ops import basic, moe
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tools"))
    import synthetic_deepseek2 as sd
    name = "ds2-lite-kb-f16"
    spec = {n: (w, c, d) for n, w, c, d in sd.VARIANTS}[name]
    path = str(tmp_path / (name + ".gguf"))
    small = dict(n_embd=64, n_head=2, q_lora_rank=32, kv_lora_rank=32, n_ff=64, n_ff_exp=32)  # simulator time
    sd.write_model(path, spec[0], spec[1], **{**small, **spec[2]})
    model = deepseek2.DeepSeek2Model(GGUFFile(path))
    x_ = model.hp.extra
    F = model.layers[1].ffn
    assert isinstance(F, deepseek2.MoEFFN) and F.exp_probs_b is not None
    assert x_["expert_gating_func"] == moe.GATING_SIGMOID
    h = np.random.default_rng(1).standard_normal((1, model.hp.n_embd)).astype(np.float32)
    logits = F.gate_inp(h)
    sel, w = moe.route(logits, x_["n_expert_used"], x_["expert_gating_func"], F.exp_probs_b,
                       x_["expert_weights_norm"], x_["expert_weights_scale"])
    want = moe.moe_ffn(h, sel, w, F.gate_exps, F.up_exps, F.down_exps, x_["n_ff_exp"])
    g, u = linear_multi(h, F.gate_shexp, F.up_shexp)
    want += F.down_shexp(basic.swiglu(g, u))

    def dev(wt):
        return SimpleNamespace(raw=cuda.to_device(wt.raw), ggml_type=wt.ggml_type)
    d = cuda.to_device
    got = moe.moe_block_device(d(h), dev(F.gate_inp.w), d(F.exp_probs_b), dev(F.gate_exps), dev(F.up_exps),
                               dev(F.down_exps), (dev(F.gate_shexp.w), dev(F.up_shexp.w), dev(F.down_shexp.w)),
                               x_["n_ff_exp"], x_["n_expert_used"], x_["expert_gating_func"],
                               x_["expert_weights_norm"], x_["expert_weights_scale"]).copy_to_host()
    assert np.abs(want).max() > 0.01
    assert _nmse(got, want) < 2 * NMSE_CPU["F16"], _nmse(got, want)
