"""Write a DeepSeek-V2-Lite-shaped deepseek2 GGUF with random weights (the MLA benchmark file).

27 layers, n_embd 2048, 16 heads (qk_nope 128, rope 64, v 128), kv_lora 512, no q_lora, 64 routed experts
(6 used) + 2 shared of FFN 1408, one leading dense layer of FFN 10944, vocab 102400, YaRN as V2-Lite.
Two weight mixes (--mix): q4_0, every matrix Q4_0 (8.2 GiB, the benchmark file), and q4_k_m, each tensor the
type llama.cpp's Q4_K_M recipe gives it (Q4_K / Q6_K, Q5_0 / Q8_0 where a row is not a multiple of 256: the
K-quant mix of downloaded DeepSeek files, 9.65 GiB; the table is at q4_k_m_type). Random blocks are
written straight as bytes (no float quantization), tensor by tensor (a minute or two); values have std
~WEIGHT_STD whatever the type. Mainline MLA convention (attn_k_b/attn_v_b) so llama.cpp runs its MLA path.
Imports numpy, gguf, tools/synthetic and pyrt.io.mapping (to drop the written file from the page cache) only.
Usage: `python tools/make_dsv2lite_model.py [--mix q4_0|q4_k_m] [-o models/dsv2lite-<mix>.gguf] [--layers N]`.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

import gguf
from gguf import GGMLQuantizationType as QT
from gguf.constants import GGML_QUANT_SIZES
from gguf.quants import quant_shape_to_byte_shape

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


MIXES = {"q4_0": gguf.LlamaFileType.MOSTLY_Q4_0, "q4_k_m": gguf.LlamaFileType.MOSTLY_Q4_K_M}


def _shapes(d: dict):
    """(name, numpy shape) in file order."""
    E, H, C, R, Dn, Dv = d["n_embd"], d["n_head"], d["kv_lora_rank"], d["qk_rope"], d["qk_nope"], d["v_head"]
    X, F, S = d["n_expert"], d["n_ff_exp"], d["n_ff_exp"] * d["n_expert_shared"]
    out = [("token_embd.weight", (d["n_vocab"], E))]
    for il in range(d["n_layer"]):
        p = f"blk.{il}."
        out += [(p + "attn_norm.weight", (E,)),
                (p + "attn_q.weight", (H * (Dn + R), E)),
                (p + "attn_kv_a_mqa.weight", (C + R, E)),
                (p + "attn_kv_a_norm.weight", (C,)),
                (p + "attn_k_b.weight", (H, C, Dn)),
                (p + "attn_v_b.weight", (H, Dv, C)),
                (p + "attn_output.weight", (E, H * Dv)),
                (p + "ffn_norm.weight", (E,))]
        if il < d["n_dense"]:
            out += [(p + "ffn_gate.weight", (d["n_ff"], E)), (p + "ffn_up.weight", (d["n_ff"], E)),
                    (p + "ffn_down.weight", (E, d["n_ff"]))]
        else:
            out += [(p + "ffn_gate_inp.weight", (X, E)),
                    (p + "ffn_gate_exps.weight", (X, F, E)), (p + "ffn_up_exps.weight", (X, F, E)),
                    (p + "ffn_down_exps.weight", (X, E, F)),
                    (p + "ffn_gate_shexp.weight", (S, E)), (p + "ffn_up_shexp.weight", (S, E)),
                    (p + "ffn_down_shexp.weight", (E, S))]
    out += [("output_norm.weight", (E,)), ("output.weight", (d["n_vocab"], E))]
    return out


def stays_f32(name: str, shape) -> bool:
    """Tensors no llama.cpp mix quantizes (tensor_allows_quantization): 1-D, *_norm.weight, ffn_gate_inp."""
    return len(shape) < 2 or "_norm.weight" in name or "ffn_gate_inp.weight" in name


def use_more_bits(i_layer: int, n_layer: int) -> bool:
    """llama.cpp's layers for the bigger type: the first and the last eighth, and every third one between."""
    return i_layer < n_layer // 8 or i_layer >= 7 * n_layer // 8 or (i_layer - n_layer // 8) % 3 == 2


# llama.cpp's type when a row (ne0: the numpy shape's last axis) is not a multiple of the type's block
# (tensor_type_fallback); F16 when the row does not fit the fallback's 32-value block either.
K_FALLBACK = {QT.Q4_K: QT.Q5_0, QT.Q5_K: QT.Q5_1, QT.Q6_K: QT.Q8_0}


