"""The engine's slots and the sequence states kept outside the cells.

`Slot` i holds sequence id i of the engine's `Context` and the `Active` request running in it, if any.
`save_slot` / `restore_slot` / `erase_slot` run in the engine thread (through `Engine.call`) on an idle slot.
`SessionStore` keeps the session state files of requests (`Request.state_path`): the tokens each holds, and
the writer thread that writes a finished turn's sequence there after the reply.
Imports pyrt.runtime (sampling, constrain), pyrt.kv.state (state file heads), pyrt.io.files and pyrt.errors.
"""

from __future__ import annotations

import concurrent.futures
import os
import sys
import threading
import time

from ..errors import InvalidArgumentError, PyrtError, StateError, StateFileError
from ..io.files import write_file_atomic
from ..kv import state as kv_state
from ..runtime.sampling import Sampler
from .requests import Request, TextStream, TokenInfo


class SlotBusyError(PyrtError):
    """A slot operation on a slot that is processing a request."""


class Active:
    """A request running in a slot."""

    def __init__(self, req: Request, engine):
        p = req.params
        self.req = req
        self.params = p
        self.sampler = Sampler(p.sampling(), engine.ctx.n_ctx)
        self.history = list(req.prompt)
        self.text = TextStream(engine.tokenizer, p.stop)
        self.next_tok: int | None = None  # sampled, to be evaluated in the next step (generating phase)
        self.n_gen = 0
        self.tokens: list[TokenInfo] = []
        self.unsent: list[TokenInfo] = []
        self.cache_n = 0
        self.prompt_n = 0
        self.t_start = time.perf_counter()
        self.t_first = 0.0
        self.constraint = None  # a pyrt.runtime.constrain.Constraint when params.constraint is set
        self.mask_future = None  # its mask for the next token, being computed in the engine's mask pool
        if p.constraint is not None:
            from ..runtime.constrain import engine_for
            self.constraint = engine_for(engine.tokenizer).constraint(*p.constraint)

    @property
    def generating(self) -> bool:
        return self.next_tok is not None


class Slot:
    def __init__(self, i: int):
        self.id = i
        self.tokens: list[int] = []  # what the sequence holds in the cache, positions 0..len-1
        self.act: Active | None = None
        self.t_last = 0.0            # last use, for LRU eviction of idle caches
        self.n_task = -1


# -- slot state, engine thread (`engine` is the pyrt.engine.Engine) ----------------------------------------
def save_slot(engine, slot_id: int, path: str) -> dict:
    s = idle_slot(engine, slot_id)
    t0 = time.perf_counter()
    n = engine.ctx.save_file(path, s.tokens, s.id)
    return dict(id_slot=s.id, n_saved=len(s.tokens), n_written=int(n),
                timings=dict(save_ms=(time.perf_counter() - t0) * 1000.0))


def restore_slot(engine, slot_id: int, data: bytes) -> dict:
    """Restores a sequence state (validated in full first: a StateError leaves the cache as it was)."""
    s = idle_slot(engine, slot_id)
    t0 = time.perf_counter()
    toks = restore_with_room(engine, s, data)
    s.tokens = list(toks)
    s.t_last = time.perf_counter()
    engine._publish()
    return dict(id_slot=s.id, n_restored=len(toks), n_read=len(data),
                timings=dict(restore_ms=(time.perf_counter() - t0) * 1000.0))


def restore_with_room(engine, s: Slot, data: bytes) -> list[int]:
    """Loads a sequence state into the slot; its tokens. Idle caches give up their cells while it does not fit."""
    while True:
        try:
            return engine.ctx.load_state(data, s.id)
        except StateError as e:
            # not enough free cells: give it the cells of idle caches, then try again
            if "cells needed" in str(e) and engine._evict_one(exclude=s):
                continue
            raise


def erase_slot(engine, slot_id: int) -> dict:
    s = idle_slot(engine, slot_id)
    n = len(s.tokens)
    engine.ctx.seq_rm(s.id, -1, -1)
    s.tokens = []
    engine._publish()
    return dict(id_slot=s.id, n_erased=n)


def idle_slot(engine, slot_id: int) -> Slot:
    if not 0 <= slot_id < engine.n_parallel:
        raise InvalidArgumentError(f"slot {slot_id} out of range [0, {engine.n_parallel})")
    s = engine.slots[slot_id]
    if s.act is not None:
        raise SlotBusyError(f"slot {slot_id} is processing a request")
    return s


class SessionStore:
    """Session state files: their tokens by path (keyed by the file's stat) and their writer thread."""

    def __init__(self):
        self._tokens: dict[str, tuple] = {}
        self._lock = threading.Lock()
        self._writer: concurrent.futures.ThreadPoolExecutor | None = None  # writes session state files
        self.n_saved = 0
        self.n_restored = 0
        self.t_save = 0.0

    def shutdown(self) -> None:
        if self._writer is not None:
            self._writer.shutdown(wait=True)  # the session states of finished turns reach the disk
            self._writer = None

    def save(self, ctx, s: Slot, path: str) -> None:
        """The slot's sequence to the request's state file: copied here (between steps), written and renamed
        into place by the state writer thread, so that neither the reply nor the next step waits for the disk;
        a failure is reported, not fatal."""
        t0 = time.perf_counter()
        try:
            data = ctx.save_state(s.tokens, s.id)
        except StateError as e:
            print(f"pyrt engine: warning: cannot save the session state {path}: {e}", file=sys.stderr, flush=True)
            return
        self.t_save += time.perf_counter() - t0
        if self._writer is None:
            self._writer = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="pyrt-state")
        self._writer.submit(self._write, path, data, list(s.tokens))

    def _write(self, path: str, data: bytes, tokens: list[int]) -> None:
        try:
            write_file_atomic(path, [data], what="session state", error=StateFileError)
        except OSError as e:
            print(f"pyrt engine: warning: cannot save the session state {path}: {e}", file=sys.stderr, flush=True)
            return
        with self._lock:
            self._tokens[path] = (_file_key(path), tokens)
            self.n_saved += 1

    def wait_saved(self) -> None:
        """Wait until every session state handed to the writer so far is on disk."""
        w = self._writer
        if w is not None:
            w.submit(lambda: None).result()

    def tokens(self, path: str) -> list[int]:
        """The tokens of a state file ([] when there is none or it cannot be read), remembered while the file
        is unchanged, so that a session served here reads only its own writes."""
        key = _file_key(path)
        with self._lock:
            if key is None:
                self._tokens.pop(path, None)
                return []
            hit = self._tokens.get(path)
            if hit is not None and hit[0] == key:
                return hit[1]
        try:
            toks = kv_state.read_tokens(path)
        except (OSError, StateError):
            toks = []
        with self._lock:
            if len(self._tokens) >= 4096:
                self._tokens.pop(next(iter(self._tokens)))
            self._tokens[path] = (key, toks)
        return toks

    def forget(self, path: str) -> None:
        """Drops what is remembered of a state file (one that could not be restored)."""
        with self._lock:
            self._tokens.pop(path, None)


def _file_key(path: str):
    """(mtime, size, inode) of a file, None when it does not exist."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino)
