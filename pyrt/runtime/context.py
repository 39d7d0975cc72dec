"""A decoding context: the KV cache, batches split into ubatches, and logits out.

`Context.decode(batch)` is the lower-level API (llama_decode's meaning). It validates the whole batch
before touching the cache, so a bad batch or one that does not fit leaves the state unchanged.
Before a decode, pending cache updates run (K-shift after seq_add/seq_div, a defrag that the last
decode asked for when fragmentation exceeded defrag_thold), as llama_kv_cache_update does.
Sliding-window layers may have their own window-sized cache (llama.cpp's iSWA cache); every cache
operation covers both caches. Calls are serialized by a lock; while a generation (LLM.generate_ids)
holds the context between its tokens, every other call raises BusyError.
"""

from __future__ import annotations

import functools
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

from ..errors import BusyError, ContextOverflowError, DeviceError, InvalidArgumentError
from ..formats.cache_types import CACHE_TYPE_NAMES
from ..kv import state as kv_state
from ..backends import check_device, get_backend, to_host
from ..kv.cache import KVCache
from ..kv.cells import Cells
from ..models.base import DenseView, ForwardInputs, MLAView, Model
from ..ops import paths
from ..ops.attention import attention, scan_order
from . import interrupts

CACHE_TYPES = CACHE_TYPE_NAMES
interrupts.guard_compiles()  # Ctrl-C in a script waits for a safe frame while a kernel compiles or loads
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


def _in_window(cp, cs, pos, seq, n_swa):
    """Which of the scanned cells (positions cp, sequence bits cs) are inside the window of n_swa of some query
    (positions pos, sequences seq) of their sequences."""
    seqs = np.unique(seq)
    if seqs.shape[0] == 1:
        return cp > int(pos.min()) - n_swa
    keep = np.zeros(cp.shape[0], dtype=bool)
    for s in seqs:
        keep |= (((cs >> np.uint64(s)) & np.uint64(1)) != 0) & (cp > int(pos[seq == s].min()) - n_swa)
    return keep


