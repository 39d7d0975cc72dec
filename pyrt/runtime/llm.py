"""The library front door: `pyrt.load(path, ...)` returns an `LLM` (model + tokenizer + context).

Generation keeps the tokens that are in the cache and reuses the common prefix on the next call,
as llama-cpp-python does; with context_shift it continues past n_ctx as llama-cli does, and a prompt
cache file carries the prompt's KV state across runs. Load, compile/warm-up, prompt and generation
times are kept apart. Bad arguments raise InvalidArgumentError at the call (before any token is
generated, state untouched); calls are serialized on the context's lock, and a generation holds the
context until its iterator is exhausted or closed (other calls meanwhile raise BusyError).
"""

from __future__ import annotations

import os
import time
from typing import Iterator

import numba
import numpy as np

from ..backends import check_device, get_backend
from ..errors import ContextOverflowError, InvalidArgumentError
from ..io.gguf_file import GGUFFile
from ..formats.qtypes import SUPPORTED_TYPES
from ..models import build_model, check_architecture
from ..ops import matmul as mm
from .constrain import Constraint, engine_for, request_grammar
from .context import DEFRAG_THOLD, Batch, Context, _int_arg
from .sampling import Sampler, SamplingParams
from .tokenizer import Tokenizer


def _set_threads(n_threads: int | None) -> int:
    max_t = numba.config.NUMBA_NUM_THREADS
    if n_threads is None or n_threads <= 0:
        n_threads = max_t
    if n_threads > max_t:
        raise InvalidArgumentError(f"n_threads = {n_threads} exceeds the {max_t} threads Numba was started "
                                   f"with (set NUMBA_NUM_THREADS before starting Python)")
    numba.set_num_threads(n_threads)
    return n_threads


def _llm_serialized(fn):
    """Runs an LLM method under its context's lock (BusyError while a generation holds the context)."""
    import functools

    @functools.wraps(fn)
    def wrapper(self, *args, **kw):
        with self.ctx._guard():
            return fn(self, *args, **kw)
    return wrapper


def _path_arg(name: str, path) -> str:
    if not isinstance(path, (str, os.PathLike)):
        raise InvalidArgumentError(f"{name} must be a path (str or os.PathLike), got {type(path).__name__}")
    return os.fspath(path)


