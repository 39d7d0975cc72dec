"""What a caller hands the engine (a prompt and `GenerationParams`) and what comes back (text pieces with
`TokenInfo`s, then one `Completion`); the stop-string and UTF-8 hold-back of streamed text (`TextStream`).

Imports pyrt.errors and pyrt.runtime.sampling only.
"""

from __future__ import annotations

import itertools
import queue
import threading
import time
from dataclasses import dataclass, field, fields
from typing import Callable

from ..errors import InvalidArgumentError
from ..runtime.sampling import SamplingParams

FINISH_STOP, FINISH_LENGTH, FINISH_CANCELLED, FINISH_TIMEOUT, FINISH_ERROR = (
    "stop", "length", "cancelled", "timeout", "error")


@dataclass
class GenerationParams(SamplingParams):
    """Per-request generation settings: the sampler's (SamplingParams, llama-server's defaults; seed None or
    < 0: random) and the request's own."""

    max_tokens: int = -1          # -1: until end of generation or a full context
    stop: list[str] = field(default_factory=list)
    ignore_eos: bool = False
    logprobs: bool = False        # report each generated token's log-probability
    n_probs: int = 0              # and this many most likely alternatives per token
    cache_prompt: bool = True     # reuse cached prefixes (False: evaluate the whole prompt)
    id_slot: int = -1             # run in this slot (-1: the engine picks)
    timeout_s: float | None = None  # wall-clock limit from submission
    # (kind, text) of pyrt.runtime.constrain (request_grammar): every token is sampled under that grammar's
    # mask, end of generation only where it is complete, and the request stops when the grammar is done
    constraint: tuple[str, str] | None = None

    def sampling(self) -> SamplingParams:
        return SamplingParams(**{f.name: getattr(self, f.name) for f in fields(SamplingParams)})

    def validate(self) -> None:
        super().validate()
        if self.max_tokens < -1:
            raise InvalidArgumentError(f"max_tokens must be >= -1, got {self.max_tokens}")
        if not 0 <= self.n_probs <= 20:
            raise InvalidArgumentError(f"n_probs / top_logprobs must be in [0, 20], got {self.n_probs}")
        if any(not isinstance(s, str) or not s for s in self.stop):
            raise InvalidArgumentError("stop must be a non-empty string or a list of non-empty strings")
        if len(self.stop) > 16:
            raise InvalidArgumentError("at most 16 stop strings")
        if self.timeout_s is not None and not self.timeout_s > 0:
            raise InvalidArgumentError("timeout must be > 0")


@dataclass
class TokenInfo:
    """A generated token with its log-probability and the n_probs most likely tokens [(id, logprob)]."""

    id: int
    logprob: float | None = None
    top: list = field(default_factory=list)


@dataclass
class Piece:
    """Streamed text, with the tokens generated since the previous piece."""

    text: str
    tokens: list


@dataclass
class Completion:
    """The end of a request: the whole text and llama-server's counters (prompt_n = prompt tokens
    evaluated, cache_n = prompt tokens reused from the cache)."""

    text: str = ""
    finish_reason: str = FINISH_STOP
    stop_word: str = ""
    tokens: list = field(default_factory=list)  # TokenInfo of every generated token
    prompt_tokens: int = 0
    prompt_n: int = 0
    cache_n: int = 0
    predicted_n: int = 0
    prompt_ms: float = 0.0
    predicted_ms: float = 0.0
    queue_ms: float = 0.0
    slot: int = -1
    error: Exception | None = None

    def timings(self) -> dict:
        """llama-server's `timings` object."""
        pm, gm = self.prompt_ms, self.predicted_ms
        return dict(cache_n=self.cache_n, prompt_n=self.prompt_n, prompt_ms=pm,
                    prompt_per_token_ms=pm / self.prompt_n if self.prompt_n else 0.0,
                    prompt_per_second=1000.0 * self.prompt_n / pm if pm > 0 else 0.0,
                    predicted_n=self.predicted_n, predicted_ms=gm,
                    predicted_per_token_ms=gm / self.predicted_n if self.predicted_n else 0.0,
                    predicted_per_second=1000.0 * self.predicted_n / gm if gm > 0 else 0.0)


_ids = itertools.count()


class Request:
    """A submitted prompt. Events go to `sink` (any thread-safe callable): `Piece`s, then one `Completion`.
    Without a sink they go to an internal queue, read by `events()` / `result()`."""

    def __init__(self, prompt: list[int], params: GenerationParams | None = None,
                 sink: Callable[[object], None] | None = None, state_path: str | None = None):
        self.id = next(_ids)
        self.prompt = [int(t) for t in prompt]
        self.params = params or GenerationParams()
        # a session's state file (pyrt's state format): restored into the request's slot when it holds a
        # longer prefix of the prompt than any cache, and rewritten with the slot's sequence when the request
        # ends (stop or length; copied before its Completion is sent, written in the background:
        # Engine.wait_saved)
        self.state_path = state_path
        self._queue: queue.Queue | None = None
        if sink is None:
            self._queue = queue.Queue()
            sink = self._queue.put
        self.sink = sink
        self.cancelled = False
        self.t_submit = time.perf_counter()
        self._wake: Callable[[], None] | None = None  # set by the engine
        self.done = threading.Event()

    def cancel(self) -> None:
        """Stop the request; its sequence's cells are freed at the engine's next step."""
        self.cancelled = True
        if self._wake is not None:
            self._wake()

    def events(self):
        """Pieces, then the Completion (only for requests made without a sink)."""
        if self._queue is None:
            raise RuntimeError("this request streams to its sink")
        while True:
            ev = self._queue.get()
            yield ev
            if isinstance(ev, Completion):
                return

    def result(self) -> Completion:
        for ev in self.events():
            if isinstance(ev, Completion):
                return ev
        raise AssertionError("unreachable")


class TextStream:
    """Generated tokens -> text pieces: never half a UTF-8 character, never text that may be the start of
    a stop string (held back until it is known not to be one); stops at the first stop string."""

    def __init__(self, tokenizer, stop: list[str]):
        self._dec = tokenizer.decoder()
        self.stop = list(stop)
        self.text = ""
        self.sent = 0
        self.stop_word = ""

    def feed(self, token: int) -> tuple[str, bool]:
        """(text that can be sent now, whether a stop string ended the text)."""
        self.text += self._dec.feed(token)
        return self._release(final=False)

    def finish(self) -> str:
        """The held-back rest at the end of generation (a stop string in it still cuts it)."""
        self.text += self._dec.flush()
        return self._release(final=True)[0]

    def _release(self, final: bool) -> tuple[str, bool]:
        t = self.text
        if self.stop:
            # a stop string can only start at or after `sent`: held back text covers every partial match
            best, word = -1, ""
            for s in self.stop:
                i = t.find(s, self.sent)
                if i >= 0 and (best < 0 or i < best):
                    best, word = i, s
            if best >= 0:
                self.text, self.stop_word = t[:best], word
                out = self.text[self.sent:]
                self.sent = len(self.text)
                return out, True
        end = len(t)
        if not final:
            for s in self.stop:
                for k in range(min(len(s) - 1, len(t) - self.sent), 0, -1):
                    if t.endswith(s[:k]):
                        end = min(end, len(t) - k)
                        break
        out = t[self.sent:end]
        self.sent = end
        return out, False
