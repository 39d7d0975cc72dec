"""`deepseek2`: multi-head latent attention (MLA) with a K-only latent cache, MoE FFN, YaRN RoPE.

Semantics follow llama.cpp's deepseek2 graph (the logits oracle); the attention modes follow
ik_llama.cpp (-mla 0..3, see pyrt.ops.mla). Loads all three GGUF conventions: attn_kv_b only,
attn_k_b + attn_v_b only (mainline MLA files: head_count_kv = 1, key/value_length_mla), or all three.
Imports ops, io and models.base only; the cache is reached through `ForwardInputs.kv`.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
from gguf import GGMLQuantizationType as T

from ..errors import InvalidArgumentError, ModelFileError, UnsupportedError
from ..formats.qtypes import DOT_TYPES
from ..io.gguf_file import GGUFFile, Weight
from ..ops import basic, mla, moe, paths
from ..ops import matmul as mm
from ..ops.attention import BLAS_MIN_TOKENS as ATTN_BLAS_MIN_TOKENS
from ..ops.attention import attention_matrix, flash_attn_rows
from .base import ForwardInputs, HParams, Linear, ModelBase, TensorTable, adjacent_rows, linear_multi

FLOAT_TYPES = (int(T.F32), int(T.F16), int(T.BF16))


# the thread's scratch buffers (ops.matmul.scratch) of the decompressed prompt attention: kv_b's output, the rows
_DECOMPRESSED_SCRATCH = ("mla_kv", "mla_rows")


class _Raw:
    """A weight-like (raw rows + type) built at load time (derived k_b / kv_b)."""

    __slots__ = ("raw", "ggml_type")

    def __init__(self, raw: np.ndarray, ggml_type: int):
        raw.flags.writeable = False
        self.raw, self.ggml_type = raw, int(ggml_type)


def _encode_rows(x: np.ndarray, ggml_type: int) -> _Raw:
    """f32 rows [n, m] -> raw rows in ggml_type (F32, F16, BF16 or Q8_0)."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    if ggml_type == T.F32:
        return _Raw(x.view(np.uint8).reshape(x.shape[0], -1), T.F32)
    if ggml_type == T.F16:
        return _Raw(x.astype(np.float16).view(np.uint8).reshape(x.shape[0], -1), T.F16)
    if ggml_type == T.BF16:  # the values came from bf16: truncation is exact
        return _Raw((x.view(np.uint32) >> np.uint32(16)).astype(np.uint16).view(np.uint8).reshape(x.shape[0], -1),
                    T.BF16)
    q = DOT_TYPES["Q8_0"]
    out = np.empty((x.shape[0], q.row_bytes(x.shape[1])), np.uint8)
    q.kernel("quantize_rows")(out, x)
    return _Raw(out, T.Q8_0)


@dataclass(slots=True)
class HeadRows:
    """A per-head weight as stacked raw rows (MLA's W_UK^T and W_UV): head h's n rows start at row0[h]."""

    raw: np.ndarray            # [rows, row bytes] uint8, read-only: every head's rows
    ggml_type: int
    row0: np.ndarray           # [n_head] int64: each head's first row in raw
    heads: list[np.ndarray]    # n_head views [n, row bytes] of raw: each head's rows

    @classmethod
    def of(cls, raw: np.ndarray, ggml_type: int, row0: np.ndarray, n: int) -> HeadRows:
        return cls(raw, int(ggml_type), row0, [raw[r:r + n] for r in row0])


# Shapes below: H heads, C = kv_lora_rank, R = n_rot, Dn = qk_nope, Dk = Dn + R, Dv = v_head. A Linear's or
# Weight's is its logical shape, numpy order ([out, in]); its .raw holds the rows as bytes.
@dataclass(slots=True)
class MLAAttention:
    """One layer's multi-head latent attention: x += output(MLA(rms_norm(x) * norm))."""

    norm: np.ndarray                   # [n_embd] f32: attn_norm
    q: Linear | None                   # attn_q [H*Dk, n_embd]; None with q_lora (q_a, q_a_norm, q_b instead)
    q_a: Linear | None                 # attn_q_a [q_lora_rank, n_embd]; None without q_lora
    q_a_norm: np.ndarray | None        # [q_lora_rank] f32; None without q_lora
    q_b: Linear | None                 # attn_q_b [H*Dk, q_lora_rank]; None without q_lora
    kv_a_mqa: Linear                   # attn_kv_a_mqa [C + R, n_embd]: [c_kv | k_pe] per token
    kv_a_norm: np.ndarray              # [C] f32
    kv_b: Weight | _Raw                # attn_kv_b [H*(Dn + Dv), C]: per head [W_UK; W_UV] (rebuilt when absent)
    k_b: HeadRows                      # W_UK^T [H*C, Dn]: head h's [C, Dn] (attn_k_b, or derived from kv_b)
    v_b: HeadRows                      # W_UV: head h's [Dv, C] (attn_v_b [H*Dv, C], or read in place in kv_b)
    absorbed: mla.AbsorbedWeights      # k_b and v_b for the absorbed attention of a ubatch
    decode: mla.MLADecode | None       # one token's W_UK, FlashMLA, W_UV in one call; None: three calls
    output: Linear                     # attn_output [n_embd, H*Dv]
    block: mla.MLABlockDecode | None   # one decoded token's whole attention block in one call; None: op by op


