"""Model-level equivalences on the synthetic models: prefill == single decodes, thread count, ubatch split."""

import numba
import numpy as np
import pytest

import synthetic

import pyrt


def _nmse(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(((a - b) ** 2).sum() / (b ** 2).sum())


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    d = tmp_path_factory.mktemp("model_eq")
    out = {}
    for arch, wtype in (("llama", "F32"), ("qwen2", "Q4_K"), ("llama", "Q4_0")):
        p = d / f"{arch}-{wtype}.gguf"
        synthetic.write_model(p, arch, wtype)
        out[(arch, wtype)] = str(p)
    return out


IDS = [1] + list(range(40, 40 + 3 * 47, 3))[:47]  # 48 tokens: the prompt path (BLAS) for every type


@pytest.mark.parametrize("key,tol", [(("llama", "F32"), 1e-9), (("qwen2", "Q4_K"), 1e-3), (("llama", "Q4_0"), 1e-3)])
def test_prefill_equals_single_decodes(models, key, tol):
    llm = pyrt.load(models[key], n_ctx=128, n_threads=2)
    pre = llm.eval_logits(IDS)
    llm.reset()
    dec = np.stack([llm.ctx.decode(pyrt.Batch.from_tokens([t], pos0=i))[-1] for i, t in enumerate(IDS)])
    # quantized models: activation rounding amplifies f32-level differences between the two
    # paths to ~1e-4 (the same happens inside llama.cpp), so the bound is looser there
    assert _nmse(pre, dec) <= tol
    assert (pre.argmax(1) == dec.argmax(1)).mean() >= 0.95


def test_results_independent_of_thread_count(models):
    outs = []
    for nt in (1, numba.config.NUMBA_NUM_THREADS):
        llm = pyrt.load(models[("llama", "Q4_0")], n_ctx=128, n_threads=nt)
        outs.append((llm.eval_logits(IDS), llm.eval_logits(IDS[:5])))
    numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)
    assert np.array_equal(outs[0][0], outs[1][0])
    assert np.array_equal(outs[0][1], outs[1][1])


def test_ubatch_split_and_logits_rows(models):
    path = models[("llama", "F32")]
    a = pyrt.load(path, n_ctx=128, n_ubatch=512, n_threads=2).eval_logits(IDS)
    llm = pyrt.load(path, n_ctx=128, n_ubatch=7, n_threads=2)  # 48 tokens in ubatches of 7
    b = llm.eval_logits(IDS)
    assert _nmse(b, a) <= 1e-9
    llm.reset()
    batch = pyrt.Batch.from_tokens(IDS, logits="none")
    batch.logits[[3, 20, 47]] = True
    rows = llm.ctx.decode(batch)
    assert rows.shape == (3, llm.n_vocab)
    assert _nmse(rows, a[[3, 20, 47]]) <= 1e-9


def test_generation_reuses_prefix_and_is_reproducible(models):
    llm = pyrt.load(models[("llama", "Q4_0")], n_ctx=128, n_threads=2)
    kw = dict(max_tokens=12, temperature=0.9, top_k=20, seed=7)
    a = list(llm.generate_ids(IDS[:10], **kw))
    b = list(llm.generate_ids(IDS[:10], **kw))  # the cache holds IDS[:10] + a: prefix reused
    assert a == b
    fresh = pyrt.load(models[("llama", "Q4_0")], n_ctx=128, n_threads=2)
    assert list(fresh.generate_ids(IDS[:10], **kw)) == a


def _linears_on_one_buffer(rng, rows, n_in, ggml_type, gap=0):
    """Linear layers whose Q8_0/Q4_0 rows lie back to back (gap=0) in one read-only buffer, like a GGUF file."""
    from types import SimpleNamespace

    from gguf.quants import quantize

    from pyrt.models.base import Linear
    mats = [quantize(rng.standard_normal((r, n_in)).astype(np.float32), ggml_type).view(np.uint8).reshape(r, -1)
            for r in rows]
    buf = np.zeros(sum(m.nbytes for m in mats) + gap * len(mats), np.uint8)
    out, off = [], 0
    for m in mats:
        buf[off:off + m.nbytes] = m.reshape(-1)
        out.append((off, m.shape))
        off += m.nbytes + gap
    buf.flags.writeable = False
    return [Linear(SimpleNamespace(raw=buf[o:o + s[0] * s[1]].reshape(s), ggml_type=int(ggml_type),
                                   shape=(s[0], n_in))) for o, s in out]


