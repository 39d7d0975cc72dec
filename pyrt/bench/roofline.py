"""Roofline accounting: bytes a generated token reads and flops a prompt chunk costs, from a loaded model.

Generation: every weight a token multiplies with (token_embd: one row, unless the output is tied to it;
expert tensors: n_expert_used of n_expert) plus the K/V rows the attention kernel loads at that depth
(cells a sliding-window layer masks are not loaded). Prompt: 2 flops per weight per token, the output
matmul only for rows with logits, and 2*(dk+dv) per head per visible (query, key) pair.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class ModelCosts:
    weight_bytes_per_token: int  # weights read by one decoded token
    matmul_params: int           # weights multiplied by every token, the output matmul excluded
    output_params: int           # n_vocab * n_embd: the output matmul, once per row with logits
    kv_row_bytes: list[int]      # [n_layer] bytes of one cell's K + V row in layer il
    attn_flops_per_pair: list[int]  # [n_layer] flops of one (query, key) pair in layer il (all heads)
    n_swa: list[int]             # [n_layer] window of layer il (0 = global)

    @classmethod
    def from_llm(cls, llm) -> "ModelCosts":
        model, hp, ctx = llm.model, llm.model.hp, llm.ctx
        tensors = llm.file.tensors
        n_expert = int(hp.extra.get("n_expert", 0) or 0)
        n_used = int(hp.extra.get("n_expert_used", 0) or 0)
        tied = "output.weight" not in tensors
        wbytes = mparams = 0
        for name, w in tensors.items():
            frac = n_used / n_expert if ("_exps" in name and n_expert and n_used) else 1.0
            if name == "token_embd.weight":
                row = w.nbytes // max(1, w.shape[0])
                wbytes += row + (w.nbytes if tied else 0)
                continue
            wbytes += int(w.nbytes * frac)
            if len(w.shape) >= 2 and name != "output.weight":
                mparams += int(w.n_elements * frac)
        kv_row = []
        for il in range(hp.n_layer):
            c, j = ctx.layer_cache(il)  # sliding-window layers may live in a window-sized second cache
            b = c.k[j].nbytes // c.size
            if c.v[j] is not None:
                b += c.v[j].nbytes // c.size
            kv_row.append(int(b))
        flops_pair = [2 * hp.n_head * (hp.n_embd_head_k + hp.n_embd_head_v)] * hp.n_layer
        is_swa = model.is_swa
        win = int(model.n_swa)
        n_swa = [win if s else 0 for s in is_swa]
        return cls(int(wbytes), int(mparams), hp.n_vocab * hp.n_embd, kv_row, flops_pair, n_swa)

    @staticmethod
    def _visible(n_keys: int, n_swa: int) -> int:
        return min(n_keys, n_swa) if n_swa > 0 else n_keys

    def _keys_sum(self, il: int, pos0: int, n: int) -> int:
        """Sum over tokens at positions pos0..pos0+n-1 of the keys each one sees (itself included)."""
        w = self.n_swa[il]
        lo, hi = pos0 + 1, pos0 + n  # visible keys of the first and last token without a window
        if w <= 0 or hi <= w:
            return (lo + hi) * n // 2
        if lo >= w:
            return w * n
        return (lo + w - 1) * (w - lo) // 2 + w * (hi - w + 1)

    def tg_bytes(self, n_kv: int, n_tg: int) -> int:
        """Bytes read by n_tg single-token decodes at positions n_kv, n_kv+1, ..."""
        kv = sum(self.kv_row_bytes[il] * self._keys_sum(il, n_kv, n_tg) for il in range(len(self.kv_row_bytes)))
        return self.weight_bytes_per_token * n_tg + kv

    def pp_flops(self, n_kv: int, n_pp: int, n_out: int = 1) -> int:
        """Flops of one prompt chunk of n_pp tokens at positions n_kv.. with n_out logit rows."""
        attn = sum(self.attn_flops_per_pair[il] * self._keys_sum(il, n_kv, n_pp)
                   for il in range(len(self.attn_flops_per_pair)))
        return 2 * self.matmul_params * n_pp + 2 * self.output_params * n_out + attn
