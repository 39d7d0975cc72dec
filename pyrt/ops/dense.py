"""A decoded token's whole dense transformer layer as one kernel call (_kernels.fused_dense): the llama / qwen2 /
gemma3 layer (RMSNorm, Q/K/V with optional biases and QK-norm, RoPE, the cache store, flash attention with an
optional sliding window, attn_output, SwiGLU or GELU-tanh FFN, optional sandwich norms) without Python between
its ops. The same bits as the layer run op by op (tests hold them equal).

Validation happens once per layer at load (`DenseLayerDecode.build`), once per ubatch for the cache side
(`slot`), and per call only for what changes between layers (x and the layer's cache rows).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .._kernels import fused_dense as fd
from ..errors import InvalidArgumentError
from ..formats.qtypes import get_qtype
from . import paths
from .attention import _DTYPE, _KINDS, CacheRows, DecodeSlot, _n_elems, choose_tiles
from .basic import _gelu_table
from .matmul import _check_raw, _readonly
from .mla import _FUSED_W, _weight_vec
from .mla import _f32_vec as _mla_f32_vec

_EMPTY = _readonly(np.zeros(0, np.float32))  # an absent vector (read-only as the others: matmul._readonly)


def _f32_vec(name: str, a, n: int) -> np.ndarray:
    return _mla_f32_vec(name, a, n, "dense layer")


def _weight(name: str, a, n: int) -> np.ndarray:
    return _weight_vec(name, a, n, "dense layer")


@dataclass(frozen=True, slots=True, eq=False)
class DenseLayerDecode:
    """One dense layer (llama / qwen2 / gemma3) for a decoded token, checked once at load, for
    fused_dense.dense_layer_decode.

    `build` returns None (the layer then runs op by op) unless every projection is Q8_0/Q4_0/Q5_0/Q4_K/Q5_K/Q6_K,
    gate and up share a type, only Q/K/V have biases, and the FFN width is a multiple of 32.
    """

    attn_norm: np.ndarray      # [n_embd] f32
    wq: np.ndarray             # [n_head*dk, row bytes of n_embd] uint8
    wk: np.ndarray             # [n_head_kv*dk, ...]
    wv: np.ndarray             # [n_head_kv*dv, ...]
    bq: np.ndarray             # [n_head*dk] f32 or [0] (no bias), as bk, bv
    bk: np.ndarray
    bv: np.ndarray
    q_norm: np.ndarray         # [dk] f32 QK-norm weights or [0] (none), as k_norm
    k_norm: np.ndarray
    wo: np.ndarray             # [n_embd, row bytes of n_head*dv] uint8
    post_attn_norm: np.ndarray  # [n_embd] f32 or [0] (no sandwich norm), as post_ffn_norm
    ffn_norm: np.ndarray       # [n_embd] f32
    wg: np.ndarray             # [n_ff, row bytes of n_embd] uint8, as wu
    wu: np.ndarray
    wd: np.ndarray             # [n_embd, row bytes of n_ff] uint8
    post_ffn_norm: np.ndarray
    gelu_table: np.ndarray     # [65536] f32 for a GELU-tanh FFN (ops.basic.geglu_tanh's table), [0] for SwiGLU
    kinds: np.ndarray          # [6] int64: q, k, v, o, gate/up, down (fused_dense.W_*)
    n_embd: int
    n_head: int
    n_head_kv: int
    dk: int
    dv: int
    n_rot: int
    neox: bool
    eps: float
    n_swa: int                 # sliding window in positions (0: none)

    @classmethod
    def build(cls, L, n_embd: int, n_head: int, n_head_kv: int, dk: int, dv: int, n_rot: int, neox: bool,
              eps: float, *, q_norm=None, k_norm=None, post_attn_norm=None, post_ffn_norm=None, gelu: bool = False,
              n_swa: int = 0) -> "DenseLayerDecode | None":
        """L: the layer's attn_norm, attn_q/k/v/output, ffn_norm, ffn_gate/up/down (models.base.Linear with
        .w.raw, .w.ggml_type, .bias); q_norm, k_norm [dk] and post_attn_norm, post_ffn_norm [n_embd] f32 where the
        layer has them; gelu: a GELU-tanh FFN (else SwiGLU). Raises InvalidArgumentError where the tensors
        disagree in shape."""
        if not paths.current().fused_dense_layer:
            return None
        lin = [L.attn_q, L.attn_k, L.attn_v, L.attn_output, L.ffn_gate, L.ffn_down]
        if (any(int(x.w.ggml_type) not in _FUSED_W for x in lin) or L.ffn_up.w.ggml_type != L.ffn_gate.w.ggml_type
                or any(x.bias is not None for x in (L.attn_output, L.ffn_gate, L.ffn_up, L.ffn_down))
                or n_embd % 32 or n_rot % 2 or n_rot > dk or n_head_kv <= 0 or n_head % n_head_kv):
            return None
        n_ff = L.ffn_gate.n_out
        if n_ff % 32:
            return None

        def raw(x, n_in, n_out, name):
            w = _check_raw(x.w.raw, get_qtype(x.w.ggml_type), n_in, f"dense layer {name}")
            if w.shape[0] != n_out:
                raise InvalidArgumentError(f"dense layer: {name} has {w.shape[0]} rows, expected {n_out}")
            return w

        def vec(name, a, n):
            return _EMPTY if a is None else _weight(name, a, n)

        def bias(x, n):
            return _EMPTY if x.bias is None else _weight("a Q/K/V bias", np.ascontiguousarray(x.bias, np.float32), n)

        return cls(attn_norm=_weight("attn_norm", L.attn_norm, n_embd),
                   wq=raw(L.attn_q, n_embd, n_head * dk, "attn_q"), wk=raw(L.attn_k, n_embd, n_head_kv * dk, "attn_k"),
                   wv=raw(L.attn_v, n_embd, n_head_kv * dv, "attn_v"), bq=bias(L.attn_q, n_head * dk),
                   bk=bias(L.attn_k, n_head_kv * dk), bv=bias(L.attn_v, n_head_kv * dv),
                   q_norm=vec("attn_q_norm", q_norm, dk), k_norm=vec("attn_k_norm", k_norm, dk),
                   wo=raw(L.attn_output, n_head * dv, n_embd, "attn_output"),
                   post_attn_norm=vec("post_attention_norm", post_attn_norm, n_embd),
                   ffn_norm=_weight("ffn_norm", L.ffn_norm, n_embd), wg=raw(L.ffn_gate, n_embd, n_ff, "ffn_gate"),
                   wu=raw(L.ffn_up, n_embd, n_ff, "ffn_up"), wd=raw(L.ffn_down, n_ff, n_embd, "ffn_down"),
                   post_ffn_norm=vec("post_ffw_norm", post_ffn_norm, n_embd),
                   gelu_table=_readonly(_gelu_table()) if gelu else _EMPTY,
                   kinds=np.array([_FUSED_W[int(x.w.ggml_type)] for x in lin], np.int64), n_embd=n_embd,
                   n_head=n_head, n_head_kv=n_head_kv, dk=dk, dv=dv, n_rot=n_rot, neox=bool(neox), eps=float(eps),
                   n_swa=int(n_swa))

    def slot(self, view, q_pos, q_seq, scale: float) -> DecodeSlot:
        """The ubatch's cache-side arguments, validated once for every layer: view is one layer's DenseView
        (every layer's rows are alike: the call checks their shape and dtype)."""
        type_k, type_v = view.type_k, view.type_v
        if type_k not in _KINDS or type_v not in _KINDS:
            raise InvalidArgumentError(f"dense layer: unsupported cache types {type_k!r}/{type_v!r}")
        k0, v0 = view.k, view.v
        seg_k = int(view.seg_k) if type_k == "q8_KV" else 1
        seg_v = int(view.seg_v) if type_v == "q8_KV" else 1
        for name, buf, tname, seg, n in (("K", k0, type_k, seg_k, self.n_head_kv * self.dk),
                                         ("V", v0, type_v, seg_v, self.n_head_kv * self.dv)):
            if not isinstance(buf, np.ndarray) or buf.ndim != 2 or not buf.flags.c_contiguous or (
                    buf.dtype != _DTYPE[tname] and not (tname in ("f16", "bf16") and buf.dtype in (np.uint16, np.float16))):
                raise InvalidArgumentError(f"dense layer: {name} rows of type {tname} must be a C-contiguous 2-D "
                                           f"array of {np.dtype(_DTYPE[tname])}")
            if seg <= 0 or _n_elems(buf, tname, seg) != n:
                raise InvalidArgumentError(f"dense layer: {name} rows hold {_n_elems(buf, tname, seg)} values, need {n}")
        for name, tname, seg, d in (("K", type_k, seg_k, self.dk), ("V", type_v, seg_v, self.dv)):
            if tname == "q8_0" and d % 32:
                raise InvalidArgumentError(f"dense layer: q8_0 {name} needs head dims that are multiples of 32")
            if tname == "q8_KV" and any((g * d) // seg != (g * d + d - 1) // seg for g in range(self.n_head_kv)):
                raise InvalidArgumentError(f"dense layer: q8_KV {name} heads of {d} must lie inside one segment")
        cells, cell_pos, cell_seq, kv_idx = view.cells, view.cell_pos, view.cell_seq, view.kv_idx
        if v0.shape[0] != k0.shape[0]:
            raise InvalidArgumentError(f"dense layer: K has {k0.shape[0]} rows, V has {v0.shape[0]}")
        n_cells = k0.shape[0]
        cells = np.asarray(cells)
        if cells.shape != (1,) or not 0 <= int(cells[0]) < n_cells:
            raise InvalidArgumentError(f"dense layer: the token's cell must be one index in [0, {n_cells})")
        cell_pos = np.ascontiguousarray(cell_pos)
        cell_seq = np.ascontiguousarray(cell_seq)
        n_kv = cell_pos.shape[0]
        if (cell_pos.dtype != np.int32 or cell_seq.dtype != np.uint64 or cell_seq.shape != (n_kv,)
                or n_kv > n_cells):
            raise InvalidArgumentError(f"dense layer: cell_pos int32 and cell_seq uint64 of <= {n_cells} cells required")
        kv_idx = np.ascontiguousarray(kv_idx)
        if kv_idx.ndim != 1 or kv_idx.dtype != np.int32 or (kv_idx.size and (kv_idx.min() < 0 or kv_idx.max() >= n_kv)):
            raise InvalidArgumentError(f"dense layer: kv_idx must be int32 cell indices in [0, {n_kv})")
        q_pos = np.ascontiguousarray(q_pos, dtype=np.int32)
        q_seq = np.ascontiguousarray(q_seq, dtype=np.int32)
        if q_pos.shape != (1,) or q_seq.shape != (1,) or not 0 <= int(q_seq[0]) < 64:
            raise InvalidArgumentError("dense layer: one query with a sequence id in [0, 64) required")
        if not np.isfinite(scale):
            raise InvalidArgumentError("dense layer: scale must be finite")
        q_tile, kv_tile, n_split = choose_tiles(1, self.n_head // self.n_head_kv, self.n_head_kv, kv_idx.shape[0])
        return DecodeSlot(CacheRows.of(k0, type_k, seg_k), CacheRows.of(v0, type_v, seg_v), int(cells[0]), cell_pos,
                          cell_seq, kv_idx, q_pos, q_seq, np.float32(scale), q_tile, kv_tile, n_split)

    def __call__(self, x: np.ndarray, cos: np.ndarray, sin: np.ndarray, view, slot: DecodeSlot) -> None:
        """x [n_embd] f32 (one token's residual stream, updated in place); cos, sin [n_rot/2] f32 its RoPE row;
        view this layer's DenseView (its rows shaped as the slot's)."""
        k, v = view.k, view.v
        if (not isinstance(x, np.ndarray) or x.dtype != np.float32 or x.shape != (self.n_embd,)
                or not x.flags.c_contiguous or not x.flags.writeable):
            raise InvalidArgumentError(f"dense layer: x must be a writable C-contiguous float32 [{self.n_embd}] array")
        half = self.n_rot // 2
        _f32_vec("cos", cos, half)
        _f32_vec("sin", sin, half)
        kc, vc = slot.k.view(k, "dense layer"), slot.v.view(v, "dense layer")
        fd.dense_layer_decode(x, self.attn_norm, self.wq, self.wk, self.wv, self.bq, self.bk, self.bv, self.q_norm,
                              self.k_norm, self.wo, self.post_attn_norm, self.ffn_norm, self.wg, self.wu, self.wd,
                              self.post_ffn_norm, self.gelu_table, self.kinds, self.eps, cos, sin, self.neox,
                              kc, vc, slot.k.kind, slot.v.kind, slot.k.seg, slot.v.seg, slot.cell, slot.cell_pos,
                              slot.cell_seq, slot.kv_idx, slot.q_pos, slot.q_seq, slot.scale, self.n_swa, self.n_head,
                              self.n_head_kv, slot.q_tile, slot.kv_tile, slot.n_split)


def decode_layers(blocks, x: np.ndarray, tables, views, q_pos, q_seq, scale: float) -> None:
    """Every layer of a decoded token, one call each: x [n_embd] f32 updated in place; tables[il] = (cos, sin) of
    layer il's RoPE row, views[il] its DenseView. The cache side is validated once per distinct scan (the global
    and the sliding-window cache of gemma3 have one each) and layer shape."""
    slots = {}
    for block, (cos, sin), view in zip(blocks, tables, views):
        key = (id(view.kv_idx), block.n_head, block.n_head_kv, block.dk, block.dv)
        slot = slots.get(key)
        if slot is None:
            slot = slots[key] = block.slot(view, q_pos, q_seq, scale)
        block(x, cos, sin, view, slot)
