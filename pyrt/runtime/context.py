"""A decoding context: the KV cache, batches split into ubatches, and logits out.

`Context.decode(batch)` is the lower-level API (llama_decode's meaning). It validates the whole batch
before touching the cache, so a bad batch or one that does not fit leaves the state unchanged.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from ..errors import ContextOverflowError, InvalidArgumentError
from ..kv.cache import KVCache
from ..models.base import ForwardInputs
from ..ops.attention import attention

CACHE_TYPES = ("f32", "f16", "bf16", "q8_0")


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

    __slots__ = ("cache", "cells_idx", "pos", "seq")

    def __init__(self, cache: KVCache, cells_idx, pos, seq):
        self.cache, self.cells_idx, self.pos, self.seq = cache, cells_idx, pos, seq

    def store(self, il, k, v):
        self.cache.store(il, self.cells_idx, k, v)

    def attend(self, il, q, scale, n_swa=0, softcap=0.0):
        return attention(q, self.cache, il, self.pos, self.seq, scale, n_swa=n_swa, softcap=softcap)


class Context:
    def __init__(self, model, n_ctx: int = 4096, n_batch: int = 2048, n_ubatch: int = 512,
                 type_k: str = "f16", type_v: str = "f16", n_seq_max: int = 1):
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
        k_dims, v_dims = model.kv_dims()
        self.cache = KVCache(hp.n_layer, self.n_ctx, k_dims, v_dims, type_k, type_v, n_seq_max=n_seq_max)
        self.cells = self.cache.cells
        self.timings = Timings()

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
            inp = ForwardInputs(tok, pos, seq, out_rows, _KVBinding(self.cache, cells_idx, pos, seq))
            logits = self.model.forward(inp)
            if out_rows.shape[0]:
                outs.append(logits)
        dt = time.perf_counter() - t0
        if n > 1:
            self.timings.n_p_eval += n
            self.timings.t_p_eval += dt
        else:
            self.timings.n_eval += 1
            self.timings.t_eval += dt
        if not outs:
            return np.empty((0, self.n_vocab), dtype=np.float32)
        return outs[0] if len(outs) == 1 else np.concatenate(outs)

    # sequence helpers the generator uses; the full set lives on the cells
    def clear(self) -> None:
        self.cells.clear()

    def seq_rm(self, seq_id: int, p0: int, p1: int) -> None:
        self.cells.seq_rm(seq_id, p0, p1)

    def memory_report(self) -> str:
        return self.cache.size_report()
