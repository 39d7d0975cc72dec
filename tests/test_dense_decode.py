"""The fused one-call decode layer of llama / qwen2 (ops.dense.DenseLayerDecode) against the same layer op by op:
the same logits and cache rows to the bit, in every cache type, weight kind, RoPE style and with Q/K/V biases."""

import numpy as np
import pytest

import synthetic

import pyrt
from pyrt.errors import InvalidArgumentError
from pyrt.ops import paths
from pyrt.ops.dense import DenseLayerDecode
from pyrt.runtime.context import Batch


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("dense_decode")
    out = {}
    for arch, wtype in (("llama", "Q4_0"), ("llama", "Q8_0"), ("llama", "Q5_0"), ("qwen2", "Q4_K"),
                        ("qwen2", "Q6_K"), ("llama", "Q5_K"), ("llama", "F16")):
        p = d / f"{arch}-{wtype}.gguf"
        synthetic.write_model(p, arch, wtype, n_layer=3)
        out[(arch, wtype)] = str(p)
    return out


@pytest.fixture(scope="module")
def gemma_q8(tmp_path_factory):
    from test_swa_cache import write_gemma3
    path = tmp_path_factory.mktemp("dense_decode") / "gemma3-tiny-q8_0.gguf"
    write_gemma3(path, wtype="Q8_0", n_embd=128, head_dim=32, n_ff=256)
    return str(path)


def _run(path, type_k, type_v):
    """Prompt chunks and decoded tokens in two sequences (the second sees none of the first's cells), then
    (logits, every layer's K and V rows, whether the layers ran fused)."""
    llm = pyrt.load(path, n_ctx=96, n_threads=2, type_k=type_k, type_v=type_v, n_seq_max=2, warmup=False)
    ctx = llm.ctx
    out = [ctx.decode(Batch.from_tokens([5, 9, 14, 30, 2], pos0=0, logits="all"))]
    out += [ctx.decode(Batch.from_tokens([t], pos0=5 + i)) for i, t in enumerate([3, 7, 11])]
    out.append(ctx.decode(Batch.from_tokens([40, 41, 42], pos0=0, seq_id=1, logits="all")))
    out += [ctx.decode(Batch.from_tokens([t], pos0=3 + i, seq_id=1)) for i, t in enumerate([8, 19])]
    out += [ctx.decode(Batch.from_tokens([t], pos0=8 + i)) for i, t in enumerate([4, 6])]
    ctx.decode(Batch.from_tokens([13], pos0=10, logits="none"))  # a token without logits runs op by op
    out.append(ctx.decode(Batch.from_tokens([1], pos0=11)))
    caches = [c for c in (ctx.cache, getattr(ctx, "cache_swa", None)) if c is not None]
    rows = [b.copy() for c in caches for b in c.k + c.v]
    return np.concatenate(out), rows, llm.model.blocks is not None


@pytest.mark.parametrize("key,type_k,type_v", [
    pytest.param(("llama", "Q4_0"), "f16", "f16", marks=pytest.mark.boundscheck),
    (("llama", "Q8_0"), "q8_0", "q8_0"), (("llama", "Q5_0"), "f32", "bf16"),
    pytest.param(("qwen2", "Q4_K"), "f32", "bf16", marks=pytest.mark.boundscheck),
    (("qwen2", "Q6_K"), "f16", "f16"), (("llama", "Q5_K"), "q8_0", "q8_0")],
    ids=["llama-q4_0-f16", "llama-q8_0-q8_0", "llama-q5_0-f32-bf16", "qwen2-q4_k-f32-bf16", "qwen2-q6_k-f16",
         "llama-q5_k-q8_0"])  # three cache row signatures: each compiles the layer kernel once
def test_fused_layer_bit_identical(files, key, type_k, type_v):
    a, ra, on = _run(files[key], type_k, type_v)
    with paths.using(fused_dense_layer=False):
        b, rb, off = _run(files[key], type_k, type_v)
    assert on and not off
    np.testing.assert_array_equal(a, b)
    for x, y in zip(ra, rb):
        np.testing.assert_array_equal(x, y)


