"""A decoding context: the KV cache, batches split into ubatches, and logits out.

`Context.decode(batch)` is the lower-level API (llama_decode's meaning). It validates the whole batch
before touching the cache, so a bad batch or one that does not fit leaves the state unchanged.
Before a decode, pending cache updates run (K-shift after seq_add/seq_div, a defrag that the last
decode asked for when fragmentation exceeded defrag_thold), as llama_kv_cache_update does.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from ..errors import ContextOverflowError, InvalidArgumentError, UnsupportedError
from ..kv import state as kv_state
from ..kv.cache import KVCache
from ..models.base import ForwardInputs
from ..ops.attention import attention, scan_order

CACHE_TYPES = ("f32", "f16", "bf16", "q8_0", "q8_KV")
# llama.cpp mainline's default (common_params.defrag_thold = 0.1): defragment after a decode that leaves
# more than 10% of the scanned cells [0, n_kv) free. Negative disables it (ik_llama.cpp's default).
DEFRAG_THOLD = 0.1


@dataclass
class Batch:
    """Entries of (token, position, sequence id, wants-logits); numpy arrays of equal length."""

    token: np.ndarray   # [n] int32
    pos: np.ndarray     # [n] int32
    seq_id: np.ndarray  # [n] int32
    logits: np.ndarray  # [n] bool

    @classmethod
    def from_tokens(cls, tokens, pos0: int = 0, seq_id: int = 0, logits: str = "last") -> "Batch":
        """logits: 'last', 'all' or 'none'."""
        tok = np.asarray(tokens, dtype=np.int64)
        n = tok.shape[0]
        want = np.zeros(n, dtype=bool)
        if logits == "all":
            want[:] = True
        elif logits == "last" and n:
            want[-1] = True
        elif logits not in ("last", "none"):
            raise InvalidArgumentError(f"logits must be 'last', 'all' or 'none', got {logits!r}")
        return cls(tok, np.arange(pos0, pos0 + n, dtype=np.int64), np.full(n, seq_id, dtype=np.int64), want)

    def __len__(self) -> int:
        return int(self.token.shape[0])


@dataclass
class Timings:
    n_p_eval: int = 0
    t_p_eval: float = 0.0
    n_eval: int = 0
    t_eval: float = 0.0

    def reset(self) -> None:
        self.n_p_eval = self.n_eval = 0
        self.t_p_eval = self.t_eval = 0.0


class _KVBinding:
    """What the model sees of the cache for one ubatch: where to store, what to attend to."""

    __slots__ = ("cache", "cells_idx", "pos", "seq", "kv_idx", "mla")

    def __init__(self, cache: KVCache, cells_idx, pos, seq, mla: int = 3):
        self.cache, self.cells_idx, self.pos, self.seq = cache, cells_idx, pos, seq
        self.kv_idx = None  # the cells this ubatch scans, in canonical order: the same for every layer
        self.mla = mla      # MLA attention mode (-mla 0..3) for MLA models; ignored by the others

    def store(self, il, k, v):
        self.cache.store(il, self.cells_idx, k, v)

    def attend(self, il, q, scale, n_swa=0, softcap=0.0, head_dim_v=None):
        if self.kv_idx is None:
            n_kv = self.cache.cells.n_kv()
            self.kv_idx = scan_order(self.cache.cells.pos_array()[:n_kv], self.cache.cells.seq_array()[:n_kv],
                                     self.pos, self.seq)
        return attention(q, self.cache, il, self.pos, self.seq, scale, n_swa=n_swa, softcap=softcap,
                         kv_idx=self.kv_idx, head_dim_v=head_dim_v)

    def mla_view(self, il):
        """For models that run their own attention over a K-only cache (MLA): (K rows [n_kv, row] in the
        storage dtype, type_k, cell_pos [n_kv] int32, cell_seq [n_kv] uint64, kv_idx int32 in scan order)."""
        n_kv = self.cache.cells.n_kv()
        cell_pos = self.cache.cells.pos_array()[:n_kv]
        cell_seq = self.cache.cells.seq_array()[:n_kv]
        if self.kv_idx is None:
            self.kv_idx = scan_order(cell_pos, cell_seq, self.pos, self.seq)
        return self.cache.k[il][:n_kv], self.cache.type_k, cell_pos, cell_seq, self.kv_idx


class Context:
    def __init__(self, model, n_ctx: int = 4096, n_batch: int = 2048, n_ubatch: int = 512,
                 type_k: str = "f16", type_v: str = "f16", n_seq_max: int = 1,
                 defrag_thold: float = DEFRAG_THOLD, mla: int = 3):
        hp = model.hp
        if n_ctx <= 0:
            n_ctx = hp.n_ctx_train
        for name, v in (("n_ctx", n_ctx), ("n_batch", n_batch), ("n_ubatch", n_ubatch)):
            if int(v) <= 0:
                raise InvalidArgumentError(f"{name} must be positive, got {v}")
        for name, t in (("type_k", type_k), ("type_v", type_v)):
            if t not in CACHE_TYPES:
                raise InvalidArgumentError(f"{name} {t!r} is not supported (choose from {', '.join(CACHE_TYPES)})")
        self.model = model
        self.n_ctx = int(n_ctx)
        self.n_batch = min(int(n_batch), self.n_ctx)
        self.n_ubatch = min(int(n_ubatch), self.n_batch)
        self.n_seq_max = n_seq_max
        self.mla = int(mla)
        if getattr(model, "is_mla", False):  # MLA: the mode decides the cache layout (K-only for 1-3)
            k_dims, v_dims, head_k, head_v = model.kv_layout(self.mla)
            if self.mla > 0:
                from ..ops.mla import check_cache_type
                check_cache_type(type_k)
        else:
            k_dims, v_dims = model.kv_dims()
            head_k, head_v = hp.n_embd_head_k, hp.n_embd_head_v
        self.cache = KVCache(hp.n_layer, self.n_ctx, k_dims, v_dims, type_k, type_v, n_seq_max=n_seq_max,
                             head_dim_k=head_k, head_dim_v=head_v)
        self.cells = self.cache.cells
        self.timings = Timings()
        self.defrag_thold = float(defrag_thold)
        self._do_defrag = False
        self.n_defrag = 0  # defragmentations run (explicit and automatic)

    @property
    def n_vocab(self) -> int:
        return self.model.hp.n_vocab

    def _validate(self, batch: Batch) -> None:
        n = len(batch)
        if n == 0:
            raise InvalidArgumentError("decode: empty batch")
        if not (batch.pos.shape == batch.seq_id.shape == batch.logits.shape == (n,)):
            raise InvalidArgumentError("decode: batch arrays have different lengths")
        if n > self.n_batch:
            raise InvalidArgumentError(f"decode: batch of {n} tokens exceeds n_batch = {self.n_batch}")
        tok = batch.token
        if tok.min() < 0 or tok.max() >= self.n_vocab:
            bad = int(tok[(tok < 0) | (tok >= self.n_vocab)][0])
            raise InvalidArgumentError(f"decode: token id {bad} is out of range [0, {self.n_vocab})")
        if batch.pos.min() < 0 or batch.pos.max() >= 2**31 - 1:
            raise InvalidArgumentError("decode: positions must be in [0, 2^31-1)")
        if batch.seq_id.min() < 0 or batch.seq_id.max() >= self.n_seq_max:
            raise InvalidArgumentError(f"decode: sequence ids must be in [0, {self.n_seq_max})")
        free = self.cells.size - self.cells.used
        if n > free:
            raise ContextOverflowError(
                f"the batch needs {n} KV cells but only {free} of n_ctx = {self.n_ctx} are free "
                f"(increase -c / n_ctx)")

    def decode(self, batch: Batch) -> np.ndarray:
        """Evaluates the batch; returns logits [n_wanted, n_vocab] f32 in batch order."""
        self._validate(batch)
        self.update()
        t0 = time.perf_counter()
        n = len(batch)
        outs = []
        for s in range(0, n, self.n_ubatch):
            e = min(n, s + self.n_ubatch)
            tok = np.ascontiguousarray(batch.token[s:e], dtype=np.int32)
            pos = np.ascontiguousarray(batch.pos[s:e], dtype=np.int32)
            seq = np.ascontiguousarray(batch.seq_id[s:e], dtype=np.int32)
            out_rows = np.flatnonzero(batch.logits[s:e]).astype(np.int32)
            try:
                cells_idx = self.cells.find_slot(pos, seq)
            except Exception as ex:  # validated above; only reached if the cells disagree
                raise ContextOverflowError(f"no KV cells for the ubatch: {ex}") from None
            inp = ForwardInputs(tok, pos, seq, out_rows, _KVBinding(self.cache, cells_idx, pos, seq, self.mla))
            logits = self.model.forward(inp)
            if out_rows.shape[0]:
                outs.append(logits)
        dt = time.perf_counter() - t0
        if self.defrag_thold >= 0 and self.cells.fragmentation() > self.defrag_thold:
            self._do_defrag = True  # as llama.cpp: run at the start of the next update
        if n > 1:
            self.timings.n_p_eval += n
            self.timings.t_p_eval += dt
        else:
            self.timings.n_eval += 1
            self.timings.t_eval += dt
        if not outs:
            return np.empty((0, self.n_vocab), dtype=np.float32)
        return outs[0] if len(outs) == 1 else np.concatenate(outs)

    # -- cache maintenance (llama_kv_cache_update) ------------------------------------------------
    def rope_params(self) -> list:
        """Per-layer (n_rot, freq_base, freq_scale, freq_factors, mode) from the model, for the K-shift."""
        if not hasattr(self.model, "rope_params"):
            raise UnsupportedError(f"{self.model.hp.arch}: this model cannot shift its KV cache (no K-shift)")
        return [self.model.rope_params(il) for il in range(self.model.hp.n_layer)]

    def update(self) -> None:
        """Apply pending cache work: the K-shift after seq_add/seq_div, then a requested defrag."""
        if self.cells.has_shift:
            self.cache.k_shift(self.rope_params())
        if self._do_defrag:
            self.defrag()

    def defrag(self) -> int:
        """Compact the used cells now (logits are unchanged, bit for bit); returns the rows moved."""
        self._do_defrag = False
        self.n_defrag += 1
        return self.cache.defrag()

    # -- sequences (llama.cpp's llama_memory_seq_* semantics) --------------------------------------
    def clear(self) -> None:
        self.cells.clear()
        self._do_defrag = False

    def seq_rm(self, seq_id: int, p0: int = -1, p1: int = -1) -> bool:
        return self.cells.seq_rm(seq_id, p0, p1)

    def seq_cp(self, seq_src: int, seq_dst: int, p0: int = -1, p1: int = -1) -> None:
        self.cells.seq_cp(seq_src, seq_dst, p0, p1)

    def seq_keep(self, seq_id: int) -> None:
        self.cells.seq_keep(seq_id)

    def seq_add(self, seq_id: int, p0: int, p1: int, delta: int) -> None:
        """Shift positions in [p0, p1) by delta; the cached keys are re-rotated before the next decode."""
        self.cells.seq_add(seq_id, p0, p1, delta)

    def seq_div(self, seq_id: int, p0: int, p1: int, d: int) -> None:
        self.cells.seq_div(seq_id, p0, p1, d)

    def seq_pos_min(self, seq_id: int) -> int:
        return self.cells.seq_pos_min(seq_id)

    def seq_pos_max(self, seq_id: int) -> int:
        return self.cells.seq_pos_max(seq_id)

    # -- state save / restore (pyrt.kv.state) ------------------------------------------------------
    def _fingerprint(self) -> dict:
        hp = self.model.hp
        n_rot = [p[0] for p in self.rope_params()] if hasattr(self.model, "rope_params") else hp.n_rot
        return dict(arch=hp.arch, n_rot=n_rot)

    def save_state(self, tokens=(), seq_id: int = -1) -> bytes:
        """The whole cache (seq_id < 0) or one sequence, with `tokens`, in pyrt's state format."""
        if self.cells.has_shift:
            self.cache.k_shift(self.rope_params())
        return kv_state.save_state(self.cache, tokens, seq_id, **self._fingerprint())

    def load_state(self, data, seq_id: int = -1) -> list[int]:
        """Restore a state from save_state; returns its tokens. StateError leaves the cache unchanged."""
        toks = kv_state.load_state(self.cache, data, seq_id, **self._fingerprint())
        if self.cells.has_shift:  # a saved pending shift
            self.cache.k_shift(self.rope_params())
        return toks

    def save_file(self, path, tokens=(), seq_id: int = -1) -> int:
        if self.cells.has_shift:
            self.cache.k_shift(self.rope_params())
        return kv_state.save_file(path, self.cache, tokens, seq_id, **self._fingerprint())

    def load_file(self, path, seq_id: int = -1) -> list[int]:
        toks = kv_state.load_file(path, self.cache, seq_id, **self._fingerprint())
        if self.cells.has_shift:
            self.cache.k_shift(self.rope_params())
        return toks

    def memory_report(self) -> str:
        return self.cache.size_report()