@dataclass(slots=True)
class DenseFFN:
    """A leading dense layer's FFN: x += down(swiglu(gate(h), up(h))), h = rms_norm(x) * norm."""

    norm: np.ndarray   # [n_embd] f32: ffn_norm
    gate: Linear       # ffn_gate [n_ff, n_embd]
    up: Linear         # ffn_up [n_ff, n_embd]
    down: Linear       # ffn_down [n_embd, n_ff]


@dataclass(slots=True)
class MoEFFN:
    """A MoE layer's FFN: x += the n_expert_used routed experts' weighted sum + the shared experts, of
    h = rms_norm(x) * norm."""

    norm: np.ndarray                  # [n_embd] f32: ffn_norm
    gate_inp: Linear                  # ffn_gate_inp [n_expert, n_embd]: the router
    exp_probs_b: np.ndarray | None    # [n_expert] f32: the selection bias, or None
    gate_exps: Weight                 # ffn_gate_exps [n_expert, n_ff_exp, n_embd]
    up_exps: Weight                   # ffn_up_exps [n_expert, n_ff_exp, n_embd]
    down_exps: Weight                 # ffn_down_exps [n_expert, n_embd, n_ff_exp]
    gate_up_exps: np.ndarray | None   # [2*n_expert*n_ff_exp, row bytes] uint8: gate, up adjacent as one view, or None
    gate_shexp: Linear                # ffn_gate_shexp [n_ff_exp*n_expert_shared, n_embd]
    up_shexp: Linear                  # ffn_up_shexp [n_ff_exp*n_expert_shared, n_embd]
    down_shexp: Linear                # ffn_down_shexp [n_embd, n_ff_exp*n_expert_shared]
    decode: moe.MoEDecode | None      # one token's FFN (router, experts, shared experts) in one call; None: op by op


@dataclass(slots=True)
class DeepSeek2Layer:
    """One block: the attention, then the FFN, each with its own pre-norm and residual add."""

    attn: MLAAttention
    ffn: DenseFFN | MoEFFN


