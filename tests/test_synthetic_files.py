"""Checks of the synthetic GGUF writer (tools/synthetic.py) and of the stored llama.cpp goldens.

Deterministic bytes (SHA-256 equal to the goldens' manifest, so stale goldens are caught),
tensor table/types/shapes, block packers against gguf.quants.dequantize, toy vocabularies.
"""

from __future__ import annotations

import hashlib
import os

import numpy as np
import pytest

import gguf
from gguf import GGMLQuantizationType as QT
from gguf import quants

import synthetic

# Upper bounds on NMSE(dequantized file weight, float weight it encodes), per type.
NMSE_BOUND = {"F32": 0.0, "F16": 1e-6, "BF16": 1e-4, "Q8_0": 1e-4, "Q6_K": 1e-3,
              "Q5_0": 4e-3, "Q5_K": 4e-3, "Q4_0": 1.5e-2, "Q4_K": 1.5e-2}


def _sha(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def _nmse(a, b):
    return float(((a - b) ** 2).sum() / (b ** 2).sum())


def test_variants_cover_all_arch_types(synthetic_models):
    combos = {(hp["arch"], hp["wtype"]) for _, hp in synthetic_models.values()}
    assert combos == {(a, t) for a in synthetic.ARCHS for t in synthetic.WTYPES}
    assert any(hp["tied"] for _, hp in synthetic_models.values())


def test_bytes_match_goldens_manifest(synthetic_models, goldens_manifest):
    """Fails when the writer changed: regenerate with `python tools/make_goldens.py`."""
    recorded = goldens_manifest["models"]
    assert set(recorded) == set(synthetic_models)
    stale = [n for n, (p, _) in synthetic_models.items() if _sha(p) != recorded[n]["sha256"]]
    assert not stale, f"synthetic models changed, goldens are stale: {stale}"


def test_writer_is_deterministic(tmp_path, synthetic_models):
    path, hp = synthetic_models["llama-q4_k"]
    again = tmp_path / "again.gguf"
    synthetic.write_model(again, "llama", "Q4_K", seed=hp["seed"])
    assert _sha(again) == _sha(path)
    other = tmp_path / "other.gguf"
    synthetic.write_model(other, "llama", "Q4_K", seed=hp["seed"] + 1)
    assert _sha(other) != _sha(path)


def _expected_table(arch, hp):
    return {name: (arr, is_matrix) for name, arr, is_matrix in synthetic.model_tensors(arch, hp["seed"], hp)}


@pytest.mark.parametrize("name", [v[0] for v in synthetic.VARIANTS])
def test_tensors_types_shapes_values(synthetic_models, name):
    path, hp = synthetic_models[name]
    r = gguf.GGUFReader(path)
    expected = _expected_table(hp["arch"], hp)
    assert [t.name for t in r.tensors] == list(expected)
    assert ("output.weight" in expected) == (not hp["tied"])
    for t in r.tensors:
        ref, is_matrix = expected[t.name]
        # gguf shapes are ggml order (ne0 first): reverse for numpy's row-major shape.
        assert tuple(int(x) for x in reversed(t.shape)) == ref.shape, t.name
        if not is_matrix:
            assert t.tensor_type == QT.F32, t.name
            np.testing.assert_array_equal(np.asarray(t.data), ref)
            continue
        assert t.tensor_type == QT[hp["wtype"]], t.name
        w = quants.dequantize(np.asarray(t.data), t.tensor_type).reshape(ref.shape).astype(np.float32)
        assert np.isfinite(w).all(), t.name
        # Sane spread: the encoded weights keep the float weights' scale and stay centred.
        assert 0.8 < w.std() / ref.std() < 1.25, t.name
        assert abs(w.mean()) < 0.1 * ref.std(), t.name
        assert _nmse(w, ref) <= NMSE_BOUND[hp["wtype"]], (t.name, _nmse(w, ref))


@pytest.mark.parametrize("name", ["llama-f32", "qwen2-q8_0-tied"])
def test_metadata(synthetic_models, name):
    path, hp = synthetic_models[name]
    r = gguf.GGUFReader(path)
    f = {k: v.contents() for k, v in r.fields.items() if not k.startswith("GGUF.")}
    a = hp["arch"]
    assert f["general.architecture"] == a
    assert f[f"{a}.block_count"] == hp["n_layer"]
    assert f[f"{a}.embedding_length"] == hp["n_embd"]
    assert f[f"{a}.feed_forward_length"] == hp["n_ff"]
    assert f[f"{a}.attention.head_count"] == hp["n_head"]
    assert f[f"{a}.attention.head_count_kv"] == hp["n_head_kv"]
    assert f[f"{a}.context_length"] == hp["n_ctx"]
    assert f[f"{a}.rope.dimension_count"] == hp["head_dim"]
    assert f[f"{a}.rope.freq_base"] == pytest.approx(hp["rope_freq_base"])
    assert f[f"{a}.attention.layer_norm_rms_epsilon"] == pytest.approx(hp["rms_eps"])
    assert f["general.file_type"] == int(synthetic.FILE_TYPE[hp["wtype"]])
    assert len(f["tokenizer.ggml.tokens"]) == hp["n_vocab"]
    assert f["tokenizer.ggml.bos_token_id"] == hp["bos_id"]
    assert f["tokenizer.ggml.eos_token_id"] == hp["eos_id"]


def test_spm_vocab():
    tokens, scores, types = synthetic.spm_vocab(512)
    assert len(tokens) == len(scores) == len(types) == 512 == len(set(tokens))
    assert tokens[:3] == ["<unk>", "<s>", "</s>"] and types[:3] == [2, 3, 3]
    assert tokens[3 + 0x0A] == "<0x0A>" and all(t == 6 for t in types[3:259])
    assert all(t.startswith("\u2581") or t.isalpha() for t in tokens[259:])


def test_gpt2_vocab_merges_are_consistent():
    tokens, merges, types = synthetic.gpt2_vocab(512)
    assert len(tokens) == len(types) == 512 == len(set(tokens))
    assert tokens[-3:] == list(synthetic.GPT2_SPECIALS) and types[-3:] == [3, 3, 3]
    assert len(merges) == 512 - 256 - 3
    vocab = set(tokens)
    for m in merges:
        left, right = m.split(" ")
        assert left in vocab and right in vocab and left + right in vocab, m
    assert "\u010a" in vocab  # "\n" in the byte-level alphabet (llama.cpp looks up its id)


@pytest.mark.parametrize("wtype", ["Q4_K", "Q5_K", "Q6_K"])
def test_kquant_packers_edge_rows(wtype):
    rng = np.random.default_rng(7)
    x = (rng.standard_normal((4, 512)) * 0.05).astype(np.float32)
    x[0] = 0.0                 # all-zero row: d = 0 must not give NaN
    x[1, :256] = 0.25          # constant super-block
    x[2] = np.abs(x[2])        # no negative values: min offset 0
    x[3, 7] = 3.0              # one outlier
    data, raw = synthetic.encode(x, wtype)
    assert data.shape == (4, 512 // 256 * gguf.GGML_QUANT_SIZES[raw][1])
    y = quants.dequantize(data, raw)
    assert np.isfinite(y).all()
    np.testing.assert_array_equal(y[0], 0.0)
    step = np.abs(x[1:]).max() / {"Q4_K": 15, "Q5_K": 31, "Q6_K": 32}[wtype]
    assert np.abs(y[1:] - x[1:]).max() <= step
    assert _nmse(y[2:], x[2:]) <= NMSE_BOUND[wtype]


def test_rejects_bad_dims():
    with pytest.raises(ValueError):
        synthetic.hparams("llama", "Q4_K", n_embd=128, n_head=2)
    with pytest.raises(ValueError):
        synthetic.hparams("mamba", "F32")
    with pytest.raises(ValueError):
        synthetic.hparams("llama", "Q3_K")


def test_goldens_files(synthetic_models, goldens_dir, goldens_manifest):
    s = goldens_manifest["settings"]
    assert s["flash_attn"] is False and s["type_k"] == "f16"
    total = 0
    for name, (_, hp) in synthetic_models.items():
        p = os.path.join(goldens_dir, name + ".npz")
        total += os.path.getsize(p)
        g = np.load(p)
        assert g["ids"].shape == (48,) and g["ids"][0] == hp["bos_id"]
        assert g["logits"].shape == (48, hp["n_vocab"]) and g["logits"].dtype == np.float32
        assert np.isfinite(g["logits"]).all() and g["logits"].std() > 0.1
        assert g["prompt"].shape == (8,) and g["prompt"][0] == hp["bos_id"]
        assert g["gen_ids"].shape == (64,) and g["gen_margin"].shape == (64,)
        for k in ("ids", "prompt", "gen_ids"):
            assert ((g[k] >= 0) & (g[k] < hp["n_vocab"])).all()
    assert total < 3 * 2 ** 20


@pytest.mark.parametrize("qtype", ["Q4_0", "Q8_0", "Q4_K", "Q6_K"])
def test_bench_random_blocks_have_target_spread(qtype):
    import make_bench_model
    data = make_bench_model.random_blocks(np.random.default_rng(0), 64, 512, QT[qtype], 0.02)
    y = quants.dequantize(data, QT[qtype])
    assert y.shape == (64, 512) and np.isfinite(y).all()
    assert 0.8 < y.std() / 0.02 < 1.25
    assert abs(y.mean()) < 0.05 * 0.02
