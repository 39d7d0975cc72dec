"""deepseek2 (MLA + MoE + YaRN) against llama.cpp goldens, and the MLA modes against each other.

Goldens: tests/data/goldens_deepseek2 (tools/make_deepseek_goldens.py). Tolerances and the
margin-aware top-1 / greedy checks mirror tests/test_parity.py. Also: all four -mla modes agree,
prefill == token-by-token decode, the K-only cache layout and size, the three tensor conventions.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

import synthetic_deepseek2 as sd
import pyrt
from pyrt.errors import UnsupportedError
from pyrt.runtime.context import Batch
from pyrt.models import deepseek2
from pyrt.ops import paths

GOLDENS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "goldens_deepseek2")
NMSE_MAX = {"F32": 1e-4, "F16": 1e-4}
NMSE_MAX_QUANT = 2e-3
TOP1_MIN = 0.99
TIE_FACTOR = 4.0


@pytest.fixture(scope="module")
def ds2_models(tmp_path_factory):
    return sd.write_all(tmp_path_factory.mktemp("ds2_models"))


def _nmse(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(((a - b) ** 2).sum() / (b ** 2).sum())


# mode 3 (crossover lowered to 16 tokens) runs the 48-token logits ubatch decompressed and the greedy
# steps absorbed; mode 1 absorbs everything; mode 0 keeps decompressed K/V in a standard cache
CASES = [(name, 3) for name, *_ in sd.VARIANTS] + [("ds2-qlora-kb-q8_0", 1), ("ds2-lite-kb-f16", 0)]


@pytest.fixture
def decompress_from_16():
    """-mla 2/3 decompress ubatches of 16 tokens and more (the prompts here are short)."""
    with paths.using(mla_decompress_min_tokens=16):
        yield 16


@pytest.mark.parametrize("name,mode", CASES)
def test_logits_and_greedy_match_llama_cpp(name, mode, ds2_models, parity_report, decompress_from_16):
    path, hp = ds2_models[name]
    g = np.load(os.path.join(GOLDENS, name + ".npz"))
    ref = g["logits"].astype(np.float64)
    llm = pyrt.load(path, n_ctx=256, n_threads=2, mla=mode, warmup=False)
    assert len(g["ids"]) >= decompress_from_16 > len(g["prompt"])
    out = np.asarray(llm.eval_logits([int(t) for t in g["ids"]]), dtype=np.float64)
    assert out.shape == ref.shape and np.isfinite(out).all()
    nmse = _nmse(out, ref)
    row_rms = np.sqrt(((out - ref) ** 2).mean(axis=1))
    top_out, top_ref = out.argmax(1), ref.argmax(1)
    deficit = ref.max(1) - ref[np.arange(len(ref)), top_out]
    tie_ok = (top_out == top_ref) | (deficit <= TIE_FACTOR * row_rms)
    gen = [int(t) for t in llm.generate_ids([int(t) for t in g["prompt"]], max_tokens=64, temperature=0.0,
                                            ignore_eos=True)]
    gen_ref = [int(t) for t in g["gen_ids"]]
    tol = TIE_FACTOR * float(np.sqrt(((out - ref) ** 2).mean()))
    near_tie = np.nonzero(g["gen_margin"] <= tol)[0]
    check_upto = int(near_tie[0]) if len(near_tie) else len(gen_ref)
    limit = NMSE_MAX.get(hp["wtype"], NMSE_MAX_QUANT)
    parity_report.append(f"{name:18s} mla={mode} nmse={nmse:.2e} (max {limit:.0e}) top1={tie_ok.mean():.3f} "
                         f"tie-aware, greedy checked {check_upto}/{len(gen_ref)}")
    assert nmse <= limit
    assert tie_ok.mean() >= TOP1_MIN
    assert gen[:check_upto] == gen_ref[:check_upto]


ROUTE_MARGIN_MIN = 5e-3


def _selection_margins(monkeypatch) -> list:
    """Records, for every moe.route call of deepseek2, the smallest gap between a token's last chosen and
    first unchosen expert in the selection scores (probabilities plus exp_probs_b), as route ranks them."""
    margins = []
    route = deepseek2.moe.route

    def recording(logits, k, gating, bias, norm_w, w_scale):
        x = np.asarray(logits, np.float64)
        p = 1.0 / (1.0 + np.exp(-x)) if gating == deepseek2.moe.GATING_SIGMOID else \
            np.exp(x - x.max(1, keepdims=True)) / np.exp(x - x.max(1, keepdims=True)).sum(1, keepdims=True)
        s = -np.sort(-(p if bias is None else p + bias[None, :]), axis=1)
        margins.append(float((s[:, k - 1] - s[:, k]).min()))
        return route(logits, k, gating, bias, norm_w, w_scale)

    monkeypatch.setattr(deepseek2.moe, "route", recording)
    return margins


def test_all_modes_agree_f32_cache(ds2_models, decompress_from_16, monkeypatch):
    """-mla 0..3 on an f32 cache: NMSE <= 1e-5 between every mode and mode 0, prompt and decode.

    The modes round differently (and F16 weights round the activations to f16), so a token whose expert
    selection is a near-tie may pick another expert in another mode; the prompt is one whose selections
    (routed outside the fused one-token path) all have a margin of at least ROUTE_MARGIN_MIN, checked, so
    that what is compared is the modes' attention.
    """
    path, _ = ds2_models["ds2-lite-kb-f16"]
    ids = list(range(35, 75))  # 40 tokens: mode 2/3 decompress the prompt, then decode absorbed
    margins = _selection_margins(monkeypatch)
    res = {}
    for mode in (0, 1, 2, 3):
        llm = pyrt.load(path, n_ctx=128, n_threads=2, mla=mode, type_k="f32", type_v="f32", warmup=False)
        pre = np.asarray(llm.eval_logits(ids), np.float64)
        dec = np.concatenate([llm.ctx.decode(Batch.from_tokens([t], pos0=len(ids) + i, logits="all"))
                              for i, t in enumerate([7, 8, 9])]).astype(np.float64)
        res[mode] = (pre, dec)
    assert len(margins) >= 4 * 2 and min(margins) >= ROUTE_MARGIN_MIN, min(margins)  # 4 modes x 2 MoE layers
    for mode in (1, 2, 3):
        assert _nmse(res[mode][0], res[0][0]) <= 1e-5, mode
        assert _nmse(res[mode][1], res[0][1]) <= 1e-5, mode


def test_prefill_equals_repeated_decode(ds2_models, decompress_from_16):
    path, _ = ds2_models["ds2-qlora-kvb-f32"]
    ids = list(range(30, 70))
    a = pyrt.load(path, n_ctx=128, n_threads=2, mla=3, type_k="f32", warmup=False)
    pre = np.asarray(a.eval_logits(ids), np.float64)
    b = pyrt.load(path, n_ctx=128, n_threads=2, mla=3, type_k="f32", warmup=False)
    one = np.concatenate([b.ctx.decode(Batch.from_tokens([t], pos0=i, logits="all"))
                          for i, t in enumerate(ids)]).astype(np.float64)
    assert _nmse(one, pre) <= 1e-5


def test_three_conventions_same_model(ds2_models):
    """attn_kv_b only (k_b/v_b derived at load) == all three tensors (ik layout) on the same weights."""
    ids = list(range(40, 52))
    out = {}
    for name in ("ds2-qlora-kvb-f32", "ds2-qlora-all3-f32"):
        llm = pyrt.load(ds2_models[name][0], n_ctx=64, n_threads=2, mla=1, warmup=False)
        out[name] = np.asarray(llm.eval_logits(ids), np.float64)
    assert _nmse(out["ds2-qlora-all3-f32"], out["ds2-qlora-kvb-f32"]) < 1e-10


def test_k_only_cache_layout_and_types(ds2_models):
    path, hp = ds2_models["ds2-lite-kb-f16"]
    llm = pyrt.load(path, n_ctx=64, n_threads=2, mla=3, warmup=False)
    cache = llm.ctx.cache
    assert all(v is None for v in cache.v)
    assert cache.v_bytes() == 0 and "V (f16):    0.00 MiB" in cache.size_report()
    assert cache.k[0].shape == (64, hp["kv_lora_rank"] + hp["qk_rope"])
    ids = list(range(10, 30))
    ref = np.asarray(pyrt.load(path, n_ctx=64, n_threads=2, mla=1, type_k="f32", warmup=False).eval_logits(ids))
    for t in ("f16", "bf16", "q8_0"):
        got = np.asarray(pyrt.load(path, n_ctx=64, n_threads=2, mla=1, type_k=t, warmup=False).eval_logits(ids))
        assert _nmse(got, ref) < (1e-4 if t != "bf16" else 1e-3), t
    with pytest.raises(UnsupportedError):
        pyrt.load(path, n_ctx=64, n_threads=2, mla=1, type_k="q8_KV", warmup=False)
    m0 = pyrt.load(path, n_ctx=64, n_threads=2, mla=0, warmup=False).ctx.cache
    assert m0.v_bytes() > 0 and m0.k_bytes() > cache.k_bytes()


@pytest.mark.parametrize("name", ["ds2-qlora-kvb-f32", "ds2-qlora-kb-q8_0"])
def test_batched_sequences_give_their_lone_bits(name, ds2_models):
    """One decode of three sequences' next tokens (as the engine batches them) gives each sequence exactly the
    logits of its lone decode: each sequence's latent attention scans its own cells, tiled as when it runs alone
    (F32 weights: no activation quantization that could absorb a last-bit difference)."""
    path, _ = ds2_models[name]
    prompts = [[(7 * i) % 200 + 3 for i in range(150)], [(11 * i) % 200 + 3 for i in range(300)], list(range(100, 140))]
    nxt = [7, 8, 9]
    llm = pyrt.load(path, n_ctx=512, n_threads=2, n_seq_max=3, warmup=False)
    for s, p in enumerate(prompts):
        llm.ctx.decode(Batch.from_tokens(p, seq_id=s))
    got = llm.ctx.decode(Batch(np.array(nxt), np.array([len(p) for p in prompts]), np.arange(3), np.ones(3, bool)))
    for s, p in enumerate(prompts):
        lone = pyrt.load(path, n_ctx=512, n_threads=2, warmup=False)
        lone.ctx.decode(Batch.from_tokens(p))
        np.testing.assert_array_equal(got[s], lone.ctx.decode(Batch.from_tokens([nxt[s]], pos0=len(p)))[0])


@pytest.mark.boundscheck
@pytest.mark.parametrize("name", ["ds2-lite-kb-f16", "ds2-qlora-kb-q8_0"])
def test_grouped_decode_paths_bit_identical(name, ds2_models, monkeypatch):
    """Decoding through the grouped kernels (one launch for all experts / all heads) gives exactly the
    logits of the per-expert and per-head matmul calls they replace."""
    from pyrt.ops import matmul as mm
    path, _ = ds2_models[name]
    ids = [5, 9, 14, 3]

    def run():
        llm = pyrt.load(path, n_ctx=64, n_threads=2, mla=1, warmup=False)
        return np.concatenate([llm.ctx.decode(Batch.from_tokens([t], pos0=i, logits="all"))
                               for i, t in enumerate(ids)])
    with paths.using(fused_moe_decode=False):  # the grouped launches, not the fused MoE kernel
        grouped = run()
        monkeypatch.setattr(mm, "dot_path", lambda ggml_type, n_tok: False)  # per-head loop in attention
        with paths.using(moe_id_max_tokens=0):
            np.testing.assert_array_equal(run(), grouped)


def test_fused_moe_decode_matches_op_by_op(ds2_models):
    """Single-token decode through the fused MoE kernel gives the logits of the op-by-op MoE FFN."""
    path, _ = ds2_models["ds2-lite-kvb-q4_0"]
    ids = [5, 9, 14, 3, 7, 11]

    def run():
        llm = pyrt.load(path, n_ctx=64, n_threads=2, mla=1, warmup=False)
        fused = [L.ffn.decode is not None for L in llm.model.layers if isinstance(L.ffn, deepseek2.MoEFFN)]
        return fused, np.concatenate([llm.ctx.decode(Batch.from_tokens([t], pos0=i, logits="all"))
                                      for i, t in enumerate(ids)])
    on, a = run()
    with paths.using(fused_moe_decode=False):
        off, b = run()
    assert all(on) and not any(off)
    assert _nmse(a, b) < 1e-10


@pytest.mark.boundscheck
@pytest.mark.parametrize("name", ["ds2-lite-kvb-q4_0", "ds2-qlora-kb-q8_0"])
def test_fused_mla_decode_bit_identical(name, ds2_models):
    """One decoded token's absorbed attention in one call (W_UK, FlashMLA, W_UV) gives exactly the logits of
    the three separate calls; on the W_UK-from-attn_kv_b and the attn_k_b/attn_v_b conventions."""
    path, _ = ds2_models[name]
    ids = [5, 9, 14, 3, 7]

    def run():
        llm = pyrt.load(path, n_ctx=64, n_threads=2, mla=1, warmup=False)
        fused = [L.attn.decode is not None for L in llm.model.layers]
        return fused, np.concatenate([llm.ctx.decode(Batch.from_tokens([t], pos0=i, logits="all"))
                                      for i, t in enumerate(ids)])
    with paths.using(fused_mla_block=False):  # MLADecode inside the op-by-op block
        on, a = run()
        with paths.using(fused_mla_decode=False):
            _, b = run()
    assert all(on)
    np.testing.assert_array_equal(a, b)


@pytest.mark.boundscheck
@pytest.mark.parametrize("name,type_k", [("ds2-lite-kvb-q4_0", "f16"), ("ds2-lite-kvb-q4_0", "q8_0"),
                                         ("ds2-qlora-kb-q8_0", "bf16"), ("ds2-qlora-kb-q8_0", "f32")])
def test_fused_block_decode_bit_identical(name, type_k, ds2_models):
    """A decoded token's attention block and MoE block as one call each (norms, projections with and without
    q_lora, RoPE, the cache store in every MLA cache type, attention, attn_output, residuals) give exactly
    the logits and the cache rows of the op-by-op block; prompt chunks in between still run op by op."""
    path, _ = ds2_models[name]

    def run():
        llm = pyrt.load(path, n_ctx=64, n_threads=2, mla=3, type_k=type_k, warmup=False)
        blocks = [L.attn.block is not None for L in llm.model.layers]
        ctx = llm.ctx
        out = [ctx.decode(Batch.from_tokens([5, 9, 14], pos0=0, logits="all"))]
        out += [ctx.decode(Batch.from_tokens([t], pos0=3 + i)) for i, t in enumerate([3, 7, 11])]
        out.append(ctx.decode(Batch.from_tokens([2, 8], pos0=6, logits="all")))
        out += [ctx.decode(Batch.from_tokens([t], pos0=8 + i)) for i, t in enumerate([4, 6])]
        ctx.decode(Batch.from_tokens([13], pos0=10, logits="none"))  # last layer with no output row
        out.append(ctx.decode(Batch.from_tokens([1], pos0=11)))
        return blocks, np.concatenate(out), [k.copy() for k in ctx.cache.k]
    on, a, ka = run()
    with paths.using(fused_mla_block=False):
        off, b, kb = run()
    assert all(on) and not any(off)
    np.testing.assert_array_equal(a, b)
    for x, y in zip(ka, kb):
        np.testing.assert_array_equal(x, y)


def test_amx_tiles_match_f32_kernel_16_heads(tmp_path):
    """A 16-head model (the AMX-BF16 FlashMLA items take whole 16-row groups): prompt (absorbed, forced from 1
    cells), decode and the fused decode block on the tiles agree with the f32 items on the same f16 cache."""
    from pyrt.ops.mla import amx_config
    if amx_config().size == 0:
        pytest.skip("AMX-BF16 tiles: the CPU or kernel does not offer them here")
    path = str(tmp_path / "ds2-16h.gguf")
    sd.write_model(path, "F16", "k_b", n_head=16, q_lora_rank=0)
    ids = list(range(20, 80))
    res = {}
    for amx in (True, False):
        with paths.using(amx=amx, mla_amx_min_cells=1):
            llm = pyrt.load(path, n_ctx=128, n_threads=2, mla=3, warmup=False)
            pre = np.asarray(llm.eval_logits(ids), np.float64)
            dec = np.concatenate([llm.ctx.decode(Batch.from_tokens([t], pos0=len(ids) + i, logits="all"))
                                  for i, t in enumerate([7, 8, 9])]).astype(np.float64)
        res[amx] = (pre, dec)
    assert not np.array_equal(res[True][0], res[False][0])  # the tiles ran
    assert _nmse(res[True][0], res[False][0]) <= 1e-6
    assert _nmse(res[True][1], res[False][1]) <= 1e-6


def test_decompressed_prompt_on_tiles_matches_blas(ds2_models):
    """The decompressed prompt attention on AMX-BF16 tiles (ops.mla.heads_attention_amx) against the per-head
    BLAS products, over a prompt that spans two ubatches (the second sees the first's cells). The model with
    f32 weights and softmax routing: the others' near-tied expert choices turn 2^-16 differences into 1e-4."""
    from pyrt.ops.mla import heads_amx_takes
    if not heads_amx_takes(64, 32, "f16"):
        pytest.skip("AMX-BF16 tiles: the CPU or kernel does not offer them here")
    path = ds2_models["ds2-qlora-kvb-f32"][0]
    ids = [(i * 37) % 400 + 20 for i in range(90)]
    res = {}
    for tiles in (True, False):
        with paths.using(mla_decompress_min_tokens=16, mla_heads_amx=tiles):
            llm = pyrt.load(path, n_ctx=128, n_batch=48, n_ubatch=48, n_threads=2, mla=3, warmup=False)
            res[tiles] = np.asarray(llm.eval_logits(ids), np.float64)
    assert not np.array_equal(res[True], res[False])
    assert _nmse(res[True], res[False]) <= 1e-7


def test_one_block_kernel_signature_with_and_without_q_lora(ds2_models):
    """The attention blocks of a q_lora file (q_a_norm mapped from it) and of a Lite-style one (an empty q_a_norm
    and q_b) hand mla_block_decode arrays of one Numba type each (every vector read-only): one compiled kernel
    per cache type, not two."""
    import numba
    from dataclasses import fields
    sigs = set()
    for name in ("ds2-qlora-kb-q8_0", "ds2-lite-kvb-q4_0"):
        layers = pyrt.load(ds2_models[name][0], n_ctx=32, warmup=False).model.layers
        blocks = [L.attn.block for L in layers if L.attn.block is not None]
        assert blocks, name
        for b in blocks:
            sigs.add(tuple((f.name, str(numba.typeof(getattr(b, f.name)))) for f in fields(b)
                           if isinstance(getattr(b, f.name), np.ndarray)))
    assert len(sigs) == 1, sigs
