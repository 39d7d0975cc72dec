"""Continuous batching over one `Context`: `Engine` runs every request in one engine thread.

Each step decodes the next token of every generating sequence in one `Context.decode` (N rows through
each weight matrix at once), then evaluates chunks of the prompts waiting (up to n_ubatch tokens per
step, each chunk its own decode), so running streams never wait behind a long prompt and a prompt is
evaluated exactly as it is alone (decode rows differ from a lone decode only in the last bits of the
N-row kernels). Slot i is sequence id i; the KV cells are one pool for all slots. A
finished slot keeps its cells as a prefix cache until cells are needed (least recently used first); a
new prompt reuses the longest prefix held by an idle slot, copied from a busy one (`seq_cp`, shared
cells) or restored from host RAM (--cache-ram), and evaluates only the rest. Each sequence that has logits
takes its next token from `Sampling` (pyrt.engine.sampling: grammar masks, logprobs). A request with a
session state file (`Request.state_path`) resumes from it when no cache holds as much of its prompt, and
leaves its sequence there when it ends (pyrt.engine.slots: `SessionStore` writes it after the reply, and the
slot records and slot save/restore/erase live there too).
Imports pyrt.runtime, pyrt.io.files, pyrt.errors and the engine's other modules; no HTTP.
"""

from __future__ import annotations

import collections
import concurrent.futures
import threading
import time
import traceback
from concurrent.futures import Future

import numba
import numpy as np

from ..backends.cpu import in_passing_thread
from ..errors import ContextOverflowError, InvalidArgumentError, PyrtError, StateError
from ..io.files import read_file
from ..runtime.context import Batch
from .prefix_cache import HostPrefixCache
from .requests import (FINISH_CANCELLED, FINISH_ERROR, FINISH_LENGTH, FINISH_STOP, FINISH_TIMEOUT, Completion,
                       GenerationParams, Piece, Request)
from .sampling import End, Sampling
from .slots import Active, SessionStore, Slot, erase_slot, restore_slot, restore_with_room, save_slot


# a waiting request whose prompt shares at least this many tokens with a prompt being evaluated (more
# than any cache holds) waits for that evaluation and then reuses it
PREFIX_WAIT = 32


# shorter cached prefixes are not worth a state copy in host RAM
STASH_MIN_TOKENS = 16


class QueueFullError(PyrtError):
    """The engine's queue of waiting requests is full."""


class EngineStoppedError(PyrtError):
    """The engine is shutting down or stopped."""


def common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    if n == 0:
        return 0
    x = np.asarray(a[:n], dtype=np.int64)
    y = np.asarray(b[:n], dtype=np.int64)
    diff = np.flatnonzero(x != y)
    return int(diff[0]) if diff.shape[0] else n


