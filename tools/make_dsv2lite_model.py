"""Write a DeepSeek-V2-Lite-shaped deepseek2 GGUF with random Q4_0 weights (the MLA benchmark file).

27 layers, n_embd 2048, 16 heads (qk_nope 128, rope 64, v 128), kv_lora 512, no q_lora, 64 routed experts
(6 used) + 2 shared of FFN 1408, one leading dense layer of FFN 10944, vocab 102400, YaRN as V2-Lite.
Random Q4_0 blocks are streamed straight to disk (about 9 GB, a minute or two); mainline MLA convention
(attn_k_b/attn_v_b) so llama.cpp runs its MLA path. Imports numpy, gguf and tools/synthetic only.
Usage: `python tools/make_dsv2lite_model.py [-o models/dsv2lite-q4_0.gguf] [--layers N]`.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

import gguf
from gguf import GGMLQuantizationType as QT

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import synthetic  # noqa: E402
from pyrt.io.mapping import drop_from_page_cache  # noqa: E402

ARCH = "deepseek2"
DIMS = dict(n_layer=27, n_embd=2048, n_head=16, kv_lora_rank=512, qk_nope=128, qk_rope=64, v_head=128,
            n_expert=64, n_expert_used=6, n_expert_shared=2, n_ff_exp=1408, n_ff=10944, n_dense=1,
            n_vocab=102400, n_ctx=163840)
WEIGHT_STD = 0.02


def vocab(n_vocab: int):
    """A byte-level BPE vocab of n_vocab tokens: the toy BPE of tools/synthetic plus plain filler tokens."""
    tokens, merges, _ = synthetic.gpt2_vocab(4096)
    specials = list(synthetic.GPT2_SPECIALS)
    base = [t for t in tokens if t not in specials]
    filler = [f"\u0120w{i}" for i in range(n_vocab - len(base) - len(specials))]
    toks = base + filler + specials
    types = [1] * (len(toks) - len(specials)) + [3] * len(specials)
    return toks, merges, types


def tensor_list(d: dict):
    """(name, numpy shape, type) in file order."""
    E, H, C, R, Dn, Dv = d["n_embd"], d["n_head"], d["kv_lora_rank"], d["qk_rope"], d["qk_nope"], d["v_head"]
    X, F, S = d["n_expert"], d["n_ff_exp"], d["n_ff_exp"] * d["n_expert_shared"]
    out = [("token_embd.weight", (d["n_vocab"], E), QT.Q4_0)]
    for il in range(d["n_layer"]):
        p = f"blk.{il}."
        out += [(p + "attn_norm.weight", (E,), QT.F32),
                (p + "attn_q.weight", (H * (Dn + R), E), QT.Q4_0),
                (p + "attn_kv_a_mqa.weight", (C + R, E), QT.Q4_0),
                (p + "attn_kv_a_norm.weight", (C,), QT.F32),
                (p + "attn_k_b.weight", (H, C, Dn), QT.Q4_0),
                (p + "attn_v_b.weight", (H, Dv, C), QT.Q4_0),
                (p + "attn_output.weight", (E, H * Dv), QT.Q4_0),
                (p + "ffn_norm.weight", (E,), QT.F32)]
        if il < d["n_dense"]:
            out += [(p + "ffn_gate.weight", (d["n_ff"], E), QT.Q4_0), (p + "ffn_up.weight", (d["n_ff"], E), QT.Q4_0),
                    (p + "ffn_down.weight", (E, d["n_ff"]), QT.Q4_0)]
        else:
            out += [(p + "ffn_gate_inp.weight", (X, E), QT.F32),
                    (p + "ffn_gate_exps.weight", (X, F, E), QT.Q4_0), (p + "ffn_up_exps.weight", (X, F, E), QT.Q4_0),
                    (p + "ffn_down_exps.weight", (X, E, F), QT.Q4_0),
                    (p + "ffn_gate_shexp.weight", (S, E), QT.Q4_0), (p + "ffn_up_shexp.weight", (S, E), QT.Q4_0),
                    (p + "ffn_down_shexp.weight", (E, S), QT.Q4_0)]
    out += [("output_norm.weight", (E,), QT.F32), ("output.weight", (d["n_vocab"], E), QT.Q4_0)]
    return out


def _q4_0_random(rng, shape) -> np.ndarray:
    """Random Q4_0 blocks: [..., n/32*18] uint8 with f16 d ~ WEIGHT_STD/4.6 (so values have std ~WEIGHT_STD)."""
    nb = int(np.prod(shape[:-1])) * (shape[-1] // 32)
    blk = np.frombuffer(rng.bytes(nb * 18), dtype=np.uint8).reshape(nb, 18).copy()
    d = (WEIGHT_STD / 4.6 * (0.75 + 0.5 * rng.random(nb, dtype=np.float32))).astype(np.float16)
    blk[:, 0:2] = d.view(np.uint8).reshape(nb, 2)
    return blk.reshape(tuple(shape[:-1]) + (shape[-1] // 32 * 18,))


def _f32_random(rng, name, shape) -> np.ndarray:
    if name.endswith("norm.weight"):
        return (1.0 + 0.05 * rng.standard_normal(shape)).astype(np.float32)
    return (WEIGHT_STD * rng.standard_normal(shape)).astype(np.float32)


def write(path: str, seed: int = 0, **over) -> dict:
    d = dict(DIMS)
    d.update(over)
    a = lambda k: f"{ARCH}.{k}"  # noqa: E731
    w = gguf.GGUFWriter(path, ARCH)
    w.add_name("pyrt-bench-deepseek-v2-lite-shaped-q4_0")
    w.add_block_count(d["n_layer"])
    w.add_context_length(d["n_ctx"])
    w.add_embedding_length(d["n_embd"])
    w.add_feed_forward_length(d["n_ff"])
    w.add_head_count(d["n_head"])
    w.add_head_count_kv(1)  # mainline MLA header
    w.add_key_length(d["kv_lora_rank"] + d["qk_rope"])
    w.add_value_length(d["kv_lora_rank"])
    w.add_uint32(a("attention.key_length_mla"), d["qk_nope"] + d["qk_rope"])
    w.add_uint32(a("attention.value_length_mla"), d["v_head"])
    w.add_layer_norm_rms_eps(1e-6)
    w.add_rope_freq_base(10000.0)
    w.add_rope_dimension_count(d["qk_rope"])
    w.add_string(a("rope.scaling.type"), "yarn")
    w.add_float32(a("rope.scaling.factor"), 40.0)
    w.add_uint32(a("rope.scaling.original_context_length"), 4096)
    w.add_float32(a("rope.scaling.yarn_log_multiplier"), 0.0707)
    w.add_uint32(a("attention.q_lora_rank"), 0)  # Lite: no q_lora (llama.cpp reads the key unless n_layer is 26/27)
    w.add_uint32(a("attention.kv_lora_rank"), d["kv_lora_rank"])
    w.add_uint32(a("leading_dense_block_count"), d["n_dense"])
    w.add_uint32(a("expert_feed_forward_length"), d["n_ff_exp"])
    w.add_uint32(a("expert_count"), d["n_expert"])
    w.add_uint32(a("expert_used_count"), d["n_expert_used"])
    w.add_uint32(a("expert_shared_count"), d["n_expert_shared"])
    w.add_float32(a("expert_weights_scale"), 1.0)
    w.add_bool(a("expert_weights_norm"), False)
    w.add_uint32(a("expert_gating_func"), 1)
    w.add_vocab_size(d["n_vocab"])
    w.add_file_type(int(gguf.LlamaFileType.MOSTLY_Q4_0))
    toks, merges, types = vocab(d["n_vocab"])
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("qwen2")
    w.add_token_list(toks)
    w.add_token_types(types)
    w.add_token_merges(merges)
    w.add_bos_token_id(d["n_vocab"] - 3)
    w.add_eos_token_id(d["n_vocab"] - 1)
    w.add_add_bos_token(False)
    tl = tensor_list(d)
    for name, shape, ty in tl:
        if ty == QT.Q4_0:
            nbytes = int(np.prod(shape[:-1])) * shape[-1] // 32 * 18
            w.add_tensor_info(name, tuple(shape[:-1]) + (shape[-1] // 32 * 18,), np.dtype(np.uint8), nbytes,
                              raw_dtype=QT.Q4_0)
        else:
            w.add_tensor_info(name, shape, np.dtype(np.float32), int(np.prod(shape)) * 4)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    rng = np.random.default_rng(seed)
    for name, shape, ty in tl:
        if ty == QT.Q4_0:  # at most ~120 MB at a time (one expert tensor)
            w.write_tensor_data(_q4_0_random(rng, shape))
        else:
            w.write_tensor_data(_f32_random(rng, name, shape))
    w.close()
    return d


def main(argv=None) -> int:
    here = os.path.dirname(os.path.abspath(__file__))
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-o", "--output", default=os.path.join(here, "..", "models", "dsv2lite-q4_0.gguf"))
    ap.add_argument("--layers", type=int, default=DIMS["n_layer"], help="fewer layers for a quick file")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    t0 = time.perf_counter()
    write(args.output, args.seed, n_layer=args.layers)
    drop_from_page_cache(args.output)  # the first load then reads it back in 2 MiB folios (pyrt.io.mapping)
    print(f"{args.output}: {os.path.getsize(args.output) / 2**30:.2f} GiB in {time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
