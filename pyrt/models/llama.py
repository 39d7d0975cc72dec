"""`llama` and `qwen2` architectures (RMSNorm, GQA attention with RoPE, SwiGLU FFN).

Semantics follow llama.cpp's graph: llama uses norm-style RoPE, qwen2 neox-style RoPE with Q/K/V biases.
Imports ops and models.base only; the KV cache is reached through `ForwardInputs.kv`.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np

from ..io.gguf_file import GGUFFile
from ..ops import basic
from ..ops import matmul as mm
from ..ops.dense import DenseLayerDecode, decode_layers
from .base import ForwardInputs, HParams, Linear, ModelBase, TensorTable, linear_multi, read_hparams


class LlamaModel(ModelBase):
    """One instance per loaded file; holds views into the map, never copies of the weights."""

    ARCHS = {"llama": basic.ROPE_NORM, "qwen2": basic.ROPE_NEOX}
    QKV_BIAS = {"llama": None, "qwen2": True}
    DEVICES = ("cpu", "cuda")  # every op of forward has a kernel on these

    def __init__(self, f: GGUFFile):
        arch = f.architecture
        self.hp: HParams = read_hparams(f, self.ARCHS[arch])
        hp = self.hp
        t = TensorTable(f)
        self.token_embd = t.get("token_embd.weight", (hp.n_vocab, hp.n_embd))
        self.output_norm = t.vector("output_norm.weight", hp.n_embd)
        out = t.get("output.weight", (hp.n_vocab, hp.n_embd), required=False)
        self.output = Linear(out if out is not None else self.token_embd)  # tied embeddings
        ff = t.get("rope_freqs.weight", (hp.n_rot // 2,), required=False)
        self.rope_freqs = None if ff is None else np.array(ff.raw.view(np.float32).reshape(-1))
        bias = self.QKV_BIAS[arch]
        qd, kvd = hp.n_head * hp.n_embd_head_k, hp.n_embd_k_gqa
        self.layers = []
        for il in range(hp.n_layer):
            p = f"blk.{il}."
            self.layers.append(SimpleNamespace(
                attn_norm=t.vector(p + "attn_norm.weight", hp.n_embd),
                attn_q=t.linear(p + "attn_q", qd, hp.n_embd, bias),
                attn_k=t.linear(p + "attn_k", kvd, hp.n_embd, bias),
                attn_v=t.linear(p + "attn_v", hp.n_embd_v_gqa, hp.n_embd, bias),
                attn_output=t.linear(p + "attn_output", hp.n_embd, hp.n_head * hp.n_embd_head_v),
                ffn_norm=t.vector(p + "ffn_norm.weight", hp.n_embd),
                ffn_gate=t.linear(p + "ffn_gate", hp.n_ff, hp.n_embd),
                ffn_up=t.linear(p + "ffn_up", hp.n_ff, hp.n_embd),
                ffn_down=t.linear(p + "ffn_down", hp.n_embd, hp.n_ff),
            ))
        self.kq_scale = 1.0 / math.sqrt(hp.n_embd_head_k)
        # a decoded token runs each layer as one call where every layer's weights allow it
        blocks = [DenseLayerDecode.build(L, hp.n_embd, hp.n_head, hp.n_head_kv, hp.n_embd_head_k, hp.n_embd_head_v,
                                         hp.n_rot, hp.rope_type == basic.ROPE_NEOX, hp.f_norm_rms_eps)
                  for L in self.layers]
        self.blocks = blocks if all(b is not None for b in blocks) else None

    # KV geometry the context needs to allocate the cache
    def kv_dims(self) -> tuple[list[int], list[int]]:
        hp = self.hp
        return [hp.n_embd_k_gqa] * hp.n_layer, [hp.n_embd_v_gqa] * hp.n_layer

    def rope_params(self, il: int) -> tuple:
        """(n_rot, freq_base, freq_scale, freq_factors, mode) of layer il's K, for the cache's K-shift."""
        hp = self.hp
        return hp.n_rot, hp.rope_freq_base, hp.rope_freq_scale, self.rope_freqs, hp.rope_type

    def forward(self, inp: ForwardInputs) -> np.ndarray:
        """Runs one ubatch; returns logits [n_out, n_vocab] f32 for inp.out_rows."""
        hp = self.hp
        n_tok = inp.tokens.shape[0]
        x = mm.get_rows(self.token_embd.raw, self.token_embd.ggml_type, inp.tokens, hp.n_embd)  # [n_tok, n_embd]
        rope = basic.RopeCache(inp.pos, hp.n_rot, hp.rope_freq_base, hp.rope_freq_scale,
                               self.rope_freqs, hp.rope_type)
        eps = hp.f_norm_rms_eps
        if self.blocks is not None and n_tok == 1 and inp.out_rows.shape[0] == 1 and isinstance(x, np.ndarray):
            views = [inp.kv.dense_view(il) for il in range(hp.n_layer)]
            if all(v is not None for v in views):  # host caches: one call a layer
                decode_layers(self.blocks, x[0], [(rope.cos[0], rope.sin[0])] * hp.n_layer, views, inp.pos, inp.seq,
                              self.kq_scale)
                basic.rms_norm(x, self.output_norm, eps, out=x)
                return self.output(x)
        h = np.empty_like(x)
        last = hp.n_layer - 1
        for il, L in enumerate(self.layers):
            basic.rms_norm(x, L.attn_norm, eps, out=h)
            q, k, v = linear_multi(h, L.attn_q, L.attn_k, L.attn_v)
            q = q.reshape(n_tok, hp.n_head, hp.n_embd_head_k)      # [n_tok, n_head, head_dim]
            k = k.reshape(n_tok, hp.n_head_kv, hp.n_embd_head_k)   # [n_tok, n_head_kv, head_dim]
            rope.apply(q)
            rope.apply(k)
            inp.kv.store(il, k.reshape(n_tok, -1), v)
            attn = inp.kv.attend(il, q, self.kq_scale)         # [n_tok, n_head*head_dim_v]
            if il == last and inp.out_rows.shape[0] == 0:
                return np.empty((0, hp.n_vocab), dtype=np.float32)
            if il == last and inp.out_rows.shape[0] < n_tok:
                # as llama.cpp: only the rows that want logits go through the last layer's rest
                x = x[inp.out_rows]  # a row gather: a new contiguous array
                attn = attn[inp.out_rows]
                h = np.empty_like(x)
            x += L.attn_output(attn)
            basic.rms_norm(x, L.ffn_norm, eps, out=h)
            g, u = linear_multi(h, L.ffn_gate, L.ffn_up)      # [n_tok, n_ff] each
            x += L.ffn_down(basic.swiglu(g, u))
        basic.rms_norm(x, self.output_norm, eps, out=x)
        return self.output(x)