class _KVBinding:
    """What the model sees of the cache(s) for one ubatch: where to store, what to attend to.

    layer_map[il] = (side, il in that side's cache); side 0 is the full-attention cache, side 1 the
    sliding-window one (when the context has it). Per side: the cache, the cells this ubatch writes and,
    computed once per ubatch, the cells scanned in canonical order.
    """

    __slots__ = ("caches", "cells_idx", "pos", "seq", "kv_idx", "mla", "layer_map", "_cells_view", "_groups")

    def __init__(self, caches, cells_idx, pos, seq, mla: int = 3, layer_map=None):
        self.caches, self.cells_idx, self.pos, self.seq = caches, cells_idx, pos, seq
        self.kv_idx = {}  # (side, n_swa, group) -> cells scanned, the same for every layer of that side
        self.mla = mla    # MLA attention mode (-mla 0..3) for MLA models; ignored by the others
        self.layer_map = layer_map
        self._cells_view = {}  # side -> (n_kv, cell_pos, cell_seq): _cells
        self._groups = None  # the rows of each sequence when the ubatch holds several (attend), else []

    @property
    def cache(self) -> KVCache:
        return self.caches[0]

    def _side(self, il):
        return (0, il) if self.layer_map is None else self.layer_map[il]

    def store(self, il, k, v):
        side, j = self._side(il)
        self.caches[side].store(j, self.cells_idx[side], k, v)

    def _scan(self, side, n_swa, g=-1):
        """The cells that the queries of sequence group g (-1: the whole ubatch) scan, in canonical order, less
        those outside the window of every query of their sequences: they are masked anyway, and a window cache
        no longer has them, so both kinds of cache scan the same cells. Once per ubatch, side, window and group
        (the cells do not change during the ubatch's forward)."""
        key = (side, n_swa, g)
        idx = self.kv_idx.get(key)
        if idx is None:
            _, cell_pos, cell_seq = self._cells(side)
            rows = self._seq_rows()[g] if g >= 0 else slice(None)
            pos, seq = self.pos[rows], self.seq[rows]
            idx = scan_order(cell_pos, cell_seq, pos, seq)
            if n_swa > 0 and idx.shape[0]:
                idx = np.ascontiguousarray(idx[_in_window(cell_pos[idx], cell_seq[idx], pos, seq, n_swa)])
            self.kv_idx[key] = idx
        return idx

    def _seq_rows(self):
        """The ubatch's rows of each sequence (sequence ids in order) when it holds several, else []."""
        if self._groups is None:
            seqs = np.unique(self.seq)
            self._groups = [np.flatnonzero(self.seq == s) for s in seqs] if seqs.shape[0] > 1 else []
        return self._groups

    def seq_scans(self, il, n_swa=0):
        """[(rows, kv_idx)] when the ubatch holds several sequences, else []: each sequence's query rows and the
        cells that its lone run scans in layer il (window n_swa). Attention run per sequence over these is tiled and
        split as in the sequence's lone run, so its rows do not depend on what else the ubatch holds (the engine
        batches every generating sequence's decode)."""
        side, _ = self._side(il)
        return [(rows, self._scan(side, int(n_swa), g)) for g, rows in enumerate(self._seq_rows())]

    def attend(self, il, q, scale, n_swa=0, softcap=0.0, head_dim_v=None):
        side, j = self._side(il)
        groups = self.seq_scans(il, n_swa) if type(q) is np.ndarray else []
        if not groups:
            return attention(q, self.caches[side], j, self.pos, self.seq, scale, n_swa=n_swa, softcap=softcap,
                             kv_idx=self._scan(side, int(n_swa)), head_dim_v=head_dim_v)
        out = None
        for rows, kv_idx in groups:
            o = attention(np.ascontiguousarray(q[rows]), self.caches[side], j, self.pos[rows], self.seq[rows], scale,
                          n_swa=n_swa, softcap=softcap, kv_idx=kv_idx, head_dim_v=head_dim_v)
            if out is None:
                out = np.empty((q.shape[0], o.shape[1]), np.float32)
            out[rows] = o
        return out

    def _cells(self, side):
        """(n_kv, cell_pos, cell_seq) of a side's cache: computed once, the cells do not change during the
        ubatch's forward."""
        cells = self._cells_view.get(side)
        if cells is None:
            cache = self.caches[side]
            n_kv = cache.cells.n_kv()
            cells = self._cells_view[side] = (n_kv, cache.cells.pos_array()[:n_kv], cache.cells.seq_array()[:n_kv])
        return cells

    def mla_view(self, il) -> MLAView:
        """For models that run their own attention over a K-only cache (MLA)."""
        side, j = self._side(il)
        cache = self.caches[side]
        n_kv, cell_pos, cell_seq = self._cells(side)
        return MLAView(cache.k[j][:n_kv], cache.type_k, cell_pos, cell_seq, self._scan(side, 0))

    def dense_view(self, il, n_swa=0) -> DenseView | None:
        """For models that run their own decode kernel over a layer's K and V rows (None: a device cache, or
        a layer without V rows); n_swa: the layer's sliding window (its scan leaves out what the window hides)."""
        side, j = self._side(il)
        cache = self.caches[side]
        if cache.backend is not None or cache.v[j] is None:
            return None
        n_kv, cell_pos, cell_seq = self._cells(side)
        seg_k = cache.seg_k[j] if cache.type_k == "q8_KV" else 1
        seg_v = cache.seg_v[j] if cache.type_v == "q8_KV" else 1
        return DenseView(cache.k[j][:n_kv], cache.v[j][:n_kv], cache.type_k, cache.type_v, seg_k, seg_v,
                         self.cells_idx[side], cell_pos, cell_seq, self._scan(side, int(n_swa)))

    def mla_cells(self, il):
        """The cells [n_tok] int32 this ubatch writes in layer il's cache (what `store` writes to)."""
        return self.cells_idx[self._side(il)[0]]


