"""Tiny deterministic `deepseek2` GGUF models (MLA + MoE) for tests and llama.cpp goldens.

Covers the three tensor conventions (attn_kv_b only; attn_k_b + attn_v_b with the mainline MLA
header; all three), with and without q_lora, a leading dense layer then MoE layers with shared
experts, softmax or sigmoid gating (+ exp_probs_b, weight norm and scale) and YaRN. The float weights
depend only on (seed, tensor name), so the conventions hold the same model. Imports numpy, gguf and
tools/synthetic only. CLI: `python tools/synthetic_deepseek2.py OUTDIR`.
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

import gguf

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import synthetic  # noqa: E402

ARCH = "deepseek2"
DEFAULT_DIMS = dict(
    n_embd=128, n_head=4, q_lora_rank=64, kv_lora_rank=64, qk_nope=32, qk_rope=32, v_head=32,
    n_ff=256, n_ff_exp=64, n_expert=4, n_expert_used=2, n_expert_shared=1, n_layer=3, n_dense=1,
    n_vocab=512, n_ctx=256, rms_eps=1e-6, rope_freq_base=10000.0,
    gating="softmax", probs_bias=False, weights_norm=False, weights_scale=1.0, yarn=False,
)
STD_PROJ = 0.08
STD_GATE = 0.5

# (name, weight type, convention, dims overrides). convention: "kv_b" (legacy), "k_b" (mainline MLA), "all3"
VARIANTS = [
    ("ds2-qlora-kvb-f32", "F32", "kv_b", {}),
    ("ds2-lite-kb-f16", "F16", "k_b", dict(q_lora_rank=0, gating="sigmoid", probs_bias=True, weights_norm=True,
                                          weights_scale=2.5, yarn=True)),
    ("ds2-qlora-kb-q8_0", "Q8_0", "k_b", dict(yarn=True)),
    ("ds2-lite-kvb-q4_0", "Q4_0", "kv_b", dict(q_lora_rank=0, weights_norm=True)),
]
# pyrt-only: all three tensors (mainline llama.cpp refuses the unused attn_kv_b); same weights as ds2-qlora-kvb-f32
EXTRA_VARIANTS = [("ds2-qlora-all3-f32", "F32", "all3", {})]


def hparams(wtype: str, convention: str, seed: int = 0, **dims) -> dict:
    unknown = set(dims) - set(DEFAULT_DIMS)
    if unknown:
        raise ValueError(f"unknown dims {sorted(unknown)}")
    hp = dict(DEFAULT_DIMS)
    hp.update(dims)
    base = hp["n_vocab"] - len(synthetic.GPT2_SPECIALS)
    hp.update(arch=ARCH, wtype=wtype.upper(), convention=convention, seed=seed, tokenizer="gpt2",
              bos_id=base, eos_id=base + 2, pad_id=base, add_bos=False)
    return hp


def _n(seed, name, shape, std=STD_PROJ):
    return synthetic._normal(seed, name, shape, std)


def model_tensors(seed: int, hp: dict):
    """Yield (name, float32 array, is_matrix); numpy shapes (ggml's reversed)."""
    E, H, C, R = hp["n_embd"], hp["n_head"], hp["kv_lora_rank"], hp["qk_rope"]
    Dn, Dv = hp["qk_nope"], hp["v_head"]
    Dk = Dn + R
    yield "token_embd.weight", _n(seed, "token_embd", (hp["n_vocab"], E), 1.0), True
    for il in range(hp["n_layer"]):
        p = f"blk.{il}."
        yield p + "attn_norm.weight", synthetic._norm_weight(seed, p + "attn_norm", E), False
        if hp["q_lora_rank"] > 0:
            yield p + "attn_q_a.weight", _n(seed, p + "attn_q_a", (hp["q_lora_rank"], E)), True
            yield p + "attn_q_a_norm.weight", synthetic._norm_weight(seed, p + "attn_q_a_norm", hp["q_lora_rank"]), False
            yield p + "attn_q_b.weight", _n(seed, p + "attn_q_b", (H * Dk, hp["q_lora_rank"]), 0.15), True
        else:
            yield p + "attn_q.weight", _n(seed, p + "attn_q", (H * Dk, E)), True
        yield p + "attn_kv_a_mqa.weight", _n(seed, p + "attn_kv_a_mqa", (C + R, E)), True
        yield p + "attn_kv_a_norm.weight", synthetic._norm_weight(seed, p + "attn_kv_a_norm", C), False
        kv_b = _n(seed, p + "attn_kv_b", (H * (Dn + Dv), C), 0.15)  # HF kv_b_proj: per head [W_UK; W_UV]
        w = kv_b.reshape(H, Dn + Dv, C)
        if hp["convention"] in ("kv_b", "all3"):
            yield p + "attn_kv_b.weight", kv_b, True
        if hp["convention"] in ("k_b", "all3"):
            k_b = np.ascontiguousarray(w[:, :Dn, :].transpose(0, 2, 1))  # [H, C, Dn]
            v_b = np.ascontiguousarray(w[:, Dn:, :])                      # [H, Dv, C]
            if hp["convention"] == "all3":  # ik's 2-D layout
                k_b, v_b = k_b.reshape(H * C, Dn), v_b.reshape(H * Dv, C)
            yield p + "attn_k_b.weight", k_b, True
            yield p + "attn_v_b.weight", v_b, True
        yield p + "attn_output.weight", _n(seed, p + "attn_output", (E, H * Dv)), True
        yield p + "ffn_norm.weight", synthetic._norm_weight(seed, p + "ffn_norm", E), False
        if il < hp["n_dense"]:
            yield p + "ffn_gate.weight", _n(seed, p + "ffn_gate", (hp["n_ff"], E)), True
            yield p + "ffn_up.weight", _n(seed, p + "ffn_up", (hp["n_ff"], E)), True
            yield p + "ffn_down.weight", _n(seed, p + "ffn_down", (E, hp["n_ff"])), True
        else:
            X, F = hp["n_expert"], hp["n_ff_exp"]
            yield p + "ffn_gate_inp.weight", _n(seed, p + "ffn_gate_inp", (X, E), STD_GATE), True
            if hp["probs_bias"]:
                yield p + "exp_probs_b.bias", _n(seed, p + "exp_probs_b", (X,), 0.1), False
            yield p + "ffn_gate_exps.weight", _n(seed, p + "ffn_gate_exps", (X, F, E)), True
            yield p + "ffn_up_exps.weight", _n(seed, p + "ffn_up_exps", (X, F, E)), True
            yield p + "ffn_down_exps.weight", _n(seed, p + "ffn_down_exps", (X, E, F)), True
            S = F * hp["n_expert_shared"]
            yield p + "ffn_gate_shexp.weight", _n(seed, p + "ffn_gate_shexp", (S, E)), True
            yield p + "ffn_up_shexp.weight", _n(seed, p + "ffn_up_shexp", (S, E)), True
            yield p + "ffn_down_shexp.weight", _n(seed, p + "ffn_down_shexp", (E, S)), True
    yield "output_norm.weight", synthetic._norm_weight(seed, "output_norm", E), False
    yield "output.weight", _n(seed, "output", (hp["n_vocab"], E), 0.1), True


def _encode(arr: np.ndarray, wtype: str):
    flat = arr.reshape(-1, arr.shape[-1])
    data, raw = synthetic.encode(flat, wtype)
    return data.reshape(arr.shape[:-1] + (data.shape[-1],)), raw


def write_model(path, wtype: str, convention: str, seed: int = 0, **dims) -> dict:
    hp = hparams(wtype, convention, seed, **dims)
    a = lambda k: f"{ARCH}.{k}"  # noqa: E731
    H, C, R, Dn, Dv = hp["n_head"], hp["kv_lora_rank"], hp["qk_rope"], hp["qk_nope"], hp["v_head"]
    w = gguf.GGUFWriter(os.fspath(path), ARCH)
    w.add_name(f"pyrt-synthetic-{ARCH}-{convention}-{hp['wtype'].lower()}")
    w.add_block_count(hp["n_layer"])
    w.add_context_length(hp["n_ctx"])
    w.add_embedding_length(hp["n_embd"])
    w.add_feed_forward_length(hp["n_ff"])
    w.add_head_count(H)
    if convention == "k_b":  # mainline MLA header: one KV head of 576/512, real dims in *_mla
        w.add_head_count_kv(1)
        w.add_key_length(C + R)
        w.add_value_length(C)
        w.add_uint32(a("attention.key_length_mla"), Dn + R)
        w.add_uint32(a("attention.value_length_mla"), Dv)
    else:
        w.add_head_count_kv(H)
        w.add_key_length(Dn + R)
        w.add_value_length(Dv)
    w.add_layer_norm_rms_eps(hp["rms_eps"])
    w.add_rope_freq_base(hp["rope_freq_base"])
    w.add_rope_dimension_count(R)
    if hp["yarn"]:
        w.add_string(a("rope.scaling.type"), "yarn")
        w.add_float32(a("rope.scaling.factor"), 4.0)
        w.add_uint32(a("rope.scaling.original_context_length"), 64)
        w.add_float32(a("rope.scaling.yarn_log_multiplier"), 0.0707)
    w.add_uint32(a("attention.q_lora_rank"), hp["q_lora_rank"])
    w.add_uint32(a("attention.kv_lora_rank"), C)
    w.add_uint32(a("leading_dense_block_count"), hp["n_dense"])
    w.add_uint32(a("expert_feed_forward_length"), hp["n_ff_exp"])
    w.add_uint32(a("expert_count"), hp["n_expert"])
    w.add_uint32(a("expert_used_count"), hp["n_expert_used"])
    w.add_uint32(a("expert_shared_count"), hp["n_expert_shared"])
    w.add_float32(a("expert_weights_scale"), hp["weights_scale"])
    w.add_bool(a("expert_weights_norm"), hp["weights_norm"])
    w.add_uint32(a("expert_gating_func"), 1 if hp["gating"] == "softmax" else 2)
    w.add_vocab_size(hp["n_vocab"])
    w.add_file_type(int(synthetic.FILE_TYPE[hp["wtype"]]))
    tokens, merges, types = synthetic.gpt2_vocab(hp["n_vocab"])
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("qwen2")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    w.add_bos_token_id(hp["bos_id"])
    w.add_eos_token_id(hp["eos_id"])
    w.add_pad_token_id(hp["pad_id"])
    w.add_add_bos_token(False)
    for name, arr, is_matrix in model_tensors(seed, hp):
        if is_matrix:
            data, raw = _encode(arr, hp["wtype"])
            if raw is None:
                w.add_tensor(name, data)
            else:
                w.add_tensor(name, data, raw_dtype=raw)
        else:
            w.add_tensor(name, arr)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return hp


def write_all(outdir, seed: int = 0, extra: bool = True) -> dict:
    """Write every variant into outdir; returns {name: (path, hparams)}."""
    os.makedirs(outdir, exist_ok=True)
    out = {}
    for name, wtype, conv, dims in VARIANTS + (EXTRA_VARIANTS if extra else []):
        path = os.path.join(outdir, name + ".gguf")
        out[name] = (path, write_model(path, wtype, conv, seed=seed, **dims))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("outdir")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    for name, (path, _) in write_all(args.outdir, args.seed).items():
        print(f"{path}  {os.path.getsize(path)} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