def q4_k_m_type(name: str, ne0: int, n_layer: int) -> QT:
    """The type LLAMA_FTYPE_MOSTLY_Q4_K_M gives this deepseek2 tensor (one that is quantized: see stays_f32).

    Facts from llama.cpp src/llama-quant.cpp (ggml-org/llama.cpp at 007dbbf3): llama_tensor_get_type,
    llama_tensor_get_type_impl, tensor_get_category, tensor_type_fallback, llama_ftype_get_default_type,
    init_quantize_state_counters, tensor_allows_quantization.
      default    Q4_K_M's default type is Q4_K; every tensor below without another rule gets it.
      output     output.weight -> Q6_K (Q8_0 if ne0 % 256 != 0).
      token_embd no Q4_K_M rule (the embeddings are untied: output.weight exists) -> Q4_K.
      ffn_down   any name containing "ffn_down" (dense, _exps, _shexp): Q6_K where use_more_bits(i_layer,
                 n_layer), else Q4_K. With n_expert > 1, i_layer is parsed from the name ("blk.%d.") and
                 n_layer is n_ffn_down = hparams.n_layer_all, so a layer's _exps and _shexp share its layer.
      attn_v     the attn_v-like rule (Q6_K where use_more_bits(i_attention_wv, n_attention_wv)) matches only
                 "attn_v.weight", "attn_qkv.weight", "attn_kv_b.weight": attn_v_b and attn_k_b are not
                 matched and this file has no attn_kv_b, so n_attention_wv = 0 and no tensor takes it.
      attn_output bumped (to Q5_K) under Q4_K_M only when n_expert == 8 -> Q4_K here.
      MoE        the n_expert == 8 rules (attn_v/attn_k -> Q8_0, attn_output -> Q5_K) and the n_expert >= 4
                 attn_v rule (IQ1/IQ2 mixes only) do not apply (n_expert 64); experts are quantized like
                 the 2-D tensors, each expert matrix in turn.
      fallback   ne0 % 256 != 0: Q4_K -> Q5_0, Q6_K -> Q8_0 (Q5_K -> Q5_1); F16 if ne0 % 32 != 0 too.
      F32        norms, ffn_gate_inp and 1-D tensors are not quantized (F32 as converted).
      file type  general.file_type = MOSTLY_Q4_K_M (15).
    The V2-Lite table (27 layers: use_more_bits picks layers 0 1 2 5 8 11 14 17 20 23 24 25 26):
      token_embd                    ne0 2048    Q4_K  default
      output                        ne0 2048    Q6_K  output rule
      attn_q, attn_kv_a_mqa         ne0 2048    Q4_K  default
      attn_k_b                      ne0 128     Q5_0  default Q4_K falls back (128 % 256)
      attn_v_b                      ne0 512     Q4_K  default (not an attn_v-like name)
      attn_output                   ne0 2048    Q4_K  default (n_expert != 8)
      ffn_gate/up (+_exps, _shexp)  ne0 2048    Q4_K  default
      blk.0.ffn_down (dense)        ne0 10944   Q8_0  layer 0 more bits: Q6_K falls back (10944 % 256 = 192)
      ffn_down_exps                 ne0 1408    Q8_0 on the more-bits layers (Q6_K falls back), else Q5_0
                                                      (Q4_K falls back): 1408 % 256 = 128
      ffn_down_shexp                ne0 2816    Q6_K on the more-bits layers, else Q4_K
      *_norm, ffn_gate_inp                      F32   not quantized
    """
    if name == "output.weight":
        return QT.Q6_K if ne0 % 256 == 0 else QT.Q8_0
    ty = QT.Q4_K
    if "ffn_down" in name and use_more_bits(int(name.split(".")[1]), n_layer):
        ty = QT.Q6_K
    if ne0 % GGML_QUANT_SIZES[ty][0]:
        ty = K_FALLBACK[ty]
        if ne0 % GGML_QUANT_SIZES[ty][0]:
            ty = QT.F16
    return ty


def tensor_list(d: dict, mix: str = "q4_0"):
    """(name, numpy shape, type) in file order."""
    if mix not in MIXES:
        raise ValueError(f"unknown mix {mix!r} (known: {', '.join(MIXES)})")
    out = []
    for name, shape in _shapes(d):
        if stays_f32(name, shape):
            ty = QT.F32
        elif mix == "q4_0":
            ty = QT.Q4_0
        else:
            ty = q4_k_m_type(name, shape[-1], d["n_layer"])
        out.append((name, shape, ty))
    return out


