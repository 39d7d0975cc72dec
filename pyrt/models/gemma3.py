"""`gemma3`: interleaved sliding-window / global attention, QK-norm, sandwich norms, GELU-tanh gated FFN.

Semantics follow llama.cpp's gemma3 graph: embeddings scaled by sqrt(n_embd); per-layer RoPE base
(10000 for sliding layers unless the file says otherwise, rope.freq_base for global ones); the layer
pattern from attention.sliding_window_pattern (default: every 6th layer global); tied output.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np

from ..errors import ModelFileError
from ..io.gguf_file import GGUFFile
from ..ops import basic
from ..ops import matmul as mm
from ..ops.dense import DenseLayerDecode, decode_layers
from .base import ForwardInputs, Linear, ModelBase, TensorTable, linear_multi, read_hparams


def swa_layers(f: GGUFFile, n_layer: int, default_pattern: int = 6) -> list[bool]:
    """is_swa per layer, as llama_hparams::set_swa_pattern (dense_first = false)."""
    arch = f.architecture
    pat = f.get(f"{arch}.attention.sliding_window_pattern", default_pattern)
    if isinstance(pat, (list, np.ndarray)):
        pat = [bool(v) for v in pat]
        if len(pat) != n_layer:
            raise ModelFileError(f"{f.path}: sliding_window_pattern has {len(pat)} entries for {n_layer} layers")
        return pat
    pat = int(pat)
    return [pat == 0 or (il % pat < pat - 1) for il in range(n_layer)]


class Gemma3Model(ModelBase):
    ARCHS = {"gemma3": basic.ROPE_NEOX}
    DEVICES = ("cpu", "cuda")  # every op of forward has a kernel on these

    def __init__(self, f: GGUFFile):
        self.hp = hp = read_hparams(f, basic.ROPE_NEOX)
        arch = hp.arch
        n_swa = int(f.get(f"{arch}.attention.sliding_window", 0) or 0)
        self.n_swa = n_swa
        self.is_swa = swa_layers(f, hp.n_layer) if n_swa > 0 else [False] * hp.n_layer
        self.rope_base_swa = float(f.get(f"{arch}.rope.freq_base_swa", 10000.0))
        self.softcap = float(f.get(f"{arch}.final_logit_softcapping", 0.0) or 0.0)
        hp.extra.update(n_swa=n_swa, n_swa_layers=sum(self.is_swa), rope_freq_base_swa=self.rope_base_swa)
        if hp.n_layer == 62:  # 27B: gemma_pytorch's query_pre_attn_scalar = n_embd / n_head
            self.kq_scale = 1.0 / math.sqrt(hp.n_embd / hp.n_head)
        else:
            self.kq_scale = 1.0 / math.sqrt(hp.n_embd_head_k)
        t = TensorTable(f)
        self.token_embd = t.get("token_embd.weight", (hp.n_vocab, hp.n_embd))
        self.output_norm = t.vector("output_norm.weight", hp.n_embd)
        out = t.get("output.weight", (hp.n_vocab, hp.n_embd), required=False)
        self.output = Linear(out if out is not None else self.token_embd)
        hk, hv = hp.n_embd_head_k, hp.n_embd_head_v
        self.layers = []
        for il in range(hp.n_layer):
            p = f"blk.{il}."
            self.layers.append(SimpleNamespace(
                attn_norm=t.vector(p + "attn_norm.weight", hp.n_embd),
                attn_q=t.linear(p + "attn_q", hp.n_head * hk, hp.n_embd),
                attn_k=t.linear(p + "attn_k", hp.n_head_kv * hk, hp.n_embd),
                attn_v=t.linear(p + "attn_v", hp.n_head_kv * hv, hp.n_embd),
                attn_q_norm=t.vector(p + "attn_q_norm.weight", hk),
                attn_k_norm=t.vector(p + "attn_k_norm.weight", hk),
                attn_output=t.linear(p + "attn_output", hp.n_embd, hp.n_head * hv),
                post_attention_norm=t.vector(p + "post_attention_norm.weight", hp.n_embd),
                ffn_norm=t.vector(p + "ffn_norm.weight", hp.n_embd),
                ffn_gate=t.linear(p + "ffn_gate", hp.n_ff, hp.n_embd),
                ffn_up=t.linear(p + "ffn_up", hp.n_ff, hp.n_embd),
                ffn_down=t.linear(p + "ffn_down", hp.n_embd, hp.n_ff),
                post_ffw_norm=t.vector(p + "post_ffw_norm.weight", hp.n_embd),
            ))

        # a decoded token runs each layer as one call where every layer's weights allow it
        blocks = [DenseLayerDecode.build(L, hp.n_embd, hp.n_head, hp.n_head_kv, hk, hv, hp.n_rot, True,
                                         hp.f_norm_rms_eps, q_norm=L.attn_q_norm, k_norm=L.attn_k_norm,
                                         post_attn_norm=L.post_attention_norm, post_ffn_norm=L.post_ffw_norm,
                                         gelu=True, n_swa=n_swa if self.is_swa[il] else 0)
                  for il, L in enumerate(self.layers)]
        self.blocks = blocks if all(b is not None for b in blocks) else None

    def kv_dims(self) -> tuple[list[int], list[int]]:
        hp = self.hp
        return [hp.n_embd_k_gqa] * hp.n_layer, [hp.n_embd_v_gqa] * hp.n_layer

    def rope_params(self, il: int) -> tuple:
        """(n_rot, freq_base, freq_scale, freq_factors, mode) of layer il's K, for the cache's K-shift."""
        hp = self.hp
        if self.is_swa[il]:
            return hp.n_rot, self.rope_base_swa, 1.0, None, hp.rope_type
        return hp.n_rot, hp.rope_freq_base, hp.rope_freq_scale, None, hp.rope_type

    def forward(self, inp: ForwardInputs) -> np.ndarray:
        hp = self.hp
        n_tok = inp.tokens.shape[0]
        x = mm.get_rows(self.token_embd.raw, self.token_embd.ggml_type, inp.tokens, hp.n_embd)  # [n_tok, n_embd]
        x *= np.float32(math.sqrt(hp.n_embd))
        rope_global = basic.RopeCache(inp.pos, hp.n_rot, hp.rope_freq_base, hp.rope_freq_scale, None, hp.rope_type)
        rope_local = basic.RopeCache(inp.pos, hp.n_rot, self.rope_base_swa, 1.0, None, hp.rope_type)
        eps = hp.f_norm_rms_eps
        if self.blocks is not None and n_tok == 1 and inp.out_rows.shape[0] == 1 and isinstance(x, np.ndarray):
            views = [inp.kv.dense_view(il, b.n_swa) for il, b in enumerate(self.blocks)]
            if all(v is not None for v in views):  # host caches: one call a layer
                tables = [(r.cos[0], r.sin[0]) for r in (rope_local if swa else rope_global for swa in self.is_swa)]
                decode_layers(self.blocks, x[0], tables, views, inp.pos, inp.seq, self.kq_scale)
                return self._logits(x)
        h = np.empty_like(x)
        last = hp.n_layer - 1
        for il, L in enumerate(self.layers):
            swa = self.is_swa[il]
            rope = rope_local if swa else rope_global
            basic.rms_norm(x, L.attn_norm, eps, out=h)
            q, k, v = linear_multi(h, L.attn_q, L.attn_k, L.attn_v)
            q = q.reshape(n_tok, hp.n_head, hp.n_embd_head_k)      # [n_tok, n_head, head_dim]
            k = k.reshape(n_tok, hp.n_head_kv, hp.n_embd_head_k)   # [n_tok, n_head_kv, head_dim]
            basic.rms_norm_heads(q, L.attn_q_norm, eps)
            basic.rms_norm_heads(k, L.attn_k_norm, eps)
            rope.apply(q)
            rope.apply(k)
            inp.kv.store(il, k.reshape(n_tok, -1), v)
            attn = inp.kv.attend(il, q, self.kq_scale, n_swa=self.n_swa if swa else 0)
            if il == last:
                if inp.out_rows.shape[0] == 0:
                    return np.empty((0, hp.n_vocab), dtype=np.float32)
                if inp.out_rows.shape[0] < n_tok:
                    x = x[inp.out_rows]  # a row gather: a new contiguous array
                    attn = attn[inp.out_rows]
                    h = np.empty_like(x)
            a = L.attn_output(attn)
            basic.rms_norm(a, L.post_attention_norm, eps, out=a)
            x += a
            basic.rms_norm(x, L.ffn_norm, eps, out=h)
            g, u = linear_multi(h, L.ffn_gate, L.ffn_up)      # [n_tok, n_ff] each
            d = L.ffn_down(basic.geglu_tanh(g, u))
            basic.rms_norm(d, L.post_ffw_norm, eps, out=d)
            x += d
        return self._logits(x)

    def _logits(self, x: np.ndarray) -> np.ndarray:
        """output_norm, the output rows and the final softcap (in place on x)."""
        basic.rms_norm(x, self.output_norm, self.hp.f_norm_rms_eps, out=x)
        logits = self.output(x)
        if self.softcap:
            logits = basic.softcap(logits, self.softcap)
        return logits
