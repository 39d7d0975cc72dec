"""tools/make_dsv2lite_model.py: the random blocks of every type it writes, and the q4_k_m mix (llama.cpp's
Q4_K_M types per deepseek2 tensor) on the full V2-Lite shapes and on a tiny file that pyrt and llama.cpp run.

The expected types are written out by hand from llama.cpp's src/llama-quant.cpp rules (the table in
q4_k_m_type's docstring), not computed with the tool's functions.
"""

from __future__ import annotations

import numpy as np
import pytest

import gguf
from gguf import GGMLQuantizationType as QT
from gguf.quants import dequantize

import make_dsv2lite_model as dsv
import pyrt

# 4 layers: use_more_bits(i, 4) holds for layers 2 and 3 only. Rows: n_embd 256 (K-quants fit), qk_nope 128
# (attn_k_b falls back as in V2-Lite), n_ff 576 and n_ff_exp 384 (not multiples of 256: ffn_down falls
# back), 2 shared experts of 384 -> ffn_down_shexp rows of 768 (a multiple of 256, as V2-Lite's 2816).
TINY = dict(n_layer=4, n_embd=256, n_head=2, kv_lora_rank=256, n_expert=4, n_expert_used=2, n_ff=576,
            n_ff_exp=384, n_vocab=3072)


def _layer(il, dense, down, down_exps=None, down_shexp=None):
    p = f"blk.{il}."
    t = {p + "attn_norm.weight": QT.F32, p + "attn_q.weight": QT.Q4_K, p + "attn_kv_a_mqa.weight": QT.Q4_K,
         p + "attn_kv_a_norm.weight": QT.F32, p + "attn_k_b.weight": QT.Q5_0, p + "attn_v_b.weight": QT.Q4_K,
         p + "attn_output.weight": QT.Q4_K, p + "ffn_norm.weight": QT.F32}
    if dense:
        t.update({p + "ffn_gate.weight": QT.Q4_K, p + "ffn_up.weight": QT.Q4_K, p + "ffn_down.weight": down})
    else:
        t.update({p + "ffn_gate_inp.weight": QT.F32, p + "ffn_gate_exps.weight": QT.Q4_K,
                  p + "ffn_up_exps.weight": QT.Q4_K, p + "ffn_down_exps.weight": down_exps,
                  p + "ffn_gate_shexp.weight": QT.Q4_K, p + "ffn_up_shexp.weight": QT.Q4_K,
                  p + "ffn_down_shexp.weight": down_shexp})
    return t


def _table(layers):
    t = {"token_embd.weight": QT.Q4_K, "output_norm.weight": QT.F32, "output.weight": QT.Q6_K}
    for x in layers:
        t.update(x)
    return t


EXPECTED_TINY = _table([
    _layer(0, True, QT.Q5_0),  # layer 0 is not a more-bits layer of 4: Q4_K, 576 % 256 -> Q5_0
    _layer(1, False, None, QT.Q5_0, QT.Q4_K),
    _layer(2, False, None, QT.Q8_0, QT.Q6_K),
    _layer(3, False, None, QT.Q8_0, QT.Q6_K),
])
V2_LITE_MORE_BITS = {0, 1, 2, 5, 8, 11, 14, 17, 20, 23, 24, 25, 26}  # use_more_bits(i, 27) by hand
EXPECTED_V2_LITE = _table([_layer(0, True, QT.Q8_0)] + [
    _layer(il, False, None, *((QT.Q8_0, QT.Q6_K) if il in V2_LITE_MORE_BITS else (QT.Q5_0, QT.Q4_K)))
    for il in range(1, 27)])