def _q4_0_random(rng, shape) -> np.ndarray:
    """Random Q4_0 blocks: [..., n/32*18] uint8 with f16 d ~ WEIGHT_STD/4.6 (so values have std ~WEIGHT_STD)."""
    nb = int(np.prod(shape[:-1])) * (shape[-1] // 32)
    blk = np.frombuffer(rng.bytes(nb * 18), dtype=np.uint8).reshape(nb, 18).copy()
    d = (WEIGHT_STD / 4.6 * (0.75 + 0.5 * rng.random(nb, dtype=np.float32))).astype(np.float16)
    blk[:, 0:2] = d.view(np.uint8).reshape(nb, 2)
    return blk.reshape(tuple(shape[:-1]) + (shape[-1] // 32 * 18,))


# The other quantized types: uniform random codes, sub-block scales drawn in the range a quantizer gives them,
# mins that centre each sub-block, and an f16 super-block scale d = WEIGHT_STD / (rms code * rms scale), times
# a per-block U(0.75, 1.25) jitter as in Q4_0, so values have mean ~0 and std ~WEIGHT_STD (tests check this
# with gguf.quants.dequantize). Q6_K's d (~1.1e-5) is an f16 subnormal, as in real Q6_K files.
def _rms(lo: int, hi: int) -> float:
    """Root mean square of the integers lo..hi, equally likely."""
    k = np.arange(lo, hi + 1, dtype=np.float64)
    return float(np.sqrt((k * k).mean()))


_JITTER_RMS = float(np.sqrt(1.0 + 1.0 / 48.0))
_KSC = (32, 63)  # Q4_K/Q5_K 6-bit sub-block scales
_Q6SC = (64, 127)  # |Q6_K int8 sub-block scale|, random sign
_D = {QT.Q4_K: WEIGHT_STD / (np.sqrt((16 ** 2 - 1) / 12) * _rms(*_KSC) * _JITTER_RMS),  # code q - 7.5
      QT.Q5_K: WEIGHT_STD / (np.sqrt((32 ** 2 - 1) / 12) * _rms(*_KSC) * _JITTER_RMS),  # code q - 15.5
      QT.Q6_K: WEIGHT_STD / (_rms(-32, 31) * _rms(*_Q6SC) * _JITTER_RMS),
      QT.Q8_0: WEIGHT_STD / (_rms(-127, 127) * _JITTER_RMS),
      QT.Q5_0: WEIGHT_STD / (_rms(-16, 15) * _JITTER_RMS)}
CHUNK_BLOCKS = 1 << 16  # blocks made at a time (~14 MB of temporaries at most)


def _f16_bytes(x) -> np.ndarray:
    return np.asarray(x, np.float32).astype(np.float16).view(np.uint8).reshape(-1, 2)


def _d(rng, ty, n) -> np.ndarray:
    return _D[ty] * (0.75 + 0.5 * rng.random(n, dtype=np.float32))


def _pack_k4_scales(sc, m) -> np.ndarray:
    """8 6-bit scales and 8 6-bit mins into the 12 bytes ggml reads with get_scale_min_k4."""
    out = np.empty((len(sc), 12), np.uint8)
    out[:, 0:4] = (sc[:, :4] & 63) | ((sc[:, 4:] >> 4) << 6)
    out[:, 4:8] = (m[:, :4] & 63) | ((m[:, 4:] >> 4) << 6)
    out[:, 8:12] = (sc[:, 4:] & 15) | ((m[:, 4:] & 15) << 4)
    return out


def _fill_kmin(rng, blk, ty, half_code: float) -> None:
    """Q4_K/Q5_K: x = d*sc*q - dmin*m with dmin = 2^k d and m = round(sc*half_code / 2^k), so x ~ d*sc*(q - half)."""
    n = len(blk)
    k = 8.0 if ty == QT.Q4_K else 16.0
    sc = rng.integers(_KSC[0], _KSC[1] + 1, (n, 8), dtype=np.uint8)
    m = np.rint(sc * (half_code / k)).astype(np.uint8)  # <= 63
    d = _d(rng, ty, n)
    blk[:, 0:2] = _f16_bytes(d)
    blk[:, 2:4] = _f16_bytes(d * k)
    blk[:, 4:16] = _pack_k4_scales(sc, m)


def _fill(rng, ty, blk) -> None:
    """Random blocks of type ty into blk [n, type_size] uint8 (in place)."""
    n = len(blk)
    blk[:] = np.frombuffer(rng.bytes(blk.size), np.uint8).reshape(blk.shape)  # the codes: uniform bits
    if ty == QT.Q4_K:  # f16 d, f16 dmin, scales[12], qs[128]
        _fill_kmin(rng, blk, ty, 7.5)
    elif ty == QT.Q5_K:  # f16 d, f16 dmin, scales[12], qh[32], qs[128]
        _fill_kmin(rng, blk, ty, 15.5)
    elif ty == QT.Q6_K:  # ql[128], qh[64], i8 scales[16], f16 d; x = d*sc*(q - 32)
        sc = rng.integers(_Q6SC[0], _Q6SC[1] + 1, (n, 16), dtype=np.int16)
        sc *= np.where(rng.random((n, 16), dtype=np.float32) < 0.5, -1, 1).astype(np.int16)
        blk[:, 192:208] = sc.astype(np.int8).view(np.uint8)
        blk[:, 208:210] = _f16_bytes(_d(rng, ty, n))
    elif ty == QT.Q8_0:  # f16 d, i8 qs[32]: -128 -> -127 as a quantizer never writes -128
        q = blk[:, 2:34]
        q[q == 128] = 129
        blk[:, 0:2] = _f16_bytes(_d(rng, ty, n))
    elif ty == QT.Q5_0:  # f16 d, u32 qh, u8 qs[16]; x = d*(q - 16)
        blk[:, 0:2] = _f16_bytes(_d(rng, ty, n))
    else:
        raise ValueError(f"no random block writer for {ty.name}")


def quant_random(rng, ty, shape) -> np.ndarray:
    """Random blocks of a quantized type for a tensor of numpy shape `shape` ([..., row bytes] uint8)."""
    if ty == QT.Q4_0:
        return _q4_0_random(rng, shape)
    bs, ts = GGML_QUANT_SIZES[ty]
    nb = int(np.prod(shape)) // bs
    out = np.empty((nb, ts), np.uint8)
    for s in range(0, nb, CHUNK_BLOCKS):
        _fill(rng, ty, out[s:s + CHUNK_BLOCKS])
    return out.reshape(quant_shape_to_byte_shape(shape, ty))


def _f32_random(rng, name, shape) -> np.ndarray:
    if name.endswith("norm.weight"):
        return (1.0 + 0.05 * rng.standard_normal(shape)).astype(np.float32)
    return (WEIGHT_STD * rng.standard_normal(shape)).astype(np.float32)


def _tensor_info(w, name, shape, ty) -> None:
    if ty == QT.F32:
        w.add_tensor_info(name, shape, np.dtype(np.float32), int(np.prod(shape)) * 4)
    else:
        byte_shape = quant_shape_to_byte_shape(shape, ty)
        w.add_tensor_info(name, byte_shape, np.dtype(np.uint8), int(np.prod(byte_shape)), raw_dtype=ty)


def write(path: str, seed: int = 0, mix: str = "q4_0", **over) -> dict:
    """Writes the file with dims DIMS updated by `over` and the weight mix; returns the dims."""
    d = dict(DIMS)
    d.update(over)
    tl = tensor_list(d, mix)
    a = lambda k: f"{ARCH}.{k}"  # noqa: E731
    w = gguf.GGUFWriter(path, ARCH)
    w.add_name(f"pyrt-bench-deepseek-v2-lite-shaped-{mix}")
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
    w.add_file_type(int(MIXES[mix]))
    toks, merges, types = vocab(d["n_vocab"])
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("qwen2")
    w.add_token_list(toks)
    w.add_token_types(types)
    w.add_token_merges(merges)
    w.add_bos_token_id(d["n_vocab"] - 3)
    w.add_eos_token_id(d["n_vocab"] - 1)
    w.add_add_bos_token(False)
    for name, shape, ty in tl:
        _tensor_info(w, name, shape, ty)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    rng = np.random.default_rng(seed)
    for name, shape, ty in tl:  # one tensor at a time: at most one expert tensor (~150 MB)
        w.write_tensor_data(_f32_random(rng, name, shape) if ty == QT.F32 else quant_random(rng, ty, shape))
    w.close()
    return d


def main(argv=None) -> int:
    here = os.path.dirname(os.path.abspath(__file__))
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mix", choices=list(MIXES), default="q4_0",
                    help="q4_0: every matrix Q4_0; q4_k_m: llama.cpp's Q4_K_M types (see q4_k_m_type)")
    ap.add_argument("-o", "--output", default=None, help="default models/dsv2lite-<mix>.gguf")
    ap.add_argument("--layers", type=int, default=DIMS["n_layer"], help="fewer layers for a quick file")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if args.output is None:
        args.output = os.path.join(here, "..", "models", f"dsv2lite-{args.mix}.gguf")
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    t0 = time.perf_counter()
    write(args.output, args.seed, args.mix, n_layer=args.layers)
    drop_from_page_cache(args.output)  # the first load then reads it back in 2 MiB folios (pyrt.io.mapping)
    print(f"{args.output}: {os.path.getsize(args.output) / 2**30:.2f} GiB in {time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