class LLM:
    def __init__(self, path: str | os.PathLike, n_ctx: int = 4096, n_batch: int = 2048, n_ubatch: int = 512,
                 n_threads: int | None = None, type_k: str = "f16", type_v: str = "f16",
                 use_mmap: bool | None = None, warmup: bool = True, n_seq_max: int = 1,
                 defrag_thold: float = DEFRAG_THOLD, mla: int = 3, swa_full: bool = False,
                 prefetch: bool = True, progress: bool = True, device: str = "cpu", swa_per_seq: bool = False):
        """use_mmap: None (default) reads the file into anonymous memory when it takes at most half of the
        available memory and maps it otherwise; True maps it (shared, read-only: processes on one host share
        the page cache's copy); False reads it (see GGUFFile; `self.file.use_mmap` says what was done).
        progress: while the warm-up compiles kernels (a cold Numba cache), say so on stderr (a line, a
        bar on a terminal, a closing line); a warm cache prints nothing.
        device: "cpu", or "cuda" (the `cuda` extra and an NVIDIA GPU: weights are uploaded once at load,
        the KV cache lives on the GPU, logits come back per ubatch); DeviceError when it cannot run.
        swa_per_seq: the sliding-window cache gets (n_swa + n_ubatch) cells per sequence (pyrt serve; see
        Context)."""
        t0 = time.perf_counter()
        _path_arg("path", path)  # the arguments first: a bad one fails before the file is read
        n_ctx = _int_arg("n_ctx", n_ctx, 0)  # 0: the model's training context, as llama.cpp
        for name, v in (("n_batch", n_batch), ("n_ubatch", n_ubatch), ("n_seq_max", n_seq_max)):
            _int_arg(name, v, 1)
        if n_threads is not None:
            _int_arg("n_threads", n_threads)
        self.progress = bool(progress)
        self.device = check_device(device)
        backend = get_backend(self.device)  # before the file is read: a missing GPU is the first error
        self.n_threads = _set_threads(n_threads)
        self.file = GGUFFile(path, use_mmap=use_mmap)
        check_architecture(self.file)  # first: an unknown architecture is the clearer error
        # a mapped file only: like llama.cpp's MAP_POPULATE, read the weights once, in file order, so that
        # the page cache holds them in 2 MiB folios (decode streams them ~1.4x faster than through 4 KiB pages); before
        # the model is built, whose reads (derived MLA tensors) would otherwise fault them in small
        self.prefetched = prefetch and self.file.prefetch()
        self.model = build_model(self.file)
        self.tokenizer = Tokenizer.from_metadata(self.file.metadata)
        hp = self.model.hp
        if self.tokenizer.n_vocab != hp.n_vocab:
            from ..errors import ModelFileError
            raise ModelFileError(f"{self.file.path}: vocabulary has {self.tokenizer.n_vocab} tokens but the "
                                 f"embedding has {hp.n_vocab} rows")
        if n_ctx <= 0:
            n_ctx = hp.n_ctx_train
        self.ctx = Context(self.model, n_ctx=n_ctx, n_batch=n_batch, n_ubatch=n_ubatch,
                           type_k=type_k, type_v=type_v, n_seq_max=n_seq_max, defrag_thold=defrag_thold,
                           mla=mla, swa_full=swa_full, device=self.device, swa_per_seq=swa_per_seq)
        if backend is not None:
            backend.upload_model(self.model)  # every weight once, in its file layout
        self.t_load = time.perf_counter() - t0
        self.t_warmup = 0.0
        self.compiled = 0
        self._tokens: list[int] = []  # what sequence 0 holds in the cache, in order
        self.last_finish_reason: str | None = None  # of the last generation: "stop" or "length"
        if warmup:
            self.warmup()

    # -- basics -----------------------------------------------------------------------------------
    @property
    def n_ctx(self) -> int:
        return self.ctx.n_ctx

    @property
    def n_vocab(self) -> int:
        return self.model.hp.n_vocab

    def tokenize(self, text: str, add_bos: bool | None = None, special: bool = True) -> list[int]:
        """add_bos=None follows the vocabulary's add_bos/add_eos flags (llama.cpp's add_special)."""
        if not isinstance(text, str):
            raise InvalidArgumentError(f"tokenize: expected str, got {type(text).__name__}")
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as e:
            raise InvalidArgumentError(f"tokenize: the text is not valid Unicode ({e.reason} at {e.start})") from None
        if add_bos is None:
            return self.tokenizer.tokenize(text, add_special=True, parse_special=special)
        ids = self.tokenizer.tokenize(text, add_special=False, parse_special=special)
        bos = self.tokenizer.bos_id
        if add_bos and bos is not None:
            ids = [bos] + ids
        return ids

    def detokenize(self, ids, special: bool = False) -> str:
        return self.tokenizer.detokenize(self._ids_arg("detokenize", ids), special=special)

    def _ids_arg(self, what: str, ids) -> list[int]:
        """Token ids as a list of ints in [0, n_vocab); InvalidArgumentError otherwise."""
        if isinstance(ids, (str, bytes)):
            raise InvalidArgumentError(f"{what}: expected token ids, got {type(ids).__name__} (tokenize text first)")
        try:
            out = [_int_arg("token id", t, 0, self.n_vocab - 1) for t in ids]
        except TypeError:
            raise InvalidArgumentError(f"{what}: expected a sequence of token ids, got {type(ids).__name__}") from None
        except InvalidArgumentError as e:
            raise InvalidArgumentError(f"{what}: {e}") from None
        return out

    @_llm_serialized
    def warmup(self) -> None:
        """Runs the kernels once (compiling or loading them from Numba's cache), then clears the cache."""
        from . import interrupts
        from .compile_notice import CompileNotice

        t0 = time.perf_counter()
        # both matmul paths of every weight type on one-row slices: prompt chunks longer than the
        # warm-up batch then start without loading kernels inside the timed prompt evaluation
        weights = {(w.ggml_type, w.shape[-1]): w.raw for w in self.file.tensors.values()
                   if len(w.shape) >= 2 and w.ggml_type in SUPPORTED_TYPES}
        tok = self.tokenizer.bos_id if self.tokenizer.bos_id is not None else 0
        n_big = min(self.ctx.n_ubatch, 64, self.n_ctx - 1)
        if self.device != "cpu":
            weights = {}  # the CPU matmul kernels are not used; the decodes below compile the device kernels
        with interrupts.deferred(), CompileNotice(len(weights) + 1 + (n_big > 1), enabled=self.progress) as notice:
            for key, raw in weights.items():
                mm.warmup({key: raw})
                notice.step()
            if n_big > 1:
                self.ctx.decode(Batch.from_tokens([tok] * n_big))
                self.ctx.clear()
                notice.step()
            self.ctx.decode(Batch.from_tokens([tok]))
            self.ctx.clear()
            notice.step()
        self.compiled = notice.n_compiled  # functions compiled by the warm-up (0: all from Numba's disk cache)
        self.ctx.timings.reset()
        self._tokens = []
        self.t_warmup += time.perf_counter() - t0

    @_llm_serialized
    def reset(self) -> None:
        self.ctx.clear()
        self._tokens = []

    # -- evaluation -------------------------------------------------------------------------------
    @_llm_serialized
    def eval_logits(self, ids) -> np.ndarray:
        """Clears the cache, evaluates `ids` from position 0, returns logits of every row [n, n_vocab]."""
        ids = self._ids_arg("eval_logits", ids)
        if not ids:
            raise InvalidArgumentError("eval_logits: no tokens to evaluate")
        if len(ids) > self.n_ctx:
            raise ContextOverflowError(f"{len(ids)} tokens do not fit n_ctx = {self.n_ctx}")
        self.reset()
        out = []
        for s in range(0, len(ids), self.ctx.n_batch):
            chunk = ids[s:s + self.ctx.n_batch]
            out.append(self.ctx.decode(Batch.from_tokens(chunk, pos0=s, logits="all")))
        self._tokens = ids
        return np.concatenate(out) if len(out) > 1 else out[0]

    def check_prompt(self, ids: list[int]) -> None:
        """Raises if `ids` cannot be evaluated as a prompt in this context (nothing is touched)."""
        ids = self._ids_arg("prompt", ids)
        if not ids:
            raise InvalidArgumentError("the prompt is empty (no tokens to evaluate)")
        if len(ids) > self.n_ctx - 4:  # llama-cli's limit: room for at least a few generated tokens
            raise ContextOverflowError(f"the prompt is too long ({len(ids)} tokens, n_ctx = {self.n_ctx})")

    def _ingest(self, ids: list[int]) -> np.ndarray:
        """Makes the cache hold exactly `ids` (reusing the common prefix); returns the last logits."""
        self.check_prompt(ids)
        n_common = 0
        for a, b in zip(self._tokens, ids):
            if a != b:
                break
            n_common += 1
        n_common = min(n_common, len(ids) - 1)  # re-evaluate at least one token to get its logits
        # a sliding-window cache may no longer hold the window before n_common: start where it is whole
        n_common = self.ctx.seq_resume_pos(0, n_common)
        self.ctx.seq_rm(0, n_common, -1)
        self._tokens = self._tokens[:n_common]
        logits = None
        for s in range(n_common, len(ids), self.ctx.n_batch):
            chunk = ids[s:s + self.ctx.n_batch]
            last = s + len(chunk) == len(ids)
            logits = self.ctx.decode(Batch.from_tokens(chunk, pos0=s, logits="last" if last else "none"))
            self._tokens.extend(chunk)
        return logits[-1]

    def generate_ids(self, prompt_ids, max_tokens: int = 128, temperature: float = 0.8, top_k: int = 40,
                     top_p: float = 0.95, min_p: float = 0.05, repeat_penalty: float = 1.0,
                     repeat_last_n: int = 64, seed: int | None = None, ignore_eos: bool = False,
                     context_shift: bool = False, n_keep: int = 0, prompt_cache: str | os.PathLike | None = None,
                     prompt_cache_ro: bool = False, json_schema=None, regex: str | None = None,
                     grammar: str | None = None, constraint: Constraint | None = None) -> Iterator[int]:
        """Yields generated token ids; stops at an end-of-generation token, max_tokens or a full context.
        When it ends, `self.last_finish_reason` is "stop" (end of generation, or a constraint's grammar
        is complete) or "length" (max_tokens or a full context; a constrained output is then incomplete).

        json_schema (a dict or JSON text), regex, grammar (Lark or llama.cpp GBNF text): at most one;
        every token is sampled from those the grammar allows (the mask is applied to the logits before
        any sampler), and end of generation comes only where the grammar is complete. Needs the
        `grammar` extra (llguidance); a schema or grammar it cannot compile raises GrammarError before
        anything is evaluated. constraint: a prepared `Constraint` instead (it is advanced in place).

        context_shift: when the context is full, keep the first n_keep tokens (< 0: the whole prompt),
        drop half of the rest (llama-cli's n_discard = (n_past - n_keep) / 2), shift the remaining
        cells' positions and re-rotate their keys, and go on. prompt_cache: a state file; if it exists
        its cache is loaded and the common prefix reused, and after the prompt the file is rewritten
        with the prompt's state (unless prompt_cache_ro), as llama-cli's --prompt-cache.
        """
        params = SamplingParams(temperature, top_k, top_p, min_p, repeat_penalty, repeat_last_n, seed)
        sampler = Sampler(params, self.n_ctx)  # validates params
        ids = self._ids_arg("prompt", prompt_ids)
        self.check_prompt(ids)
        max_tokens = _int_arg("max_tokens", max_tokens, -1)
        n_keep = _int_arg("n_keep", n_keep)
        if n_keep < 0 or n_keep > len(ids):
            n_keep = len(ids)
        if prompt_cache is not None:
            prompt_cache = _path_arg("prompt_cache", prompt_cache)
        made = self.constraint(json_schema=json_schema, regex=regex, grammar=grammar)  # GrammarError now
        if made is not None:
            if constraint is not None:
                raise InvalidArgumentError("give either a constraint or json_schema/regex/grammar, not both")
            constraint = made
        elif constraint is not None and not isinstance(constraint, Constraint):
            raise InvalidArgumentError(f"constraint must be a Constraint, got {type(constraint).__name__}")
        self.last_finish_reason = None
        return self._generation(ids, sampler, max_tokens, bool(ignore_eos), bool(context_shift), n_keep,
                                prompt_cache, bool(prompt_cache_ro), constraint)

    def _generation(self, ids, sampler, max_tokens, ignore_eos, context_shift, n_keep, prompt_cache,
                    prompt_cache_ro, constraint) -> Iterator[int]:
        ctx = self.ctx
        me = object()
        ctx._begin_generation(me)  # BusyError if another generation holds the context
        eog = sorted(self.tokenizer.eog_ids)
        try:
            with ctx._step(me):
                if prompt_cache is not None and os.path.exists(prompt_cache):
                    self.load_state(prompt_cache)
                logits = self._ingest(ids)
                if prompt_cache is not None and not prompt_cache_ro:
                    self.save_state(prompt_cache)
            history = list(ids)
            n = 0
            self.last_finish_reason = "length"
            while max_tokens < 0 or n < max_tokens:
                with ctx._step(me):
                    if constraint is not None:
                        if constraint.is_stopped():
                            self.last_finish_reason = "stop"
                            return
                        if ignore_eos:
                            constraint.forbid(eog)
                        logits = constraint.mask_logits(np.array(logits, dtype=np.float32))
                    tok = sampler.sample(logits, history)
                if not ignore_eos and self.tokenizer.is_eog(tok):
                    self.last_finish_reason = "stop"
                    return
                if constraint is not None:
                    constraint.accept(tok)
                yield tok
                n += 1
                history.append(tok)
                if constraint is not None and constraint.is_stopped():
                    self.last_finish_reason = "stop"  # the grammar allows nothing more: only EOG could follow
                    return
                if max_tokens >= 0 and n >= max_tokens:
                    return
                with ctx._step(me):
                    if len(self._tokens) >= self.n_ctx and not (context_shift and self.shift_context(n_keep)):
                        return
                    pos = len(self._tokens)
                    logits = self.ctx.decode(Batch.from_tokens([tok], pos0=pos))[-1]
                    self._tokens.append(tok)
        finally:
            ctx._end_generation(me)

    def constraint(self, json_schema=None, regex: str | None = None, grammar: str | None = None,
                   response_format: dict | None = None) -> Constraint | None:
        """A fresh `Constraint` for at most one of json_schema (dict or JSON text), regex, grammar (Lark or
        GBNF) or an OpenAI response_format; None when none is given. GrammarError if it cannot be compiled
        (compiled grammars are cached by their text)."""
        spec = request_grammar(json_schema=json_schema, regex=regex, grammar=grammar, response_format=response_format)
        return None if spec is None else engine_for(self.tokenizer).constraint(*spec)

    @_llm_serialized
    def shift_context(self, n_keep: int) -> bool:
        """Frees half of sequence 0's cells after the first n_keep (llama-cli's context shift); False if
        nothing can be discarded. The keys are re-rotated by the next decode."""
        n_past = len(self._tokens)
        n_keep = max(0, min(_int_arg("n_keep", n_keep), n_past))
        n_discard = (n_past - n_keep) // 2
        if n_discard <= 0:
            return False
        self.ctx.seq_rm(0, n_keep, n_keep + n_discard)
        self.ctx.seq_add(0, n_keep + n_discard, n_past, -n_discard)
        self._tokens = self._tokens[:n_keep] + self._tokens[n_keep + n_discard:]
        return True

    # -- state ------------------------------------------------------------------------------------
    @_llm_serialized
    def save_state(self, path: str | os.PathLike | None = None, seq_id: int = -1) -> bytes | int:
        """The cache and the cached tokens: to bytes (path None) or to a file (returns bytes written; the
        file is replaced whole or not at all, StateFileError if it cannot be written)."""
        if path is None:
            return self.ctx.save_state(self._tokens, seq_id)
        return self.ctx.save_file(_path_arg("path", path), self._tokens, seq_id)

    @_llm_serialized
    def load_state(self, src: bytes | str | os.PathLike, seq_id: int = -1) -> int:
        """Restore from bytes or a file made by save_state; returns the number of cached tokens.
        A StateError (wrong model, cache type, corrupt file ...) leaves the cache as it was."""
        if isinstance(src, (bytes, bytearray, memoryview)):
            toks = self.ctx.load_state(src, seq_id)
        elif isinstance(src, (str, os.PathLike)):
            toks = self.ctx.load_file(src, seq_id)
        else:
            raise InvalidArgumentError(f"load_state: expected bytes from save_state or a path, got "
                                       f"{type(src).__name__}")
        if seq_id <= 0:
            self._tokens = list(toks)
        return len(toks)

    def generate(self, prompt: str, max_tokens: int = 128, add_bos: bool | None = None, **kw) -> Iterator[str]:
        """Yields text pieces (never half a UTF-8 character). Keyword args as `generate_ids`."""
        if not isinstance(prompt, str):
            raise InvalidArgumentError(f"generate: the prompt must be str, got {type(prompt).__name__} "
                                       f"(generate_ids takes token ids)")
        return self.stream_text(self.tokenize(prompt, add_bos=add_bos), max_tokens=max_tokens, **kw)

    def stream_text(self, ids, max_tokens: int = 128, **kw) -> Iterator[str]:
        """generate_ids from prompt ids, as text pieces that never split a UTF-8 character."""
        return self._pieces(self.generate_ids(ids, max_tokens=max_tokens, **kw))  # validated now

    def _pieces(self, toks) -> Iterator[str]:
        dec = self.tokenizer.decoder()
        try:
            for tok in toks:
                piece = dec.feed(tok)
                if piece:
                    yield piece
        finally:
            toks.close()  # closing the text iterator ends the generation (frees the context) at once
        tail = dec.flush()
        if tail:
            yield tail

    def chat(self, messages: list[dict], max_tokens: int = -1, chat_template: str | None = None,
             **kw) -> Iterator[str]:
        """Renders `messages` with the file's chat template (or `chat_template`: Jinja text, a file, or
        'chatml'/'gemma'; a file without one falls back to its architecture's built-in template, see
        chat.ARCH_TEMPLATES) and yields the reply's text pieces, stopping at end of turn. Keyword args as
        `generate_ids`."""
        from .chat import chat
        return chat(self, messages, max_tokens=max_tokens, chat_template=chat_template, **kw)

    # -- reporting --------------------------------------------------------------------------------
    def timings_report(self) -> str:
        t = self.ctx.timings

        def line(label, ms, n, unit):
            per = ms / n if n else 0.0
            tps = 1000.0 * n / ms if ms > 0 else 0.0
            return (f"pyrt: {label:>16} = {ms:10.2f} ms / {n:5d} {unit:6} ({per:8.2f} ms per token, "
                    f"{tps:8.2f} tokens per second)")

        return "\n".join([
            f"pyrt: {'load time':>16} = {self.t_load * 1000:10.2f} ms",
            f"pyrt: {'compile/warm-up':>16} = {self.t_warmup * 1000:10.2f} ms",
            line("prompt eval time", t.t_p_eval * 1000, t.n_p_eval, "tokens"),
            line("eval time", t.t_eval * 1000, t.n_eval, "runs"),
        ])

    def total_time_report(self, wall_s: float) -> str:
        """The wall time `wall_s` of a run split into load, compile/warm-up, prompt, eval and the rest
        (imports, tokenization, sampling, output, waiting for input), in ms: the parts add up to the total."""
        t = self.ctx.timings
        parts = [("load", self.t_load), ("compile/warm-up", self.t_warmup), ("prompt", t.t_p_eval),
                 ("eval", t.t_eval)]
        parts.append(("other", max(0.0, wall_s - sum(v for _, v in parts))))
        total = sum(v for _, v in parts)
        return (f"pyrt: {'total time':>16} = {total * 1000:10.2f} ms ("
                + " + ".join(f"{name} {v * 1000:.2f}" for name, v in parts) + ")")


def load(path: str | os.PathLike | None = None, **kw) -> LLM:
    """Loads a GGUF file (None: the default model, pyrt.default_model) and prepares a context.
    See `LLM` for the keyword arguments."""
    if path is None:
        from ..default_model import default_model_path
        path = default_model_path()
    return LLM(path, **kw)