@pytest.mark.parametrize("ty", [QT.Q4_0, QT.Q5_0, QT.Q8_0, QT.Q4_K, QT.Q5_K, QT.Q6_K], ids=lambda t: t.name)
def test_random_blocks_dequantize_with_weight_std(ty):
    rng = np.random.default_rng(5)
    blocks = dsv.quant_random(rng, ty, (96, 2048))
    bs, ts = gguf.GGML_QUANT_SIZES[ty]
    assert blocks.dtype == np.uint8 and blocks.shape == (96, 2048 // bs * ts)
    x = dequantize(blocks, ty)
    assert x.shape == (96, 2048) and np.isfinite(x).all()
    assert 0.019 < x.std() < 0.021, x.std()
    assert abs(x.mean()) < 0.12 * x.std()
    assert np.abs(x).max() < 0.1
    per_row = x.std(axis=1)  # no block family off by a factor (every row ~ the same spread)
    assert per_row.min() > 0.015 and per_row.max() < 0.025
    if ty == QT.Q8_0:
        assert not (blocks.reshape(-1, 34)[:, 2:] == 128).any()  # no -128 code, as a quantizer writes


def test_full_v2_lite_types_follow_q4_k_m():
    tl = dsv.tensor_list(dsv.DIMS, "q4_k_m")
    assert {name: ty for name, _, ty in tl} == EXPECTED_V2_LITE
    assert len(tl) == len(EXPECTED_V2_LITE)
    assert {ty for _, _, ty in dsv.tensor_list(dsv.DIMS, "q4_0")} == {QT.Q4_0, QT.F32}
    with pytest.raises(ValueError, match="unknown mix"):
        dsv.tensor_list(dsv.DIMS, "q4_k_s")


@pytest.fixture(scope="module")
def tiny_mix(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("dsv2lite") / "tiny-q4_k_m.gguf")
    dims = dsv.write(path, 0, "q4_k_m", **TINY)
    return path, dims


def test_tiny_mix_file_types_and_values(tiny_mix):
    path, dims = tiny_mix
    r = gguf.GGUFReader(path)
    assert int(r.fields["general.file_type"].parts[-1][0]) == int(gguf.LlamaFileType.MOSTLY_Q4_K_M) == 15
    got = {t.name: QT(int(t.tensor_type)) for t in r.tensors}
    assert got == EXPECTED_TINY
    for t in r.tensors:
        x = dequantize(t.data, t.tensor_type)
        assert np.isfinite(x).all(), t.name
        if t.name.endswith("norm.weight"):
            assert abs(float(x.mean()) - 1.0) < 0.02, t.name
        else:
            assert 0.017 < x.std() < 0.023, (t.name, x.std())


def test_tiny_mix_loads_and_decodes_in_pyrt(tiny_mix):
    path, dims = tiny_mix
    llm = pyrt.load(path, n_ctx=64, n_threads=1, warmup=False)
    ids = [dims["n_vocab"] - 3] + list(range(100, 110))
    logits = np.asarray(llm.eval_logits(ids))
    assert logits.shape == (len(ids), dims["n_vocab"]) and np.isfinite(logits).all() and logits.std() > 0.05
    gen = list(llm.generate_ids(ids, max_tokens=4, temperature=0.0, ignore_eos=True))
    assert len(gen) == 4 and all(0 <= t < dims["n_vocab"] for t in gen)


def test_tiny_mix_fused_decode_blocks_match_op_by_op(tiny_mix):
    """Decoded tokens of the K-quant mix through the fused attention block (Q4_K q/kv_a/W_UV/attn_output
    against Q8_K rows) give exactly the logits and cache rows of the op-by-op block, and through the fused
    MoE (Q4_K experts, Q4_K/Q6_K shared down) the logits of the op-by-op MoE."""
    from pyrt.models import deepseek2
    from pyrt.ops import paths
    from pyrt.runtime.context import Batch
    path, dims = tiny_mix

    def run():
        llm = pyrt.load(path, n_ctx=64, n_threads=2, mla=3, warmup=False)
        attn = [L.attn.block is not None for L in llm.model.layers]
        moe = [L.ffn.decode is not None for L in llm.model.layers if isinstance(L.ffn, deepseek2.MoEFFN)]
        ctx = llm.ctx
        out = [ctx.decode(Batch.from_tokens([5, 9, 14], pos0=0, logits="all"))]
        out += [ctx.decode(Batch.from_tokens([t], pos0=3 + i)) for i, t in enumerate([3, 7, 11, 4])]
        return attn, moe, np.concatenate(out), [k.copy() for k in ctx.cache.k]

    a_on, m_on, a, ka = run()
    with paths.using(fused_moe_decode=False):
        _, _, b, kb = run()
        with paths.using(fused_mla_block=False, fused_mla_decode=False):
            a_off, m_off, c, kc = run()
    assert all(a_on) and len(m_on) == 3 and all(m_on) and not any(a_off) and not any(m_off)
    np.testing.assert_array_equal(b, c)
    for x, y in zip(kb, kc):
        np.testing.assert_array_equal(x, y)
    # the fused MoE: same integer dots and requantized rows; exp and the weighted sum's fmas may round apart
    assert float(((a - b) ** 2).sum() / (b ** 2).sum()) < 1e-10


@pytest.mark.oracle
def test_tiny_mix_logits_match_llama_cpp(tiny_mix):
    pytest.importorskip("llama_cpp")
    import make_goldens as mg
    path, dims = tiny_mix
    ids = [dims["n_vocab"] - 3] + [int(t) for t in np.random.default_rng(1).integers(0, dims["n_vocab"] - 3, 15)]
    ref = mg.eval_logits(mg.load(path), ids).astype(np.float64)
    out = np.asarray(pyrt.load(path, n_ctx=64, n_threads=1, warmup=False).eval_logits(ids), np.float64)
    nmse = float(((out - ref) ** 2).sum() / (ref ** 2).sum())
    assert nmse <= 2e-3, nmse  # tests/test_deepseek2.py's NMSE_MAX_QUANT
    row_rms = np.sqrt(((out - ref) ** 2).mean(axis=1))
    top_out = out.argmax(1)
    deficit = ref.max(1) - ref[np.arange(len(ref)), top_out]
    assert ((top_out == ref.argmax(1)) | (deficit <= 4.0 * row_rms)).all()  # top-1, near ties allowed


@pytest.mark.oracle
def test_tiny_mix_types_match_llama_cpp_quantize(tmp_path):
    """llama.cpp's own quantizer (llama_model_quantize, Q4_K_M, requantizing the tiny q4_0 file) picks the
    same type for every tensor. (Done once by hand on the 27-layer V2-Lite shapes too: all 404 agree.)"""
    llama_cpp = pytest.importorskip("llama_cpp")
    import ctypes
    src, dst = tmp_path / "tiny-q4_0.gguf", tmp_path / "tiny-llama-q4_k_m.gguf"
    dsv.write(str(src), 0, "q4_0", **TINY)
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = int(gguf.LlamaFileType.MOSTLY_Q4_K_M)
    params.allow_requantize = True
    params.nthread = 1
    assert llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params)) == 0
    got = {t.name: QT(int(t.tensor_type)) for t in gguf.GGUFReader(str(dst)).tensors}
    assert got == {name: ty for name, _, ty in dsv.tensor_list(dict(dsv.DIMS, **TINY), "q4_k_m")} == EXPECTED_TINY
