"""K-shift and context shift: the re-rotation kernel against a float64 reference for every cache type
(norm and neox RoPE, partial rope dims, an MLA-style rope part at a column offset), the shifted cache
against a recomputation, and generation that goes on past n_ctx."""

import os

import numpy as np
import pytest
from test_defrag import decode, fill_cache, make_ctx, tiny_llama  # noqa: F401

from pyrt.kv.cache import KVCache

TYPES = ["f32", "f16", "bf16", "q8_0", "q8_KV"]
TOL = {"f32": 2e-6, "f16": 2e-3, "bf16": 1.6e-2, "q8_0": 3e-2, "q8_KV": 3e-2}  # relative to the row's amax


def rotate_ref(x, delta, n_rot, base, off, head_dim, neox):
    """float64 RoPE by delta of x [m, n] (each head's [off, off+n_rot))."""
    x = x.astype(np.float64).copy()
    half = n_rot // 2
    theta = delta[:, None].astype(np.float64) * base ** (-2.0 * np.arange(half) / n_rot)  # [m, half]
    c, s = np.cos(theta), np.sin(theta)
    for h in range(x.shape[1] // head_dim):
        b = h * head_dim + off
        i0 = b + np.arange(half) if neox else b + 2 * np.arange(half)
        i1 = i0 + half if neox else i0 + 1
        x0, x1 = x[:, i0].copy(), x[:, i1].copy()
        x[:, i0], x[:, i1] = x0 * c - x1 * s, x0 * s + x1 * c
    return x


@pytest.mark.parametrize("type_k", TYPES)
@pytest.mark.parametrize("neox", [False, True])
def test_k_shift_kernel_matches_reference(type_k, neox):
    rng = np.random.default_rng(21)
    n_rot, base, hd = 32, 10000.0, 64
    cache = KVCache(2, 200, [128, 128], [128, None], type_k, "f16", n_seq_max=2, head_dim_k=hd, head_dim_v=hd)
    cells = fill_cache(cache, rng, np.arange(150), np.zeros(150))
    cache.cells.seq_cp(0, 1, 100, 150)
    before = [cache.k_values(il, cells) for il in range(2)]
    k_raw = [cache.k[il].copy() for il in range(2)]
    v_raw = cache.v[0].copy()
    cache.cells.seq_rm(0, 40, 100)
    cache.cells.seq_add(0, 100, -1, -60)
    cache.cells.seq_add(0, 0, 20, 3)  # a positive delta too
    assert cache.cells.has_shift
    delta = cache.cells.delta_array()[cells].copy()
    moved = np.flatnonzero(cache.cells.pos_array()[cells] >= 0)
    rope = [(n_rot, base, 1.0, None, 2 if neox else 0)] * 2
    assert cache.k_shift(rope) == np.count_nonzero(delta[moved])
    assert not cache.cells.has_shift and not np.any(cache.cells.delta_array())
    for il in range(2):
        got = cache.k_values(il, cells[moved])
        ref = rotate_ref(before[il][moved], delta[moved], n_rot, base, 0, hd, neox)
        amax = np.abs(ref).max(axis=1, keepdims=True)
        assert np.all(np.abs(got - ref) <= TOL[type_k] * amax + 1e-30), type_k
        # cells without a delta are untouched, bit for bit; so are the blocks outside the rope part
        still = cells[moved][delta[moved] == 0]
        assert np.array_equal(cache.k[il][still], k_raw[il][still])
        if type_k in ("f32", "f16", "bf16", "q8_0"):
            per = cache.k[il].shape[1] // 128 * 1 if type_k != "q8_0" else 34  # bytes per value / per block
            if type_k == "q8_0":  # rope values [0, 32) of each 64-wide head = block 0 and 2 of 4
                for blk in (1, 3):
                    sl = slice(blk * per, (blk + 1) * per)
                    assert np.array_equal(cache.k[il][cells[moved], sl], k_raw[il][cells[moved], sl])
            else:
                rest = np.r_[32:64, 96:128]
                assert np.array_equal(cache.k[il][cells[moved]][:, rest], k_raw[il][cells[moved]][:, rest])
    assert np.array_equal(cache.v[0], v_raw)  # V never rotates


@pytest.mark.parametrize("type_k", ["f16", "q8_0", "q8_KV"])
@pytest.mark.parametrize("off", [0, 512])
def test_mla_rope_part_at_an_offset(type_k, off):
    """MLA keeps k_pe in 64 of its 576 values: only those rotate (K-only cache, one 576-wide head)."""
    rng = np.random.default_rng(22)
    cache = KVCache(1, 64, [576], [None], type_k, type_k, head_dim_k=576)
    cells = fill_cache(cache, rng, np.arange(40), np.zeros(40))
    before = cache.k_values(0, cells)
    raw = cache.k[0].copy()
    cache.cells.seq_add(0, 10, -1, -7)
    cache.k_shift([(64, 10000.0, 1.0, None, 0)], rope_offset=off)
    got = cache.k_values(0, cells)
    delta = np.where(np.arange(40) >= 10, -7, 0)
    ref = rotate_ref(before, delta, 64, 10000.0, off, 576, False)
    rope = np.zeros(576, bool)
    rope[off:off + 64] = True
    amax = np.abs(ref).max(axis=1, keepdims=True)
    assert np.all(np.abs(got - ref) <= TOL[type_k] * amax)
    if type_k != "q8_KV":  # per-row scale: the whole row is requantized
        assert np.array_equal(got[:, ~rope], before[:, ~rope])
    assert np.array_equal(cache.k[0][cells[:10]], raw[cells[:10]])


def test_shifted_cache_matches_recomputed_prompt(tiny_llama):  # noqa: F811
    """Layer 0's keys depend only on token and position: after a shift they must equal a fresh run's."""
    rng = np.random.default_rng(23)
    toks = rng.integers(3, 500, 200).tolist()
    ctx = make_ctx(tiny_llama, "f32", "f32", n_ctx=256)
    decode(ctx, toks, 0)
    n_keep, n_discard = 4, 98
    ctx.seq_rm(0, n_keep, n_keep + n_discard)
    ctx.seq_add(0, n_keep + n_discard, -1, -n_discard)
    ctx.update()
    shifted = toks[:n_keep] + toks[n_keep + n_discard:]
    fresh = make_ctx(tiny_llama, "f32", "f32", n_ctx=256)
    decode(fresh, shifted, 0)
    pos = ctx.cells.pos_array()
    cells = np.flatnonzero(pos >= 0)
    cells = cells[np.argsort(pos[cells])]
    fpos = fresh.cells.pos_array()
    fcells = np.flatnonzero(fpos >= 0)
    fcells = fcells[np.argsort(fpos[fcells])]
    assert np.array_equal(pos[cells], fpos[fcells])
    a, b = ctx.cache.k_values(0, cells), fresh.cache.k_values(0, fcells)
    assert np.max(np.abs(a - b)) <= 1e-5 * np.max(np.abs(b))
    va, vb = ctx.cache.v[0][cells], fresh.cache.v[0][fcells]  # other batch splits: BLAS rounding only
    assert np.max(np.abs(va - vb)) <= 1e-5 * np.max(np.abs(vb))


@pytest.fixture(scope="module")
def one_layer_llm(tmp_path_factory):
    import synthetic

    from pyrt.runtime.llm import LLM
    path = tmp_path_factory.mktemp("kv1") / "llama1.gguf"
    synthetic.write_model(path, "llama", "F32", n_embd=128, n_ff=128, n_head=4, n_head_kv=2, n_layer=1, n_ctx=4096)
    return lambda **kw: LLM(path, n_ctx=64, n_batch=64, n_ubatch=32, warmup=False, **kw)


def test_generation_past_n_ctx_matches_recompute(one_layer_llm):
    """With one layer, the cache after a context shift is what a recomputation gives (up to rounding),
    so the next logits agree; generation itself runs on far past n_ctx."""
    from pyrt.runtime.context import Batch
    rng = np.random.default_rng(24)
    llm = one_layer_llm(type_k="f32", type_v="f32")
    ids = rng.integers(3, 500, 60).tolist()
    llm._ingest(ids)
    assert llm.shift_context(n_keep=4)
    assert len(llm._tokens) == 4 + 28
    a = llm.ctx.decode(Batch.from_tokens([11], pos0=len(llm._tokens)))[-1]
    b = one_layer_llm(type_k="f32", type_v="f32").eval_logits(llm._tokens + [11])[-1]
    assert np.argmax(a) == np.argmax(b)
    assert np.max(np.abs(a - b)) <= 1e-4 * np.max(np.abs(b))

    out = list(llm.generate_ids(ids[:20], max_tokens=150, temperature=0.0, ignore_eos=True,
                                context_shift=True, n_keep=4))
    assert len(out) == 150  # 20 + 150 tokens through a 64-cell context
    assert llm._tokens[:4] == ids[:4] and len(llm._tokens) <= 64
    stop = list(llm.generate_ids(ids[:20], max_tokens=150, temperature=0.0, ignore_eos=True))
    assert len(stop) == 64 - 20 + 1  # without the shift: stops at a full context (the last token is not decoded)


def test_prompt_cache_file(one_layer_llm, tmp_path):
    rng = np.random.default_rng(25)
    ids = rng.integers(3, 500, 30).tolist()
    f = tmp_path / "prompt.cache"
    llm = one_layer_llm(type_k="q8_KV", type_v="f16")
    first = list(llm.generate_ids(ids, max_tokens=5, temperature=0.0, prompt_cache=f))
    assert f.exists()
    llm2 = one_layer_llm(type_k="q8_KV", type_v="f16")
    again = list(llm2.generate_ids(ids, max_tokens=5, temperature=0.0, prompt_cache=f, prompt_cache_ro=True))
    assert again == first
    assert llm2.ctx.timings.n_p_eval == 0  # only the last prompt token was evaluated again
    from pyrt.errors import StateError
    other = one_layer_llm(type_k="f16", type_v="f16")
    mtime = os.path.getmtime(f)
    with pytest.raises(StateError, match="cache type"):
        list(other.generate_ids(ids, max_tokens=1, prompt_cache=f))
    assert os.path.getmtime(f) == mtime and other.ctx.cells.used == 0


@pytest.mark.slow
def test_gemma_context_shift_rotates_each_layer_by_its_own_rope(gemma_path):
    """Gemma 3 through a context shift: generation goes on past n_ctx, and every layer's cached keys after
    the shift are a float64 re-rotation of its keys before it by the shift, at that layer's own base (10000
    for the sliding layers, rope.freq_base of the file for every sixth, global one, as llama.cpp's swa
    pattern 6; NEOX pairs). The next logits cannot be checked against a recomputation: the kept keys of
    layers > 0 were computed with the dropped tokens in context, which a recomputation does not see."""
    from pyrt.io.gguf_file import GGUFFile
    from pyrt.runtime.llm import LLM
    llm = LLM(gemma_path, n_ctx=128, n_batch=128, n_ubatch=128, warmup=False)
    ids = llm.tokenize("The history of the printing press begins in the fifteenth century, when")
    out = list(llm.generate_ids(ids, max_tokens=200, temperature=0.0, context_shift=True, n_keep=len(ids)))
    assert len(out) == 200
    assert len(set(llm.detokenize(out).split())) >= 10  # still words (a 270M model loops greedily, shift or not)

    meta = GGUFFile(gemma_path, use_mmap=True).metadata
    base_global = float(meta["gemma3.rope.freq_base"])
    n_layer = int(meta["gemma3.block_count"])
    head_dim = int(meta["gemma3.attention.key_length"])
    ctx = llm.ctx
    ctx.clear()
    llm._tokens = []
    llm._ingest(ids + out[:100])

    def keys():
        got = {}
        for cache, layers in ((ctx.cache, ctx._base_layers), (ctx.cache_swa, ctx._swa_layers)):
            if cache is None:  # n_ctx within the window: one cache for every layer
                continue
            pos = cache.cells.pos_array()
            cells = np.flatnonzero(pos >= 0)
            cells = cells[np.argsort(pos[cells])]
            for j, il in enumerate(layers):
                got[il] = (pos[cells], cache.k_values(j, cells))
        return got

    before = keys()
    n_keep = 4
    n_discard = (len(llm._tokens) - n_keep) // 2
    assert llm.shift_context(n_keep)
    ctx.update()
    after = keys()
    for il in range(n_layer):
        pos0, k0 = before[il]
        pos1, k1 = after[il]
        kept = (pos0 < n_keep) | (pos0 >= n_keep + n_discard)
        assert np.array_equal(pos1, np.where(pos0[kept] < n_keep, pos0[kept], pos0[kept] - n_discard))
        delta = np.where(pos0[kept] < n_keep, 0, -n_discard)
        base = base_global if il % 6 == 5 else 10000.0
        want = rotate_ref(k0[kept], delta, head_dim, base, 0, head_dim, True)
        assert np.max(np.abs(k1 - want)) <= TOL["f16"] * np.max(np.abs(want)), f"layer {il}"