class Engine:
    """Serves requests on `llm` (a pyrt.runtime.llm.LLM made with n_seq_max >= n_parallel).

    `submit` is thread-safe; `start()` runs the engine thread, the only code that touches the context.
    """

    def __init__(self, llm, n_parallel: int = 1, max_queue: int = 64, cache_ram_bytes: int = 0):
        if n_parallel < 1 or n_parallel > llm.ctx.n_seq_max:
            raise InvalidArgumentError(f"n_parallel = {n_parallel} must be in [1, n_seq_max = {llm.ctx.n_seq_max}]")
        self.llm = llm
        self.ctx = llm.ctx
        self.tokenizer = llm.tokenizer
        self.n_parallel = n_parallel
        self.max_queue = max_queue
        self.slots = [Slot(i) for i in range(n_parallel)]
        # evicted prefixes as sequence states in host RAM (llama-server's --cache-ram); None: off
        self.host_cache = HostPrefixCache(cache_ram_bytes) if cache_ram_bytes > 0 else None
        self.n_host_restored = 0
        self.sessions = SessionStore()  # session state files (Request.state_path)
        self._waiting: collections.deque[Request] = collections.deque()
        self._commands: collections.deque = collections.deque()
        self._cv = threading.Condition()
        self._thread: threading.Thread | None = None
        self._running = False
        self._draining = False
        self.ctx.clear()
        # counters for /metrics (written by the engine thread only)
        self.n_prompt_tokens = 0      # prompt tokens evaluated
        self.n_cached_tokens = 0      # prompt tokens reused from the cache
        self.n_predicted = 0
        self.t_prompt = 0.0
        self.t_predicted = 0.0
        self.n_decode = 0
        self.n_requests = 0
        self.n_batch_tokens_max = 0
        self.max_seqs_in_step = 0
        self.slot_info: list[dict] = [self._slot_dict(s) for s in self.slots]
        self.sampling = Sampling(self.tokenizer)

    @classmethod
    def launch(cls, load_llm, n_parallel: int = 1, **kw) -> "Engine":
        """The engine, started, on the LLM that load_llm() returns, which runs in a passing thread: the
        engine thread is then the only thread that has run Numba's parallel kernels (see
        pyrt.backends.cpu: a second long-lived one, such as a main thread that loaded the model, makes
        every kernel launch of the engine wait for sleeping workers). kw: as __init__."""
        return cls(in_passing_thread(load_llm), n_parallel, **kw).start()

    # -- public, any thread ---------------------------------------------------------------------
    def start(self) -> "Engine":
        """Run the engine in a new thread. Its kernels run at full speed when no other long-lived thread
        runs kernels: load the LLM with `launch`, or in a thread that has ended."""
        if self._thread is None:
            self._running = True
            self._thread = threading.Thread(target=self._loop, name="pyrt-engine", daemon=True)
            self._thread.start()
        return self

    def stop(self, grace_s: float = 0.0) -> None:
        """Let running requests finish for up to grace_s seconds (no new ones), cancel the rest, stop."""
        with self._cv:
            self._draining = True
            self._cv.notify_all()
        t_end = time.perf_counter() + max(0.0, grace_s)
        while time.perf_counter() < t_end and (self.n_busy() or self._waiting):
            time.sleep(0.02)
        with self._cv:
            for r in list(self._waiting):
                r.cancel()
            for s in self.slots:
                if s.act is not None:
                    s.act.req.cancel()
            self._running = False
            self._cv.notify_all()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=30)
        self._thread = None
        self.sampling.shutdown()
        self.sessions.shutdown()

    def submit(self, req: Request) -> Request:
        """Queue a request; raises InvalidArgumentError / ContextOverflowError (nothing queued) or
        QueueFullError."""
        self.check(req)
        with self._cv:
            if self._draining or not self._running:
                raise EngineStoppedError("the server is shutting down")
            if len(self._waiting) >= self.max_queue:
                raise QueueFullError(f"the queue is full ({self.max_queue} requests waiting)")
            req._wake = self._wake
            self._waiting.append(req)
            self._cv.notify_all()
        return req

    def check(self, req: Request) -> None:
        req.params.validate()
        if req.params.constraint is not None:
            from ..runtime.constrain import engine_for
            engine_for(self.tokenizer).compile(*req.params.constraint)  # GrammarError: nothing queued
        n = len(req.prompt)
        if n == 0:
            raise InvalidArgumentError("the prompt is empty (no tokens to evaluate)")
        if n >= self.ctx.n_ctx:
            raise ContextOverflowError(f"the prompt has {n} tokens, more than the context holds "
                                       f"(n_ctx = {self.ctx.n_ctx}, -c)")
        nv = self.ctx.n_vocab
        bad = [t for t in req.prompt if not 0 <= t < nv]
        if bad:
            raise InvalidArgumentError(f"token id {bad[0]} is out of range [0, {nv})")
        if not -1 <= req.params.id_slot < self.n_parallel:
            raise InvalidArgumentError(f"id_slot {req.params.id_slot} out of range [-1, {self.n_parallel})")

    def generate(self, prompt: list[int], params: GenerationParams | None = None) -> Completion:
        """Submit and wait (blocking)."""
        return self.submit(Request(prompt, params)).result()

    def call(self, fn) -> Future:
        """Run fn(engine) in the engine thread between steps (slot save/restore/erase); its result or
        exception arrives in the returned future."""
        fut: Future = Future()
        with self._cv:
            if not self._running:
                raise EngineStoppedError("the engine is not running")
            self._commands.append((fn, fut))
            self._cv.notify_all()
        return fut

    def healthy(self) -> bool:
        """Whether the engine thread is running and takes requests."""
        return self._running and not self._draining and self._thread is not None and self._thread.is_alive()

    def n_busy(self) -> int:
        return sum(1 for s in self.slots if s.act is not None)

    def n_waiting(self) -> int:
        return len(self._waiting)

    def kv_used(self) -> int:
        return int(self.ctx.cells.used)

    @property
    def t_mask(self) -> float:
        """Seconds the engine thread waited for grammar masks and masked logits."""
        return self.sampling.t_mask

    @property
    def n_masked(self) -> int:
        return self.sampling.n_masked

    def wait_saved(self) -> None:
        """Wait until every session state handed to the writer so far is on disk."""
        self.sessions.wait_saved()

    @property
    def n_state_saved(self) -> int:
        return self.sessions.n_saved

    @property
    def n_state_restored(self) -> int:
        return self.sessions.n_restored

    @property
    def t_state_save(self) -> float:
        return self.sessions.t_save

    # -- slot state (run through `call`; pyrt.engine.slots) ---------------------------------------
    def slot_save(self, slot_id: int, path: str) -> dict:
        return save_slot(self, slot_id, path)

    def slot_restore(self, slot_id: int, data: bytes) -> dict:
        """Restores a sequence state (validated in full first: a StateError leaves the cache as it was)."""
        return restore_slot(self, slot_id, data)

    def slot_erase(self, slot_id: int) -> dict:
        return erase_slot(self, slot_id)

    # -- engine thread ----------------------------------------------------------------------------
    def _wake(self) -> None:
        with self._cv:
            self._cv.notify_all()

    def _has_work(self) -> bool:
        return bool(self._waiting or self._commands or any(s.act is not None for s in self.slots))

    def _loop(self) -> None:
        numba.set_num_threads(self.llm.n_threads)  # numba's thread count is per calling thread
        while True:
            with self._cv:
                while self._running and not self._has_work():
                    self._cv.wait(timeout=1.0)
                if not self._running and not self._has_work():
                    break
            try:
                self._run_commands()
                self._step()
            except Exception as e:  # a bug: fail the running requests, keep serving
                traceback.print_exc()
                for s in self.slots:
                    if s.act is not None:
                        self._finish(s, FINISH_ERROR, error=e, free=True)
            if not self._running:
                self._cancel_all()
        self._cancel_all()

    def _cancel_all(self) -> None:
        with self._cv:
            waiting, self._waiting = list(self._waiting), collections.deque()
            cmds, self._commands = list(self._commands), collections.deque()
        for r in waiting:
            self._finish_waiting(r, FINISH_CANCELLED)
        for _, fut in cmds:
            fut.set_exception(EngineStoppedError("the engine stopped"))
        for s in self.slots:
            if s.act is not None:
                self._finish(s, FINISH_CANCELLED, free=True)

    def _run_commands(self) -> None:
        while True:
            with self._cv:
                if not self._commands:
                    return
                fn, fut = self._commands.popleft()
            try:
                fut.set_result(fn(self))
            except Exception as e:
                fut.set_exception(e)

    def _finish_waiting(self, r: Request, reason: str) -> None:
        c = Completion(finish_reason=reason, prompt_tokens=len(r.prompt),
                       queue_ms=(time.perf_counter() - r.t_submit) * 1000.0)
        r.sink(c)
        r.done.set()

    def _expired(self, r: Request, now: float) -> bool:
        t = r.params.timeout_s
        return t is not None and now - r.t_submit > t

    def _reap(self) -> None:
        """Cancelled or timed-out requests: waiting ones leave the queue, running ones free their cells."""
        now = time.perf_counter()
        with self._cv:
            gone = [r for r in self._waiting if r.cancelled or self._expired(r, now)]
            for r in gone:
                self._waiting.remove(r)
        for r in gone:
            self._finish_waiting(r, FINISH_CANCELLED if r.cancelled else FINISH_TIMEOUT)
        for s in self.slots:
            a = s.act
            if a is not None and (a.req.cancelled or self._expired(a.req, now)):
                self._finish(s, FINISH_CANCELLED if a.req.cancelled else FINISH_TIMEOUT, free=True)

    def _admit(self) -> None:
        """Bind waiting requests (in order; one that asks for a busy slot does not block the others)
        to idle slots, reusing the longest cached prefix."""
        with self._cv:
            if self._draining:
                return
            pending = list(self._waiting)
        for r in pending:
            idle = [s for s in self.slots if s.act is None]
            if not idle:
                break
            if r.params.cache_prompt and self._prefix_coming(r):
                continue
            want = r.params.id_slot
            if want >= 0:
                if self.slots[want].act is not None:
                    continue
                idle = [self.slots[want]]
            with self._cv:
                self._waiting.remove(r)
            self._bind(r, idle)

    def _prefix_coming(self, r: Request) -> bool:
        """Whether a prompt being evaluated in a slot will soon hold a longer prefix of r's prompt (of at least
        PREFIX_WAIT tokens) than any cache holds now: r then waits for it instead of computing it twice."""
        n = len(r.prompt) - 1
        now = max(min(common_prefix(s.tokens, r.prompt), n) for s in self.slots)
        for s in self.slots:
            a = s.act
            if a is not None and not a.generating and len(s.tokens) < n:
                pot = min(common_prefix(a.req.prompt, r.prompt), n)
                if pot > now and pot >= PREFIX_WAIT:
                    return True
        return False

    def _bind(self, r: Request, idle: list[Slot]) -> None:
        prompt = r.prompt
        use_cache = r.params.cache_prompt
        lcp = {s.id: common_prefix(s.tokens, prompt) if use_cache else 0 for s in self.slots}
        # the destination: an idle slot whose whole cache is a prefix of the prompt (nothing is lost), else
        # an empty one (a longer match elsewhere is copied, so that cache survives), else the idle slot
        # with the longest match, else the least recently used
        ext = [s for s in idle if s.tokens and lcp[s.id] == len(s.tokens)]
        empty = [s for s in idle if not s.tokens]
        if ext:
            dst = max(ext, key=lambda s: lcp[s.id])
        elif empty:
            dst = empty[0]
        else:
            dst = max(idle, key=lambda s: (lcp[s.id], -s.t_last))
            if lcp[dst.id] == 0:
                dst = min(idle, key=lambda s: s.t_last)
        n_reuse = min(lcp[dst.id], len(prompt) - 1)  # the last prompt token is evaluated for its logits
        src = max(self.slots, key=lambda s: lcp[s.id])
        n_src = min(lcp[src.id], len(prompt) - 1)
        if src is dst:
            n_src = 0
        restored = False
        if self.host_cache is not None and use_cache:
            key, n_host = self.host_cache.best(prompt)
            n_host = min(n_host, len(prompt) - 1)
            if n_host > max(n_reuse, n_src):
                self._stash(dst)
                try:
                    dst.tokens = list(restore_with_room(self, dst, self.host_cache.get(key)))
                    n_reuse, restored = n_host, True
                    self.n_host_restored += 1
                except StateError:
                    pass  # not enough cells: evaluate the prompt
        if r.state_path is not None and use_cache:
            n_file = min(common_prefix(self.sessions.tokens(r.state_path), prompt), len(prompt) - 1)
            if n_file > max(n_reuse, n_src):
                try:
                    data = read_file(r.state_path)
                    self._stash(dst)
                    dst.tokens = list(restore_with_room(self, dst, data))
                    n_reuse, restored = n_file, True
                    self.sessions.n_restored += 1
                except (OSError, StateError):
                    # unreadable, another model's, or no room: evaluate the prompt
                    self.sessions.forget(r.state_path)
        if not restored and n_src > n_reuse:
            # copy the cells of the prefix from the other sequence: they are shared, not duplicated
            self._stash(dst)
            self.ctx.seq_rm(dst.id, -1, -1)
            self.ctx.seq_cp(src.id, dst.id, 0, n_src)
            dst.tokens = src.tokens[:n_src]
            n_reuse = n_src
        if n_reuse < len(dst.tokens):
            self._stash(dst)  # the part after the reused prefix is dropped
        n_reuse = self.ctx.seq_resume_pos(dst.id, n_reuse)
        self.ctx.seq_rm(dst.id, n_reuse, -1)
        del dst.tokens[n_reuse:]
        a = Active(r, self)
        a.cache_n = n_reuse
        dst.act = a
        dst.n_task = r.id
        self._publish()
        self.n_requests += 1
        self.n_cached_tokens += n_reuse

    def _evict_one(self, exclude: Slot | None = None) -> bool:
        """Free the cells of the least recently used idle slot that holds any; False if none."""
        cands = [s for s in self.slots if s.act is None and s.tokens and s is not exclude]
        if not cands:
            return False
        s = min(cands, key=lambda s: s.t_last)
        self._stash(s)
        self.ctx.seq_rm(s.id, -1, -1)
        s.tokens = []
        return True

    def _stash(self, s: Slot) -> None:
        """Keep the slot's cached tokens in host RAM before its cells go (with --cache-ram)."""
        hc = self.host_cache
        if hc is None or len(s.tokens) < STASH_MIN_TOKENS or hc.covers(s.tokens):
            return
        hc.put(list(s.tokens), self.ctx.save_state(s.tokens, s.id))

    def _free_cells(self) -> int:
        return int(self.ctx.cells.size - self.ctx.cells.used)

    def _step(self) -> None:
        self._reap()
        self._admit()
        n_ctx = self.ctx.n_ctx
        # a sequence that has used every position of the context ends
        for s in self.slots:
            if s.act is not None and s.act.generating and len(s.tokens) + 1 > n_ctx:
                self._finish(s, FINISH_LENGTH)
        gen = [s for s in self.slots if s.act is not None and s.act.generating]
        prm = sorted((s for s in self.slots if s.act is not None and not s.act.generating),
                     key=lambda s: s.act.req.id)
        # cells for the generating sequences: from idle caches first (LRU), then from prompts still being
        # evaluated (the newest goes back to the queue and starts again later), then the longest ends
        while self._free_cells() < len(gen) and self._evict_one():
            pass
        while prm and self._free_cells() < len(gen):
            self._requeue(prm.pop())
        while gen and self._free_cells() < len(gen):
            s = max(gen, key=lambda s: len(s.tokens))
            self._finish(s, FINISH_LENGTH)
            gen.remove(s)
        # one decode for all generating sequences, then each prompt chunk on its own: a row's result then
        # never depends on what else runs (a ubatch's size picks the matmul and attention paths), so
        # concurrent requests give exactly what they give alone
        groups = [[(s, [s.act.next_tok], True) for s in gen]] if gen else []
        n_used = len(gen)  # cells the step takes so far
        budget = self.ctx.n_ubatch
        for s in prm:
            if budget <= 0:
                break
            rest = len(s.act.req.prompt) - len(s.tokens)
            n = min(rest, self.ctx.n_ubatch)
            # keep a cell per generating sequence for the next step
            while self._free_cells() - n_used - len(gen) < n and self._evict_one():
                pass
            n = min(n, self._free_cells() - n_used - len(gen))
            if n <= 0:
                continue
            toks = s.act.req.prompt[len(s.tokens):len(s.tokens) + n]
            groups.append([(s, toks, n == rest)])
            budget -= n
            n_used += n
        if not groups:
            if prm and not gen:
                # prompts hold all the cells and none can go on: restart the newest one later
                s = prm[-1]
                if len(prm) == 1:
                    self._finish(s, FINISH_ERROR, free=True, error=ContextOverflowError(
                        "the prompt does not fit into the free KV cells"))
                else:
                    self._requeue(s)
            return
        for entries in groups:
            self._decode([e for e in entries if e[0].act is not None])
        self._publish()

    def _requeue(self, s: Slot) -> None:
        r = s.act.req
        self.ctx.seq_rm(s.id, -1, -1)
        s.tokens = []
        s.act = None
        self._publish()
        with self._cv:
            self._waiting.appendleft(r)

    def _decode(self, entries) -> None:
        if not entries:
            return
        tok, pos, seq, want = [], [], [], []
        for s, toks, last in entries:
            n0 = len(s.tokens)
            tok.extend(toks)
            pos.extend(range(n0, n0 + len(toks)))
            seq.extend([s.id] * len(toks))
            w = [False] * len(toks)
            w[-1] = last
            want.extend(w)
        batch = Batch(np.asarray(tok, np.int64), np.asarray(pos, np.int64), np.asarray(seq, np.int64),
                      np.asarray(want, bool))
        masks = self.sampling.start_masks(entries)
        t0 = time.perf_counter()
        try:
            logits = self.ctx.decode(batch)
        except ContextOverflowError as e:
            concurrent.futures.wait(masks)
            # the window cache of a sliding-window model is full: give back idle caches and retry later;
            # with none to give back, the prompts of this batch fail and the generating sequences end
            if self._evict_one():
                return
            for s, toks, last in entries:
                if s.act is not None and s.act.generating:
                    self._finish(s, FINISH_LENGTH)
                elif s.act is not None:
                    self._finish(s, FINISH_ERROR, error=e, free=True)
            return
        dt = time.perf_counter() - t0
        self.n_decode += 1
        self.n_batch_tokens_max = max(self.n_batch_tokens_max, len(batch))
        self.max_seqs_in_step = max(self.max_seqs_in_step, len(entries))
        n_gen = sum(1 for s, toks, last in entries if s.act.generating)
        n_prm = len(batch) - n_gen
        # the step's time is split over its tokens for the prompt/generation counters
        self.t_prompt += dt * n_prm / len(batch)
        self.t_predicted += dt * n_gen / len(batch)
        self.n_prompt_tokens += n_prm
        row = 0
        now = time.perf_counter()
        for s, toks, last in entries:
            a = s.act
            s.tokens.extend(toks)
            s.t_last = now
            if not a.generating:
                a.prompt_n += len(toks)
            if not last:
                continue
            lg = logits[row]
            row += 1
            self._sample(s, lg)

    def _sample(self, s: Slot, logits: np.ndarray) -> None:
        """The slot's next token from its logits row, streamed; the request ends when it is done."""
        a = s.act
        p = a.params
        if not a.generating:
            a.t_first = time.perf_counter()
        info = self.sampling.next_token(a, logits)
        if isinstance(info, End):
            self._finish(s, info.reason, error=info.error)
            return
        tok = info.id
        c = a.constraint
        a.n_gen += 1
        self.n_predicted += 1
        a.history.append(tok)
        a.tokens.append(info)
        a.unsent.append(info)
        piece, stopped = a.text.feed(tok)
        if piece:
            a.req.sink(Piece(piece, a.unsent))
            a.unsent = []
        if stopped or (c is not None and c.is_stopped()):
            self._finish(s, FINISH_STOP)  # a stop string, or a grammar that allows nothing more
        elif p.max_tokens >= 0 and a.n_gen >= p.max_tokens:
            self._finish(s, FINISH_LENGTH)
        else:
            a.next_tok = tok

    def _finish(self, s: Slot, reason: str, error: Exception | None = None, free: bool = False) -> None:
        """End the slot's request; its cells stay as a prefix cache unless `free` (cancellation)."""
        a = s.act
        if a is None:
            return
        now = time.perf_counter()
        tail = a.text.finish() if reason in (FINISH_STOP, FINISH_LENGTH) else ""
        if tail or a.unsent:
            if reason in (FINISH_STOP, FINISH_LENGTH):
                a.req.sink(Piece(tail, a.unsent))
            a.unsent = []
        t_first = a.t_first or now
        c = Completion(text=a.text.text, finish_reason=reason, stop_word=a.text.stop_word, tokens=a.tokens,
                       prompt_tokens=len(a.req.prompt), prompt_n=a.prompt_n, cache_n=a.cache_n,
                       predicted_n=a.n_gen, prompt_ms=(t_first - a.t_start) * 1000.0,
                       predicted_ms=(now - t_first) * 1000.0 if a.t_first else 0.0,
                       queue_ms=(a.t_start - a.req.t_submit) * 1000.0, slot=s.id, error=error)
        s.act = None
        s.t_last = now
        if free:
            self.ctx.seq_rm(s.id, -1, -1)
            s.tokens = []
        elif a.req.state_path is not None and reason in (FINISH_STOP, FINISH_LENGTH):
            self.sessions.save(self.ctx, s, a.req.state_path)
        self._publish()
        a.req.sink(c)
        a.req.done.set()

    def _slot_dict(self, s: Slot) -> dict:
        a = s.act
        return dict(id=s.id, id_task=s.n_task if a is not None else -1, n_ctx=self.ctx.n_ctx,
                    is_processing=a is not None, n_past=len(s.tokens), n_cached=len(s.tokens),
                    n_decoded=a.n_gen if a is not None else 0)

    def _publish(self) -> None:
        self.slot_info = [self._slot_dict(s) for s in self.slots]