class DeepSeek2Model(ModelBase):
    """One instance per loaded file; weights stay views into the map (derived MLA tensors are small copies)."""

    ARCHS = {"deepseek2": basic.ROPE_NORM}
    DEVICES = ("cpu", "cuda")  # modes 1-3: the absorbed attention and the routed MoE have device kernels
    is_mla = True

    def __init__(self, f: GGUFFile):
        self._read_hparams(f)
        hp = self.hp
        t = TensorTable(f)
        self.token_embd = t.get("token_embd.weight", (hp.n_vocab, hp.n_embd))
        self.output_norm = t.vector("output_norm.weight", hp.n_embd)
        out = t.get("output.weight", (hp.n_vocab, hp.n_embd), required=False)
        self.output = Linear(out if out is not None else self.token_embd)
        self.derive_seconds = 0.0
        self.layers = [DeepSeek2Layer(self._load_attention(t, f, il), self._load_ffn(t, il))
                       for il in range(hp.n_layer)]

    def _load_attention(self, t: TensorTable, f: GGUFFile, il: int) -> MLAAttention:
        """Layer il's attention; derives W_UK^T or attn_kv_b where the file lacks it (timed in derive_seconds)."""
        hp, ex = self.hp, self.hp.extra
        H, C, R, Dn, Dv = hp.n_head, ex["kv_lora_rank"], hp.n_rot, ex["n_embd_head_qk_nope"], hp.n_embd_head_v
        Dk = hp.n_embd_head_k
        p = f"blk.{il}."
        norm = t.vector(p + "attn_norm.weight", hp.n_embd)
        q = q_a = q_a_norm = q_b = None
        if ex["q_lora_rank"] > 0:
            q_a = t.linear(p + "attn_q_a", ex["q_lora_rank"], hp.n_embd)
            q_a_norm = t.vector(p + "attn_q_a_norm.weight", ex["q_lora_rank"])
            q_b = t.linear(p + "attn_q_b", H * Dk, ex["q_lora_rank"])
        else:
            q = t.linear(p + "attn_q", H * Dk, hp.n_embd)
        kv_a_mqa = t.linear(p + "attn_kv_a_mqa", C + R, hp.n_embd)
        kv_a_norm = t.vector(p + "attn_kv_a_norm.weight", C)
        kv_b = t.get(p + "attn_kv_b.weight", (H * (Dn + Dv), C), required=False)
        k_b = self._get_any(t, f, p + "attn_k_b.weight", [(H, C, Dn), (H * C, Dn)])
        v_b = self._get_any(t, f, p + "attn_v_b.weight", [(H, Dv, C), (H * Dv, C)])
        if kv_b is None and (k_b is None or v_b is None):
            raise ModelFileError(f"{f.path}: layer {il} has neither attn_kv_b nor attn_k_b + attn_v_b")
        t0 = time.perf_counter()
        if k_b is None:  # legacy file: derive W_UK^T per head (ik's llm_prepare_mla)
            w = mm.dequantize(kv_b.raw, kv_b.ggml_type, C).reshape(H, Dn + Dv, C)
            kt = np.ascontiguousarray(w[:, :Dn, :].transpose(0, 2, 1)).reshape(H * C, Dn)  # [H*C, Dn]
            ty = kv_b.ggml_type if kv_b.ggml_type in FLOAT_TYPES else (T.Q8_0 if Dn % 32 == 0 else T.F32)
            k_b = _encode_rows(kt, ty)
        if kv_b is None:  # mainline MLA file: rebuild kv_b for the decompressing paths (llm_compute_wkv_b)
            wk = mm.dequantize(k_b.raw, k_b.ggml_type, Dn).reshape(H, C, Dn).transpose(0, 2, 1)
            wv = mm.dequantize(v_b.raw, v_b.ggml_type, C).reshape(H, Dv, C)
            both = np.concatenate([wk, wv], axis=1).reshape(H * (Dn + Dv), C)
            ty = k_b.ggml_type if k_b.ggml_type == v_b.ggml_type and k_b.ggml_type in FLOAT_TYPES else T.Q8_0
            kv_b = _encode_rows(both, ty if (ty != T.Q8_0 or C % 32 == 0) else T.F32)
        self.derive_seconds += time.perf_counter() - t0
        heads = np.arange(H, dtype=np.int64)
        w_uk = HeadRows.of(k_b.raw, k_b.ggml_type, heads * C, C)
        if v_b is None:  # W_UV rows of each head, in place inside attn_kv_b: no copy, no requantization
            w_uv = HeadRows.of(kv_b.raw, kv_b.ggml_type, heads * (Dn + Dv) + Dn, Dv)
        else:
            w_uv = HeadRows.of(v_b.raw, v_b.ggml_type, heads * Dv, Dv)
        absorbed = mla.AbsorbedWeights(w_uk.raw, w_uk.ggml_type, w_uk.row0, w_uk.heads, w_uv.raw, w_uv.ggml_type,
                                       w_uv.row0, w_uv.heads, C, Dv)
        decode = mla.MLADecode.build(w_uk.raw, w_uk.ggml_type, w_uv.raw, w_uv.row0, w_uv.ggml_type, H, C, Dn, Dv)
        output = t.linear(p + "attn_output", hp.n_embd, H * Dv)
        q_lin = q if q is not None else q_a
        lins = [q_lin, kv_a_mqa, output] + ([q_b] if q is None else [])
        block = None if any(li.bias is not None for li in lins) else mla.MLABlockDecode.build(
            decode, norm, (q_lin.w.raw, q_lin.w.ggml_type), q_a_norm,
            (q_b.w.raw, q_b.w.ggml_type) if q is None else None, (kv_a_mqa.w.raw, kv_a_mqa.w.ggml_type), kv_a_norm,
            (output.w.raw, output.w.ggml_type), hp.n_embd, R, hp.f_norm_rms_eps)
        return MLAAttention(norm=norm, q=q, q_a=q_a, q_a_norm=q_a_norm, q_b=q_b, kv_a_mqa=kv_a_mqa,
                            kv_a_norm=kv_a_norm, kv_b=kv_b, k_b=w_uk, v_b=w_uv, absorbed=absorbed, decode=decode,
                            output=output, block=block)

    def _load_ffn(self, t: TensorTable, il: int) -> DenseFFN | MoEFFN:
        """Layer il's FFN: dense for the first n_layer_dense_lead layers, MoE after them."""
        hp, ex = self.hp, self.hp.extra
        p = f"blk.{il}."
        norm = t.vector(p + "ffn_norm.weight", hp.n_embd)
        if il < ex["n_layer_dense_lead"]:
            return DenseFFN(norm=norm, gate=t.linear(p + "ffn_gate", hp.n_ff, hp.n_embd),
                            up=t.linear(p + "ffn_up", hp.n_ff, hp.n_embd),
                            down=t.linear(p + "ffn_down", hp.n_embd, hp.n_ff))
        n_ff_exp, n_expert, n_shexp = ex["n_ff_exp"], ex["n_expert"], ex["n_expert_shared"]
        gate_inp = t.linear(p + "ffn_gate_inp", n_expert, hp.n_embd)
        exp_probs_b = t.vector(p + "exp_probs_b.bias", n_expert, required=False)
        gate_exps = t.get(p + "ffn_gate_exps.weight", (n_expert, n_ff_exp, hp.n_embd))
        up_exps = t.get(p + "ffn_up_exps.weight", (n_expert, n_ff_exp, hp.n_embd))
        down_exps = t.get(p + "ffn_down_exps.weight", (n_expert, hp.n_embd, n_ff_exp))
        gate_shexp = t.linear(p + "ffn_gate_shexp", n_ff_exp * n_shexp, hp.n_embd)
        up_shexp = t.linear(p + "ffn_up_shexp", n_ff_exp * n_shexp, hp.n_embd)
        down_shexp = t.linear(p + "ffn_down_shexp", hp.n_embd, n_ff_exp * n_shexp)
        sh = (gate_shexp.w, up_shexp.w, down_shexp.w) if n_shexp > 0 else None
        decode = moe.MoEDecode.build(
            gate_inp.w, exp_probs_b, gate_exps, up_exps, down_exps, sh, n_ff_exp, ex["n_expert_used"],
            ex["expert_gating_func"], ex["expert_weights_norm"], ex["expert_weights_scale"])
        return MoEFFN(norm=norm, gate_inp=gate_inp, exp_probs_b=exp_probs_b, gate_exps=gate_exps, up_exps=up_exps,
                      down_exps=down_exps, gate_up_exps=adjacent_rows(gate_exps.raw, up_exps.raw),
                      gate_shexp=gate_shexp, up_shexp=up_shexp, down_shexp=down_shexp, decode=decode)

    @staticmethod
    def _get_any(t: TensorTable, f: GGUFFile, name: str, shapes):
        w = f.tensors.get(name)
        if w is None:
            return None
        for s in shapes:
            if tuple(w.shape) == s:
                return t.get(name, s)
        raise ModelFileError(f"{f.path}: tensor {name!r} has shape {list(w.shape)}, expected one of {shapes}")

    def _read_hparams(self, f: GGUFFile) -> None:
        arch = f.architecture
        a = lambda k: f"{arch}.{k}"  # noqa: E731

        def num(key, default=None, cast=int):
            v = f.get(a(key), default)
            if v is None:
                raise ModelFileError(f"{f.path}: missing metadata key {a(key)!r}")
            if isinstance(v, np.ndarray):
                if v.size == 0 or np.any(v != v.flat[0]):
                    raise UnsupportedError(f"{f.path}: per-layer {key} values are not supported")
                v = v.flat[0]
            return cast(v)

        n_embd, n_layer, n_head = num("embedding_length"), num("block_count"), num("attention.head_count")
        tokens = f.get("tokenizer.ggml.tokens")
        n_vocab = num("vocab_size", len(tokens) if tokens is not None else 0)
        if f.get(a("attention.key_length_mla")) is not None:  # mainline MLA header (head_count_kv = 1)
            dk, dv = num("attention.key_length_mla"), num("attention.value_length_mla")
        else:
            dk, dv = num("attention.key_length"), num("attention.value_length")
        n_rot = num("rope.dimension_count", dk)
        C = num("attention.kv_lora_rank")
        if n_rot <= 0 or n_rot % 2 or dk <= n_rot or C <= 0 or dv <= 0 or n_head <= 0:
            raise ModelFileError(f"{f.path}: inconsistent MLA dims (key {dk}, value {dv}, rope {n_rot}, "
                                 f"kv_lora {C}, heads {n_head})")
        scaling = f.get(a("rope.scaling.type"), "linear")
        factor = float(f.get(a("rope.scaling.factor"), f.get(a("rope.scale_linear"), 0.0)) or 0.0)
        freq_scale = 1.0 / factor if factor else 1.0
        if scaling == "none":
            freq_scale = 1.0
        elif scaling not in ("linear", "yarn"):
            raise UnsupportedError(f"{f.path}: rope scaling {scaling!r} is not supported for deepseek2")
        ext_factor = 1.0 if scaling == "yarn" else 0.0
        log_mul = float(f.get(a("rope.scaling.yarn_log_multiplier"), 0.0)) / 0.1  # mainline's fix-up
        rope_attn_factor = float(f.get(a("rope.scaling.attn_factor"), 1.0))
        n_ctx_train = num("context_length", 4096)
        n_ctx_orig = num("rope.scaling.original_context_length", n_ctx_train)
        freq_base = float(f.get(a("rope.freq_base"), 10000.0))
        # llama.cpp's cparams.yarn_attn_factor (llama_context ctor), then the graph's kq_scale
        fs = np.float32(freq_scale)
        factor32 = np.float32(1.0) / fs
        attn_factor = np.float32(1.0)
        if ext_factor != 0.0:
            def get_mscale(scale, m):
                return np.float32(1.0) if scale <= 1.0 else np.float32(0.1) * np.float32(m) * np.log(scale) + np.float32(1.0)
            if log_mul != 0.0:
                attn_factor = get_mscale(factor32, log_mul) / get_mscale(factor32, log_mul)
            else:
                attn_factor = get_mscale(factor32, 1.0)
            attn_factor = attn_factor * (np.float32(1.0) / (np.float32(1.0) + np.float32(0.1) * np.log(factor32)))
        attn_factor = np.float32(attn_factor * np.float32(rope_attn_factor))
        attn_factor_org = attn_factor * (np.float32(1.0) + np.float32(0.1) * np.log(np.float32(1.0) / fs))
        mscale = attn_factor_org * (np.float32(1.0) + np.float32(0.1) * np.float32(log_mul) * np.log(np.float32(1.0) / fs))
        self.kq_scale = float(np.float32(mscale * mscale / np.sqrt(np.float32(dk))))
        rope_mscale = attn_factor * ((np.float32(1.0) + np.float32(0.1) * np.log(np.float32(1.0) / fs))
                                     if ext_factor != 0.0 else np.float32(1.0))

        def corr_dim(beta):
            return n_rot * math.log(n_ctx_orig / (beta * 2 * math.pi)) / (2 * math.log(freq_base))
        corr_low = max(0.0, math.floor(corr_dim(32.0)))
        corr_high = min(n_rot - 1.0, math.ceil(corr_dim(1.0)))
        gating = num("expert_gating_func", 0)
        if gating == 0:
            gating = moe.GATING_SIGMOID if n_layer in (47, 48) and n_vocab == 154880 else moe.GATING_SOFTMAX
        n_expert = num("expert_count", 0)
        n_dense = num("leading_dense_block_count", 0)
        if n_dense < n_layer and (n_expert <= 0 or num("expert_used_count", 0) <= 0):
            raise ModelFileError(f"{f.path}: MoE layers need expert_count and expert_used_count > 0")
        extra = dict(
            q_lora_rank=num("attention.q_lora_rank", 0), kv_lora_rank=C, n_embd_head_qk_nope=dk - n_rot,
            n_layer_dense_lead=n_dense, n_ff_exp=num("expert_feed_forward_length", 0), n_expert=n_expert,
            n_expert_used=num("expert_used_count", 0), n_expert_shared=num("expert_shared_count", 0),
            expert_weights_scale=num("expert_weights_scale", 0.0, float),
            expert_weights_norm=bool(f.get(a("expert_weights_norm"), False)), expert_gating_func=gating,
            rope_scaling=scaling, ext_factor=ext_factor, n_ctx_orig_yarn=n_ctx_orig, rope_yarn_log_mul=log_mul,
            corr_dims=(corr_low, corr_high), rope_mscale=float(rope_mscale),
        )
        # the YaRN angles as parameters (what a device computes its RoPE from; the host uses the tables)
        self.yarn = (freq_base, freq_scale, ext_factor, corr_low, corr_high, float(rope_mscale))
        self.hp = HParams(
            arch=arch, n_vocab=n_vocab, n_ctx_train=n_ctx_train, n_embd=n_embd, n_layer=n_layer, n_head=n_head,
            n_head_kv=n_head, n_embd_head_k=dk, n_embd_head_v=dv, n_ff=num("feed_forward_length", 0),
            n_rot=n_rot, f_norm_rms_eps=num("attention.layer_norm_rms_epsilon", 1e-6, float),
            rope_freq_base=freq_base, rope_freq_scale=freq_scale, rope_type=basic.ROPE_NORM, extra=extra)

    # -- cache geometry ---------------------------------------------------------------------------
    def kv_layout(self, mla_mode: int = 3) -> tuple[list[int], list[int], int, int]:
        """(K widths, V widths, K head dim, V head dim) per layer for a cache in this -mla mode.

        Mode 0: per-head K (n_head*192) and V (n_head*128). Modes 1-3: one latent row of kv_lora_rank + n_rot
        values per cell and no V at all (V is read from the c_kv part of the K row).
        """
        hp = self.hp
        if mla_mode not in (0, 1, 2, 3):
            raise InvalidArgumentError(f"mla mode must be 0, 1, 2 or 3, got {mla_mode}")
        if mla_mode == 0:
            return ([hp.n_head * hp.n_embd_head_k] * hp.n_layer, [hp.n_head * hp.n_embd_head_v] * hp.n_layer,
                    hp.n_embd_head_k, hp.n_embd_head_v)
        w = hp.extra["kv_lora_rank"] + hp.n_rot
        return [w] * hp.n_layer, [0] * hp.n_layer, w, 0

    def kv_dims(self, mla_mode: int = 3) -> tuple[list[int], list[int]]:
        k, v, _, _ = self.kv_layout(mla_mode)
        return k, v

    def rope_params(self, il: int) -> tuple:
        """(n_rot, freq_base, freq_scale, freq_factors, mode, yarn) of layer il's k_pe, for the cache's K-shift."""
        hp, ex = self.hp, self.hp.extra
        yarn = (ex["ext_factor"], ex["corr_dims"][0], ex["corr_dims"][1])
        return hp.n_rot, hp.rope_freq_base, hp.rope_freq_scale, None, hp.rope_type, yarn

    def k_rope_offset(self, mla_mode: int) -> int:
        """Column of the rope part in each cached K head: the latent row is [k_pe | c_kv]; mode 0 heads are
        [k_nope | k_pe]."""
        return self.hp.extra["n_embd_head_qk_nope"] if mla_mode == 0 else 0

    def rope_cache(self, pos: np.ndarray) -> basic.RopeCache:
        hp, ex = self.hp, self.hp.extra
        return mla.yarn_rope_cache(pos, hp.n_rot, hp.rope_freq_base, hp.rope_freq_scale, ex["ext_factor"],
                                   ex["corr_dims"], ex["rope_mscale"])

    # -- forward ----------------------------------------------------------------------------------
    def forward(self, inp: ForwardInputs) -> np.ndarray:
        """Runs one ubatch; returns logits [n_out, n_vocab] f32 for inp.out_rows."""
        hp, ex = self.hp, self.hp.extra
        mode = int(getattr(inp.kv, "mla", 3))
        n_tok = inp.tokens.shape[0]
        x = mm.get_rows(self.token_embd.raw, self.token_embd.ggml_type, inp.tokens, hp.n_embd)  # [n_tok, n_embd]
        rope = self.rope_cache(inp.pos)
        # a decoded token runs each layer's attention block and MoE block as one call each (CPU kernels:
        # host arrays only)
        one = n_tok == 1 and mode != 0 and inp.out_rows.shape[0] == 1 and isinstance(x, np.ndarray)
        try:
            return self._layers(inp, x, rope, one, mode)
        finally:  # the decompressed prompt attention's buffers serve every layer of a ubatch, none after it
            mm.drop_scratch(*_DECOMPRESSED_SCRATCH)

    def _layers(self, inp: ForwardInputs, x, rope, one: bool, mode: int) -> np.ndarray:
        """forward's layers, output norm and logits."""
        hp, ex = self.hp, self.hp.extra
        eps = hp.f_norm_rms_eps
        last = hp.n_layer - 1
        n_tok = inp.tokens.shape[0]
        slot = None
        for il, L in enumerate(self.layers):
            A, F = L.attn, L.ffn
            fused_moe = isinstance(F, MoEFFN) and F.decode is not None and F.gate_inp.bias is None
            if one and A.block is not None:
                krows, type_k, cell_pos, cell_seq, kv_idx = inp.kv.mla_view(il)
                if slot is None:
                    slot = A.block.slot(krows, type_k, cell_pos, cell_seq, kv_idx, inp.pos, inp.seq,
                                        inp.kv.mla_cells(il), self.kq_scale)
                A.block(x[0], rope.cos[0], rope.sin[0], krows, slot)
                if fused_moe:
                    F.decode.block(x[0], F.norm, eps)
                    continue
            else:
                h = basic.rms_norm(x, A.norm, eps)
                attn = self._attention(il, A, h, rope, inp, mode)  # [n_tok, n_head*Dv]
                if il == last and inp.out_rows.shape[0] == 0:
                    return np.empty((0, hp.n_vocab), dtype=np.float32)
                if il == last and inp.out_rows.shape[0] < n_tok:
                    x = x[inp.out_rows]  # a row gather: a new contiguous array
                    attn = attn[inp.out_rows]
                x += A.output(attn)
            h = basic.rms_norm(x, F.norm, eps)
            if isinstance(F, DenseFFN):
                g, u = linear_multi(h, F.gate, F.up)
                x += F.down(basic.swiglu(g, u))
            elif h.shape[0] == 1 and fused_moe and isinstance(h, np.ndarray):
                x += F.decode(h)  # one fused call: router, experts, shared experts
            else:
                logits = F.gate_inp(h)  # [n, n_expert]
                sel, w = moe.route(logits, ex["n_expert_used"], ex["expert_gating_func"], F.exp_probs_b,
                                   ex["expert_weights_norm"], ex["expert_weights_scale"])
                y = moe.moe_ffn(h, sel, w, F.gate_exps, F.up_exps, F.down_exps, ex["n_ff_exp"], F.gate_up_exps)
                g, u = linear_multi(h, F.gate_shexp, F.up_shexp)
                y += F.down_shexp(basic.swiglu(g, u))
                x += y
        basic.rms_norm(x, self.output_norm, eps, out=x)
        return self.output(x)

    def _attention(self, il, A: MLAAttention, h, rope, inp, mode) -> np.ndarray:
        hp, ex = self.hp, self.hp.extra
        n_tok = h.shape[0]
        H, C, R, Dn, Dv, Dk = hp.n_head, ex["kv_lora_rank"], hp.n_rot, ex["n_embd_head_qk_nope"], \
            hp.n_embd_head_v, hp.n_embd_head_k
        eps = hp.f_norm_rms_eps
        if A.q is None:
            qa, kva = linear_multi(h, A.q_a, A.kv_a_mqa)
            q = A.q_b(basic.rms_norm(qa, A.q_a_norm, eps))
        else:
            q, kva = linear_multi(h, A.q, A.kv_a_mqa)
        q = q.reshape(n_tok, H, Dk)                                  # [n_tok, H, Dn + R]
        host = isinstance(q, np.ndarray)  # a device runs the absorbed attention for every ubatch size
        decompress = host and mode in (2, 3) and n_tok >= paths.current().mla_decompress_min_tokens
        if decompress:
            view = inp.kv.mla_view(il)
            decompress = self._heads_on_tiles(view.type_k) or not (
                view.kv_idx.shape[0] >= paths.current().mla_amx_min_cells and mla.amx_takes(view.type_k, H, R, C))
        fused = host and mode != 0 and not decompress and n_tok == 1 and A.decode is not None
        if mode != 0 and not decompress and not fused:  # absorbed attention over the latent cache
            inp.kv.store(il, mla.latent_rows_of(kva, A.kv_a_norm, eps, rope, self.yarn, R, inp.pos), None)
            krows, type_k, cell_pos, cell_seq, kv_idx = inp.kv.mla_view(il)
            return mla.absorbed_attention(q, A.absorbed, krows, type_k, cell_pos, cell_seq, kv_idx, inp.pos, inp.seq,
                                          self.kq_scale, rope, self.yarn, R, inp.kv.seq_scans(il) if host else ())
        if not host:
            raise UnsupportedError("deepseek2 on a device runs the absorbed attention over the latent cache: "
                                   "use -mla 1, 2 or 3")
        c_kv = basic.rms_norm(np.ascontiguousarray(kva[:, :C]), A.kv_a_norm, eps)  # [n_tok, C]
        k_pe = np.ascontiguousarray(kva[:, C:]).reshape(n_tok, 1, R)  # [n_tok, 1, R]
        q_pe = np.ascontiguousarray(q[:, :, Dn:])                     # [n_tok, H, R]
        rope.apply(k_pe)
        rope.apply(q_pe)
        q_nope = q[:, :, :Dn]
        if mode == 0:
            kv = mm.matmul(c_kv, A.kv_b.raw, A.kv_b.ggml_type).reshape(n_tok, H, Dn + Dv)
            k = np.empty((n_tok, H, Dk), np.float32)                 # [n_tok, H, Dn + R], nope first
            k[:, :, :Dn] = kv[:, :, :Dn]
            k[:, :, Dn:] = k_pe
            v = np.ascontiguousarray(kv[:, :, Dn:]).reshape(n_tok, H * Dv)
            qf = np.empty((n_tok, H, Dk), np.float32)
            qf[:, :, :Dn] = q_nope
            qf[:, :, Dn:] = q_pe
            inp.kv.store(il, k.reshape(n_tok, H * Dk), v)
            return inp.kv.attend(il, qf, self.kq_scale, head_dim_v=Dv)
        row = np.empty((n_tok, R + C), np.float32)                   # [n_tok, R + C] the cache row, rope first
        row[:, :R] = k_pe[:, 0, :]
        row[:, R:] = c_kv
        inp.kv.store(il, row, None)
        krows, type_k, cell_pos, cell_seq, kv_idx = inp.kv.mla_view(il)
        if fused:  # W_UK, FlashMLA, W_UV in one call
            return A.decode(np.ascontiguousarray(q_nope[0]), q_pe[0], krows, type_k, cell_pos, cell_seq, kv_idx,
                            inp.pos, inp.seq, self.kq_scale).reshape(1, H * Dv)
        return self._attn_decompressed(A, q_nope, q_pe, krows, type_k, cell_pos, cell_seq, kv_idx, inp)

    def _heads_on_tiles(self, type_k: str) -> bool:
        """Whether the decompressed prompt attention runs on AMX-BF16 tiles (paths.mla_heads_amx)."""
        return paths.current().mla_heads_amx and mla.heads_amx_takes(self.hp.n_embd_head_k, self.hp.n_embd_head_v,
                                                                      type_k)

    def _attn_decompressed(self, A: MLAAttention, q_nope, q_pe, krows, type_k, cell_pos, cell_seq, kv_idx,
                           inp) -> np.ndarray:
        """Prompt path of modes 2/3: decompress the cached latents of the visible cells through kv_b."""
        hp, ex = self.hp, self.hp.extra
        n_tok = q_nope.shape[0]
        H, C, R, Dn, Dv, Dk = hp.n_head, ex["kv_lora_rank"], hp.n_rot, ex["n_embd_head_qk_nope"], \
            hp.n_embd_head_v, hp.n_embd_head_k
        n_vis = kv_idx.shape[0]
        lat = mla.latent_rows(krows, type_k, kv_idx, R + C)          # [n_vis, R + C]
        cp, cs = np.ascontiguousarray(cell_pos[kv_idx]), np.ascontiguousarray(cell_seq[kv_idx])
        tiles = self._heads_on_tiles(type_k)
        # on the tiles the large buffers are this thread's scratch for the ubatch (fresh pages in every layer cost
        # more than the copies into them)
        kv = mm.matmul(np.ascontiguousarray(lat[:, R:]), A.kv_b.raw, A.kv_b.ggml_type,
                       out=mm.scratch(_DECOMPRESSED_SCRATCH[0], np.float32, (n_vis, H * (Dn + Dv))) if tiles else None)
        kv = kv.reshape(n_vis, H, Dn + Dv)
        if tiles:  # per head [k_pe | k_nope | v] rows, the queries [q_pe | q_nope] in the same order
            rows = mla.head_rows(lat[:, :R], kv,
                                 out=mm.scratch(_DECOMPRESSED_SCRATCH[1], np.float32, (n_vis, H, R + Dn + Dv)))
            qf = np.empty((n_tok, H, R + Dn), np.float32)
            qf[:, :, :R] = q_pe
            qf[:, :, R:] = q_nope
            return mla.heads_attention_amx(qf, rows, Dv, cp, cs, inp.pos, inp.seq, self.kq_scale)
        if n_tok >= ATTN_BLAS_MIN_TOKENS and inp.seq.size and 0 <= inp.seq.min() and inp.seq.max() < 64:
            # QK^T (the heads' k_nope, then the shared rope key), masked softmax and PV per head through
            # OpenBLAS, reading kv_b's output and the latent rows in place: the Numba flash kernel runs these
            # prompt chunks at ~60 GFLOP/s, and copying per-head [k_nope | k_pe] and v rows costs ~15% of a
            # 512-token ubatch at depth 4096 (AVX2 code)
            return attention_matrix(q_nope, kv[:, :, :Dn], kv[:, :, Dn:], cp, cs, inp.pos, inp.seq, self.kq_scale,
                                    H, Dv, q_rope=q_pe, k_rope=lat[:, :R])
        k = np.empty((n_vis, H, Dk), np.float32)                      # [n_vis, H, Dn + R]
        k[:, :, :Dn] = kv[:, :, :Dn]
        k[:, :, Dn:] = lat[:, None, :R]
        v = np.ascontiguousarray(kv[:, :, Dn:]).reshape(n_vis, H * Dv)
        qf = np.empty((n_tok, H, Dk), np.float32)
        qf[:, :, :Dn] = q_nope
        qf[:, :, Dn:] = q_pe
        return flash_attn_rows(qf, k.reshape(n_vis, H * Dk), "f32", v, "f32", cp, cs, inp.pos, inp.seq,
                               self.kq_scale, H, Dv)