@pytest.mark.parametrize("gap", [0, 18])
def test_linear_multi_fuses_adjacent_weights_bit_identically(gap):
    from gguf import GGMLQuantizationType as T

    from pyrt.models.base import adjacent_rows, linear_multi
    from pyrt.ops import matmul as mm
    rng = np.random.default_rng(3)
    ls = _linears_on_one_buffer(rng, [64, 16, 16], 256, T.Q4_0, gap)
    ls[1].bias = rng.standard_normal(16).astype(np.float32)
    fused = adjacent_rows(*(L.w.raw for L in ls))
    assert (fused is None) == (gap != 0)
    if fused is not None:
        assert fused.shape == (96, ls[0].w.raw.shape[1]) and not fused.flags.writeable
        np.testing.assert_array_equal(fused, np.concatenate([L.w.raw for L in ls]))
    for n_tok in (1, 3, 64):  # 64 tokens: the BLAS path, never fused
        x = rng.standard_normal((n_tok, 256)).astype(np.float32)
        got = linear_multi(x, *ls)
        for L, y in zip(ls, got):
            ref = mm.matmul(x, L.w.raw, L.w.ggml_type)
            if L.bias is not None:
                ref += L.bias
            np.testing.assert_array_equal(y, ref)
    assert adjacent_rows(ls[0].w.raw, ls[0].w.raw) is None           # not consecutive
    assert adjacent_rows(ls[0].w.raw, ls[1].w.raw[:, :-18]) is None  # other row size


def test_every_architecture_declares_the_model_protocol(synthetic_models, tmp_path):
    """The runtime reads models through `models.base.Model` only: each architecture class provides every
    member, and a loaded model of each synthetic variant satisfies it with values of the right kind."""
    import inspect

    from pyrt.io.gguf_file import GGUFFile
    from pyrt.models import _registry, build_model
    from pyrt.models.base import Model, ModelBase

    members = [n for n in Model.__dict__ if not n.startswith("_")] + list(Model.__annotations__)
    for arch, cls in _registry().items():
        assert issubclass(cls, ModelBase), arch
        for name in ("kv_layout", "kv_dims", "rope_params", "k_rope_offset", "forward"):
            assert callable(getattr(cls, name)), (arch, name)
        assert arch in cls.ARCHS
    import synthetic_deepseek2
    from test_swa_cache import write_gemma3

    d = tmp_path / "protocol"
    d.mkdir()
    paths = {name: path for name, (path, _hp) in synthetic_models.items()}
    write_gemma3(d / "gemma3.gguf")
    paths["gemma3"] = str(d / "gemma3.gguf")
    paths["deepseek2"] = str(d / "deepseek2.gguf")
    synthetic_deepseek2.write_model(paths["deepseek2"], "F32", "k_b")
    seen = set()
    for name, path in paths.items():
        m = build_model(GGUFFile(path))
        assert isinstance(m, Model), name
        for member in members:
            assert hasattr(m, member), (name, member)
        hp = m.hp
        assert len(m.is_swa) == hp.n_layer and all(isinstance(s, bool) for s in m.is_swa)
        assert (m.n_swa > 0) == any(m.is_swa), name
        k_dims, v_dims, head_k, head_v = m.kv_layout(3 if m.is_mla else 0)
        assert len(k_dims) == len(v_dims) == hp.n_layer and head_k > 0
        assert isinstance(m.fingerprint(), str) and len(m.fingerprint()) > 0
        assert len(m.rope_params(0)) >= 5
        seen.add(hp.arch)
        assert inspect.signature(m.forward).parameters
    assert {"llama", "gemma3", "deepseek2"} <= seen


@pytest.mark.parametrize("key", [("llama", "F32"), ("qwen2", "Q4_K")])
def test_batched_sequences_give_their_lone_bits(models, key):
    """One decode of three sequences' next tokens (as the engine batches them) gives each sequence exactly the
    logits of its lone decode: each sequence's queries scan its own cells, tiled and split as when it runs alone
    (F32 weights: no activation quantization that could absorb a last-bit difference)."""
    prompts = [[(7 * i) % 500 + 3 for i in range(300)], [(11 * i) % 500 + 3 for i in range(600)],
               list(range(200, 240))]
    nxt = [7, 8, 9]
    llm = pyrt.load(models[key], n_ctx=1024, n_threads=2, n_seq_max=3, warmup=False)
    for s, p in enumerate(prompts):
        llm.ctx.decode(pyrt.Batch.from_tokens(p, seq_id=s))
    got = llm.ctx.decode(pyrt.Batch(np.array(nxt), np.array([len(p) for p in prompts]), np.arange(3),
                                    np.ones(3, bool)))
    for s, p in enumerate(prompts):
        lone = pyrt.load(models[key], n_ctx=1024, n_threads=2, warmup=False)
        lone.ctx.decode(pyrt.Batch.from_tokens(p))
        np.testing.assert_array_equal(got[s], lone.ctx.decode(pyrt.Batch.from_tokens([nxt[s]], pos0=len(p)))[0])