def _int_arg(name: str, v, lo: int | None = None, hi: int | None = None) -> int:
    """v as an int (bool, float and other types refused), checked against [lo, hi]; InvalidArgumentError."""
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
        raise InvalidArgumentError(f"{name} must be an integer, got {type(v).__name__}")
    v = int(v)
    if (lo is not None and v < lo) or (hi is not None and v > hi):
        raise InvalidArgumentError(f"{name} = {v} is out of range [{lo}, {hi}]")
    return v


def _serialized(fn):
    """Runs the method under the context's lock (BusyError while another generation holds it)."""
    @functools.wraps(fn)
    def wrapper(self, *args, **kw):
        with self._guard():
            return fn(self, *args, **kw)
    return wrapper


I32_MAX = 2**31 - 1


class Context:
    """A model, its KV cache(s) and the decode loop.

    `cache` holds the full-attention layers (all layers for models without sliding windows). For a
    model with sliding-window layers (Gemma 3), unless swa_full, those layers get their own smaller
    `cache_swa` of min(n_ctx, n_swa * n_seq_max + n_ubatch) cells (padded to ops.paths' swa_pad, as llama.cpp's
    iSWA cache): cells that no current or future query can see are reused, so only the window stays.
    swa_per_seq: (n_swa + n_ubatch) window cells per sequence instead (what llama-server's slots get
    without -kvu), so that a server's finished sequences keep their prompts whole for prefix reuse while
    every slot runs; the cache stays one pool.
    """

    def __init__(self, model: Model, n_ctx: int = 4096, n_batch: int = 2048, n_ubatch: int = 512,
                 type_k: str = "f16", type_v: str = "f16", n_seq_max: int = 1,
                 defrag_thold: float = DEFRAG_THOLD, mla: int = 3, swa_full: bool = False, device: str = "cpu",
                 swa_per_seq: bool = False):
        hp = model.hp
        self.device = check_device(device)
        if self.device not in model.DEVICES:
            raise DeviceError(f"{hp.arch} models do not run on device {self.device} yet (only on "
                              f"{', '.join(model.DEVICES)})")
        self.backend = get_backend(self.device)  # None on the CPU; DeviceError when the device cannot run
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
        self.swa_full = bool(swa_full)
        # MLA: the mode decides the cache layout (K-only for 1-3)
        k_dims, v_dims, head_k, head_v = model.kv_layout(self.mla)
        if model.is_mla and self.mla > 0:
            from ..ops.mla import check_cache_type
            check_cache_type(type_k)
        n_layer = hp.n_layer
        self.n_swa = int(model.n_swa)
        is_swa = list(model.is_swa) if self.n_swa > 0 else [False] * n_layer
        swa = [il for il in range(n_layer) if is_swa[il]]
        base = [il for il in range(n_layer) if not is_swa[il]]
        self.n_ctx_swa = (swa_cache_size(self.n_ctx, self.n_swa, n_seq_max, self.n_ubatch, per_seq=swa_per_seq)
                          if swa else self.n_ctx)
        self.cache_swa: KVCache | None = None
        self._layer_map = None  # il -> (0 full cache | 1 window cache, layer in that cache); None: all in cache
        if swa and base and not self.swa_full and self.n_ctx_swa < self.n_ctx:
            def pick(v, layers):
                return [v[il] for il in layers] if isinstance(v, (list, tuple)) else v
            self._base_layers, self._swa_layers = base, swa
            self.cache = KVCache(len(base), self.n_ctx, pick(k_dims, base), pick(v_dims, base), type_k, type_v,
                                 n_seq_max=n_seq_max, head_dim_k=pick(head_k, base), head_dim_v=pick(head_v, base),
                                 backend=self.backend)
            self.cache_swa = KVCache(len(swa), self.n_ctx_swa, pick(k_dims, swa), pick(v_dims, swa), type_k,
                                     type_v, n_seq_max=n_seq_max, head_dim_k=pick(head_k, swa),
                                     head_dim_v=pick(head_v, swa), backend=self.backend)
            self._layer_map = [None] * n_layer
            for side, layers in ((0, base), (1, swa)):
                for j, il in enumerate(layers):
                    self._layer_map[il] = (side, j)
        else:
            self.n_ctx_swa = self.n_ctx
            self._base_layers, self._swa_layers = list(range(n_layer)), []
            self.cache = KVCache(n_layer, self.n_ctx, k_dims, v_dims, type_k, type_v, n_seq_max=n_seq_max,
                                 head_dim_k=head_k, head_dim_v=head_v, backend=self.backend)
        self.cells = self.cache.cells
        self.cells_swa = None if self.cache_swa is None else self.cache_swa.cells
        self.timings = Timings()
        self.defrag_thold = float(defrag_thold)
        self._do_defrag = False
        self.n_defrag = 0  # defragmentations run (explicit and automatic)
        self._lock = threading.RLock()
        self._generation = None  # the token of the generation that holds the context between its steps
        self._stepping = 0       # > 0 while that generation runs a step (under the lock)

    # -- one caller at a time ----------------------------------------------------------------------
    @contextmanager
    def _guard(self):
        with self._lock:
            if self._generation is not None and not self._stepping:
                raise BusyError("this context is in use by a generation that has not finished (an iterator "
                                "of generate/chat in this or another thread): exhaust or close() it first")
            yield

    def _begin_generation(self, token) -> None:
        with self._guard():
            self._generation = token

    def _end_generation(self, token) -> None:
        with self._lock:
            if self._generation is token:
                self._generation = None

    @contextmanager
    def _step(self, token):
        """One step of the generation `token`: other threads wait, nested calls of this one pass."""
        with self._lock:
            if self._generation is not token:
                raise BusyError("this generation no longer holds the context")
            self._stepping += 1
            try:
                yield
            finally:
                self._stepping -= 1

    def _check_seq(self, name: str, seq_id, allow_all: bool = False) -> int:
        return _int_arg(name, seq_id, -1 if allow_all else 0, self.n_seq_max - 1)

    @property
    def n_vocab(self) -> int:
        return self.model.hp.n_vocab

    @property
    def caches(self) -> list[KVCache]:
        """The full-attention cache, then the window cache when there is one."""
        return [self.cache] if self.cache_swa is None else [self.cache, self.cache_swa]

    def layer_cache(self, il: int) -> tuple[KVCache, int]:
        """(the cache holding model layer il, its layer index in that cache)."""
        if self._layer_map is None:
            return self.cache, il
        side, j = self._layer_map[il]
        return self.caches[side], j

    def _validate(self, batch: Batch) -> None:
        if not isinstance(batch, Batch):
            raise InvalidArgumentError(f"decode: expected a Batch, got {type(batch).__name__}")
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
        if self.cache_swa is not None:  # the window cache: play the ubatches on a scratch copy of its cells
            scratch = Cells(self.cells_swa.size, self.cells_swa.n_seq_max)
            scratch.set_state(*self.cells_swa.get_state())
            for s in range(0, n, self.n_ubatch):
                e = min(n, s + self.n_ubatch)
                self._make_room_swa(scratch, batch, s, e)
                if e - s > scratch.size - scratch.used:
                    raise ContextOverflowError(
                        f"the sliding-window KV cache ({scratch.size} cells) has only {scratch.size - scratch.used} "
                        f"free for a ubatch of {e - s} tokens: its sequences hold cells that later tokens may "
                        f"still see (positions out of order?); use swa_full / --swa-full")
                scratch.find_slot(batch.pos[s:e], batch.seq_id[s:e])

    def _make_room_swa(self, cells, batch: Batch, s: int, e: int) -> None:
        """Before the ubatch [s, e): if the window cache lacks free cells, free those no query can see
        any more (for a sequence, the batch's remaining tokens [s, n) count as its next positions)."""
        if e - s <= cells.size - cells.used:
            return
        p_next = {}
        for q in np.unique(batch.seq_id[s:]):
            p_next[int(q)] = int(batch.pos[s:][batch.seq_id[s:] == q].min())
        kv_state.prune_window(cells, self.n_swa, p_next)

    @_serialized
    def decode(self, batch: Batch) -> np.ndarray:
        """Evaluates the batch; returns logits [n_wanted, n_vocab] f32 in batch order."""
        self._validate(batch)
        self.update()
        t0 = time.perf_counter()
        n = len(batch)
        outs = []
        taken = []  # (cells, indices) of every find_slot of this call, freed again if the call fails
        try:
            for s in range(0, n, self.n_ubatch):
                logits = self._ubatch(batch, s, min(n, s + self.n_ubatch), taken)
                if logits is not None:
                    outs.append(logits)
        except BaseException:
            # any failure (an interrupt, memory, a device error) leaves the cells as they were: the batch's
            # tokens are not in the cache (cells the window cache freed for it, which no query of these
            # positions could see, stay free)
            for cells, idx in reversed(taken):
                cells.free_cells(idx)
            raise
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

    def _ubatch(self, batch: Batch, s: int, e: int, taken: list) -> np.ndarray | None:
        """Tokens [s, e) of the batch through the model: their logits, None if none is wanted."""
        tok = np.ascontiguousarray(batch.token[s:e], dtype=np.int32)
        pos = np.ascontiguousarray(batch.pos[s:e], dtype=np.int32)
        seq = np.ascontiguousarray(batch.seq_id[s:e], dtype=np.int32)
        out_rows = np.flatnonzero(batch.logits[s:e]).astype(np.int32)
        try:
            cells_idx = [self.cells.find_slot(pos, seq)]
            taken.append((self.cells, cells_idx[0]))
            if self.cache_swa is not None:
                self._make_room_swa(self.cells_swa, batch, s, e)
                cells_idx.append(self.cells_swa.find_slot(pos, seq))
                taken.append((self.cells_swa, cells_idx[1]))
        except Exception as ex:  # validated above; only reached if the cells disagree
            raise ContextOverflowError(f"no KV cells for the ubatch: {ex}") from None
        kv = _KVBinding(self.caches, cells_idx, pos, seq, self.mla, self._layer_map)
        # on a device the token ids go there (the forward runs where its inputs are); logits come back
        tok_in = tok if self.backend is None else self.backend.upload(tok)
        logits = to_host(self.model.forward(ForwardInputs(tok_in, pos, seq, out_rows, kv)))
        return logits if out_rows.shape[0] else None

    # -- cache maintenance (llama_kv_cache_update) ------------------------------------------------
    def rope_params(self) -> list:
        """Per-layer (n_rot, freq_base, freq_scale, freq_factors, mode) from the model, for the K-shift."""
        return [self.model.rope_params(il) for il in range(self.model.hp.n_layer)]

    def _rope_of(self, layers) -> list:
        rope = self.rope_params()
        return [rope[il] for il in layers]

    def _k_shift(self) -> None:
        """Re-rotate each cache's keys with the RoPE parameters of its own layers."""
        for cache, layers in ((self.cache, self._base_layers), (self.cache_swa, self._swa_layers)):
            if cache is not None and cache.cells.has_shift:
                cache.k_shift(self._rope_of(layers), rope_offset=self.model.k_rope_offset(self.mla))

    @_serialized
    def update(self) -> None:
        """Apply pending cache work: the K-shift after seq_add/seq_div, then a requested defrag."""
        self._k_shift()
        if self._do_defrag:
            self.defrag()

    @_serialized
    def defrag(self) -> int:
        """Compact the used cells of every cache now (logits are unchanged, bit for bit); returns the rows moved."""
        self._do_defrag = False
        self.n_defrag += 1
        return sum(c.defrag() for c in self.caches)

    # -- sequences (llama.cpp's llama_memory_seq_* semantics, on every cache) ----------------------
    @_serialized
    def clear(self) -> None:
        for c in self.caches:
            c.cells.clear()
        self._do_defrag = False

    @_serialized
    def seq_rm(self, seq_id: int, p0: int = -1, p1: int = -1) -> bool:
        seq_id, p0, p1 = self._check_seq("seq_id", seq_id, True), _int_arg("p0", p0), _int_arg("p1", p1)
        ok = self.cells.seq_rm(seq_id, p0, p1)
        if self.cells_swa is not None:
            ok = self.cells_swa.seq_rm(seq_id, p0, p1) and ok
        return ok

    @_serialized
    def seq_cp(self, seq_src: int, seq_dst: int, p0: int = -1, p1: int = -1) -> None:
        seq_src, seq_dst = self._check_seq("seq_src", seq_src), self._check_seq("seq_dst", seq_dst)
        p0, p1 = _int_arg("p0", p0), _int_arg("p1", p1)
        for c in self.caches:
            c.cells.seq_cp(seq_src, seq_dst, p0, p1)

    @_serialized
    def seq_keep(self, seq_id: int) -> None:
        seq_id = self._check_seq("seq_id", seq_id)
        for c in self.caches:
            c.cells.seq_keep(seq_id)

    @_serialized
    def seq_add(self, seq_id: int, p0: int, p1: int, delta: int) -> None:
        """Shift positions in [p0, p1) by delta; the cached keys are re-rotated before the next decode."""
        seq_id, p0, p1 = self._check_seq("seq_id", seq_id), _int_arg("p0", p0), _int_arg("p1", p1)
        delta = _int_arg("delta", delta, -I32_MAX, I32_MAX)
        for c in self.caches:
            c.cells.seq_add(seq_id, p0, p1, delta)

    @_serialized
    def seq_div(self, seq_id: int, p0: int, p1: int, d: int) -> None:
        seq_id, p0, p1 = self._check_seq("seq_id", seq_id), _int_arg("p0", p0), _int_arg("p1", p1)
        d = _int_arg("d", d, 1, I32_MAX)
        for c in self.caches:
            c.cells.seq_div(seq_id, p0, p1, d)

    @_serialized
    def seq_pos_min(self, seq_id: int) -> int:
        seq_id = self._check_seq("seq_id", seq_id)
        return self.cells.seq_pos_min(seq_id)

    @_serialized
    def seq_pos_max(self, seq_id: int) -> int:
        seq_id = self._check_seq("seq_id", seq_id)
        return self.cells.seq_pos_max(seq_id)

    def seq_resume_pos(self, seq_id: int, p: int) -> int:
        """The largest position q <= p from which sequence seq_id can be decoded again (after
        seq_rm(seq_id, q, -1)) with the same result as with full-size caches.

        Without a window cache that is p. With one, every earlier position that the token at q sees,
        [max(0, q - n_swa + 1), q), must still be cached (positions below 0 do not exist, so a prompt
        shorter than the window resumes anywhere): a rollback further back than what the window cache
        kept (its pruned cells are gone) has to re-evaluate from an earlier position, often 0.
        """
        p = int(p)
        if self.cells_swa is None or p <= 0:
            return max(p, 0)
        cells = self.cells_swa
        if not 0 <= seq_id < cells.n_seq_max:
            raise InvalidArgumentError(f"seq_resume_pos: sequence {seq_id} out of range [0, {cells.n_seq_max})")
        pos, seq = cells.pos_array(), cells.seq_array()
        mine = pos[(pos >= 0) & (pos < p) & (((seq >> np.uint64(seq_id)) & np.uint64(1)) != 0)]
        have = np.zeros(p, dtype=bool)  # [p] positions of the sequence that the window cache holds
        have[mine] = True
        # last_missing[q] = largest missing position < q (-1 if none), for q in [0, p]
        idx = np.where(~have, np.arange(p), -1)
        last_missing = np.concatenate(([-1], np.maximum.accumulate(idx)))
        q = np.arange(p + 1)
        ok = last_missing < np.maximum(q - self.n_swa + 1, 0)
        return int(np.flatnonzero(ok)[-1])

    # -- state save / restore (pyrt.kv.state) ------------------------------------------------------
    def _fingerprint(self) -> dict:
        hp = self.model.hp
        n_rot = [p[0] for p in self.rope_params()]
        fid = self.model.fingerprint()  # build_model's lazy GGUFFile.fingerprint
        fp = dict(arch=f"{hp.arch}@{fid}" if fid else hp.arch, n_rot=[n_rot[il] for il in self._base_layers])
        if self.cache_swa is not None:
            fp.update(cache_swa=self.cache_swa, n_rot_swa=[n_rot[il] for il in self._swa_layers])
        return fp

    def _state_args(self, tokens, seq_id) -> tuple[list[int], int]:
        seq_id = self._check_seq("seq_id", seq_id, allow_all=True)
        try:
            toks = [_int_arg("token id", t, -2**31, I32_MAX) for t in tokens]
        except TypeError:
            raise InvalidArgumentError(f"tokens must be a sequence of token ids, got {type(tokens).__name__}") from None
        return toks, seq_id

    @_serialized
    def save_state(self, tokens=(), seq_id: int = -1) -> bytes:
        """The whole cache (seq_id = -1) or one sequence, with `tokens`, in pyrt's state format
        (a context with a window cache writes both caches)."""
        tokens, seq_id = self._state_args(tokens, seq_id)
        self._k_shift()
        return kv_state.save_state(self.cache, tokens, seq_id, **self._fingerprint())

    def _load_kw(self) -> dict:
        kw = self._fingerprint()
        if self.cache_swa is not None:
            kw["n_swa"] = self.n_swa
        return kw

    @_serialized
    def load_state(self, data, seq_id: int = -1) -> list[int]:
        """Restore a state from save_state; returns its tokens. StateError leaves every cache unchanged."""
        seq_id = self._check_seq("seq_id", seq_id, allow_all=True)
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise InvalidArgumentError(f"load_state: expected bytes from save_state, got {type(data).__name__} "
                                       f"(load_file reads a file)")
        toks = kv_state.load_state(self.cache, data, seq_id, **self._load_kw())
        self._k_shift()  # a saved pending shift
        return toks

    @_serialized
    def save_file(self, path, tokens=(), seq_id: int = -1) -> int:
        """save_state to a file, replaced whole or not at all; StateFileError (an OSError) if it cannot be
        written."""
        tokens, seq_id = self._state_args(tokens, seq_id)
        self._k_shift()
        return kv_state.save_file(path, self.cache, tokens, seq_id, **self._fingerprint())

    @_serialized
    def load_file(self, path, seq_id: int = -1) -> list[int]:
        seq_id = self._check_seq("seq_id", seq_id, allow_all=True)
        toks = kv_state.load_file(path, self.cache, seq_id, **self._load_kw())
        self._k_shift()
        return toks

    def memory_report(self) -> str:
        """llama.cpp's `KV self size` line (both caches together); with a window cache, one line per cache
        as llama.cpp's iSWA cache logs them (non-SWA, then SWA)."""
        if self.cache_swa is None:
            return self.cache.size_report()
        mib = 1024.0 * 1024.0
        k = sum(c.k_bytes() for c in self.caches)
        v = sum(c.v_bytes() for c in self.caches)
        return "\n".join([
            f"KV self size  = {(k + v) / mib:7.2f} MiB, K ({self.cache.type_k}): {k / mib:7.2f} MiB, "
            f"V ({self.cache.type_v}): {v / mib:7.2f} MiB",
            f"non-SWA KV cache: {self.cache.size_report_mainline()}",
            f"    SWA KV cache: {self.cache_swa.size_report_mainline()} (window {self.n_swa})"])


def swa_cache_size(n_ctx: int, n_swa: int, n_seq_max: int = 1, n_ubatch: int = 512, pad: int | None = None,
                   per_seq: bool = False) -> int:
    """Cells of the sliding-window cache (llama_kv_cache_iswa): min(n_ctx, n_swa * n_seq_max + n_ubatch)
    rounded up to `pad` (ops.paths' swa_pad, 256 as llama.cpp), and never more than n_ctx. per_seq:
    (n_swa + n_ubatch) * n_seq_max instead (llama-server's slots without -kvu, each its own iSWA cache)."""
    pad = paths.current().swa_pad if pad is None else int(pad)
    n_seq_max = int(n_seq_max)
    n = (int(n_swa) + int(n_ubatch)) * n_seq_max if per_seq else int(n_swa) * n_seq_max + int(n_ubatch)
    n = min(int(n_ctx), n)
    return min(int(n_ctx), -(-n // pad) * pad)
