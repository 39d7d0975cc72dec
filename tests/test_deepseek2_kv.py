"""The KV issue's operations on DeepSeek2 caches: the K-only latent cache (-mla 1..3) and the per-head
cache of -mla 0. K-shift with YaRN angles against a recomputation, context shift past n_ctx, state
save/restore (bit-identical next logits, mismatches refused), defrag and sequence removal."""

from __future__ import annotations

import numpy as np
import pytest

import synthetic_deepseek2 as sd
import pyrt
from pyrt.errors import StateError
from pyrt.runtime.context import Batch


@pytest.fixture(scope="module")
def ds2(tmp_path_factory):
    models = sd.write_all(tmp_path_factory.mktemp("ds2_kv"), extra=False)
    return lambda name, **kw: pyrt.load(models[name][0], n_threads=2, warmup=False, **kw)


def decode(llm, toks, pos0=0, seq=0, logits="last"):
    out = None
    for s in range(0, len(toks), llm.ctx.n_batch):
        out = llm.ctx.decode(Batch.from_tokens(toks[s:s + llm.ctx.n_batch], pos0=pos0 + s, seq_id=seq, logits=logits))
    return out


def sorted_cells(ctx):
    pos = ctx.cells.pos_array()
    cells = np.flatnonzero(pos >= 0)
    return cells[np.argsort(pos[cells])]


@pytest.mark.parametrize("mla", [0, 1, 3])
@pytest.mark.parametrize("name", ["ds2-lite-kb-f16", "ds2-qlora-kvb-f32"])  # YaRN / plain RoPE
def test_k_shift_matches_recomputed_layer0(ds2, name, mla):
    """Layer 0's cached K depends only on token and position: after seq_rm + seq_add and the K-shift it must
    equal what a fresh run over the shifted tokens caches (the rope part re-rotated with YaRN angles)."""
    rng = np.random.default_rng(31)
    toks = rng.integers(3, 500, 120).tolist()
    llm = ds2(name, n_ctx=256, n_batch=64, n_ubatch=64, mla=mla, type_k="f32", type_v="f32")
    decode(llm, toks)
    n_keep, n_discard = 4, 50
    llm.ctx.seq_rm(0, n_keep, n_keep + n_discard)
    llm.ctx.seq_add(0, n_keep + n_discard, -1, -n_discard)
    llm.ctx.update()
    fresh = ds2(name, n_ctx=256, n_batch=64, n_ubatch=64, mla=mla, type_k="f32", type_v="f32")
    decode(fresh, toks[:n_keep] + toks[n_keep + n_discard:])
    a = llm.ctx.cache.k_values(0, sorted_cells(llm.ctx))
    b = fresh.ctx.cache.k_values(0, sorted_cells(fresh.ctx))
    assert a.shape == b.shape
    assert np.max(np.abs(a - b)) <= 2e-5 * np.max(np.abs(b))
    # the shift did something: before it, the moved rows' rope parts differed from the fresh ones
    n_rot = llm.model.hp.n_rot
    off = llm.model.k_rope_offset(mla)
    assert np.max(np.abs(a[n_keep:, off:off + n_rot] - b[n_keep:, off:off + n_rot])) < 1e-3


@pytest.mark.parametrize("mla", [0, 3])
def test_generation_runs_past_n_ctx(ds2, mla):
    llm = ds2("ds2-qlora-kb-q8_0", n_ctx=64, n_batch=64, n_ubatch=32, mla=mla, type_k="q8_0" if mla else "f16")
    ids = list(range(10, 30))
    out = list(llm.generate_ids(ids, max_tokens=120, temperature=0.0, ignore_eos=True, context_shift=True,
                                n_keep=4))
    assert len(out) == 120 and llm._tokens[:4] == ids[:4] and len(llm._tokens) <= 64


@pytest.mark.parametrize("mla,type_k", [(3, "f16"), (3, "q8_0"), (1, "bf16"), (0, "f16")])
def test_state_roundtrip_bit_identical(ds2, tmp_path, mla, type_k):
    rng = np.random.default_rng(32)
    toks = rng.integers(3, 500, 90).tolist()
    kw = dict(n_ctx=192, n_batch=64, n_ubatch=64, mla=mla, type_k=type_k, n_seq_max=3)
    llm = ds2("ds2-lite-kb-f16", **kw)
    decode(llm, toks)
    decode(llm, toks[:40], seq=1)
    llm.ctx.seq_rm(0, 10, 20)  # holes before saving
    path = tmp_path / "ds2.state"
    llm.ctx.save_state(tokens=toks)
    data = llm.ctx.save_state(tokens=toks)
    path.write_bytes(data)
    ref0 = llm.ctx.decode(Batch.from_tokens([7], pos0=90))
    ref1 = llm.ctx.decode(Batch.from_tokens([8], pos0=40, seq_id=1))
    other = ds2("ds2-lite-kb-f16", **kw)
    decode(other, toks[:30], seq=2)  # replaced by the restore
    assert other.ctx.load_state(path.read_bytes()) == toks
    assert np.array_equal(other.ctx.decode(Batch.from_tokens([7], pos0=90)), ref0)
    assert np.array_equal(other.ctx.decode(Batch.from_tokens([8], pos0=40, seq_id=1)), ref1)


def test_state_from_another_mode_or_model_is_refused(ds2):
    rng = np.random.default_rng(33)
    toks = rng.integers(3, 500, 40).tolist()
    src = ds2("ds2-lite-kb-f16", n_ctx=128, mla=3)
    decode(src, toks)
    data = src.ctx.save_state(tokens=toks)
    for name, kw in (("ds2-lite-kb-f16", dict(mla=0)),              # per-head cache, not the latent one
                     ("ds2-lite-kb-f16", dict(mla=3, type_k="q8_0")),
                     ("ds2-qlora-kb-q8_0", dict(mla=3))):           # another model
        dst = ds2(name, n_ctx=128, **kw)
        decode(dst, toks[:12])
        before = [k.copy() for k in dst.ctx.cache.k]
        with pytest.raises(StateError):
            dst.ctx.load_state(data)
        assert dst.ctx.cells.used == 12 and all(np.array_equal(a, b) for a, b in zip(before, dst.ctx.cache.k))


@pytest.mark.parametrize("mla", [0, 3])
def test_defrag_and_seq_rm_keep_logits_bit_identical(ds2, mla):
    rng = np.random.default_rng(34)
    toks = rng.integers(3, 500, 160).tolist()
    llm = ds2("ds2-qlora-kvb-f32", n_ctx=256, n_batch=64, n_ubatch=64, mla=mla, n_seq_max=2, defrag_thold=-1)
    decode(llm, toks[:100])
    decode(llm, toks[:60], seq=1)
    llm.ctx.seq_rm(0, 20, 50)
    ref = llm.ctx.decode(Batch.from_tokens([7], pos0=100))
    llm.ctx.seq_rm(0, 100, 101)
    llm.ctx.seq_rm(1, -1, -1)  # the other sequence leaves: more holes
    assert np.array_equal(llm.ctx.decode(Batch.from_tokens([7], pos0=100)), ref)
    llm.ctx.seq_rm(0, 100, 101)
    assert llm.ctx.defrag() > 0 and llm.ctx.cells.n_kv() == llm.ctx.cells.used
    assert np.array_equal(llm.ctx.decode(Batch.from_tokens([7], pos0=100)), ref)