def test_fused_gemma3_layers_bit_identical(gemma_q8):
    """gemma3: QK-norm, sandwich norms, GELU FFN, two RoPE tables, sliding-window layers on their own window cache
    (decoded far past the window of 8) and global ones, two sequences."""
    for type_k in ("f16", "q8_0"):
        a, ra, on = _run(gemma_q8, type_k, type_k)
        with paths.using(fused_dense_layer=False):
            b, rb, off = _run(gemma_q8, type_k, type_k)
        assert on and not off
        np.testing.assert_array_equal(a, b)
        for x, y in zip(ra, rb):
            np.testing.assert_array_equal(x, y)


def test_float_weights_run_op_by_op(files):
    llm = pyrt.load(files[("llama", "F16")], n_ctx=32, n_threads=2, warmup=False)
    assert llm.model.blocks is None
    assert np.isfinite(llm.eval_logits([1, 2, 3])).all()


def test_slot_refuses_bad_cache_side(files):
    llm = pyrt.load(files[("llama", "Q4_0")], n_ctx=32, n_threads=2, warmup=False)
    block = llm.model.blocks[0]
    k = np.zeros((4, block.n_head_kv * block.dk), np.float16)
    from pyrt.models.base import DenseView
    ok = DenseView(k, k.copy(), "f16", "f16", 1, 1, np.array([3], np.int32), np.arange(4, dtype=np.int32),
                   np.ones(4, np.uint64), np.arange(4, dtype=np.int32))
    block.slot(ok, np.array([3]), np.array([0]), 0.125)
    bad = [ok._replace(cells=np.array([4], np.int32)), ok._replace(kv_idx=np.array([0, 4], np.int32)),
           ok._replace(k=np.zeros((4, 8), np.float16)), ok._replace(type_v="q8_0"),
           ok._replace(cell_seq=np.ones(3, np.uint64))]
    for view in bad:
        with pytest.raises(InvalidArgumentError):
            block.slot(view, np.array([3]), np.array([0]), 0.125)
    with pytest.raises(InvalidArgumentError):
        block.slot(ok, np.array([3]), np.array([64]), 0.125)
    slot = block.slot(ok, np.array([3]), np.array([0]), 0.125)
    x = np.zeros(block.n_embd, np.float32)
    cs = np.zeros(block.n_rot // 2, np.float32)
    with pytest.raises(InvalidArgumentError):  # rows of another shape than the slot's
        block(x, cs, cs, ok._replace(v=np.zeros((5, k.shape[1]), np.float16)), slot)
    with pytest.raises(InvalidArgumentError):
        block(x[:-1], cs, cs, ok, slot)


def test_build_declines_unfused_shapes(files):
    llm = pyrt.load(files[("llama", "Q4_0")], n_ctx=32, n_threads=2, warmup=False)
    m, hp = llm.model, llm.model.hp
    L = m.layers[0]
    args = (hp.n_embd, hp.n_head, hp.n_head_kv, hp.n_embd_head_k, hp.n_embd_head_v, hp.n_rot, False, 1e-5)
    assert DenseLayerDecode.build(L, *args) is not None
    with paths.using(fused_dense_layer=False):
        assert DenseLayerDecode.build(L, *args) is None
    with pytest.raises(InvalidArgumentError):  # attn_q rows that do not fit n_head heads
        DenseLayerDecode.build(L, hp.n_embd, hp.n_head * 2, hp.n_head_kv, hp.n_embd_head_k, hp.n_embd_head_v,
                               hp.n_rot, False, 1e-5)


def test_one_kernel_signature_for_every_family(files, gemma_q8):
    """llama (no biases, no Q/K norms), qwen2 (Q/K/V biases) and gemma3 (Q/K norms, post norms, GELU table) hand
    dense_layer_decode arrays of one Numba type each (every vector read-only): one compiled kernel per cache
    type, not one per model family."""
    import numba
    from dataclasses import fields
    sigs = set()
    for path in (files[("llama", "Q8_0")], files[("qwen2", "Q4_K")], gemma_q8):
        blocks = pyrt.load(path, n_ctx=32, warmup=False).model.blocks
        assert blocks
        for b in blocks:
            sigs.add(tuple((f.name, str(numba.typeof(getattr(b, f.name)))) for f in fields(b)
                           if isinstance(getattr(b, f.name), np.ndarray)))
    assert len(sigs) == 1, sigs
