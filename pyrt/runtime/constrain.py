"""Grammar-constrained decoding on llguidance: JSON Schema, regex, Lark and llama.cpp GBNF grammars.

Owns the engine's view of a vocabulary (`GrammarEngine`: token bytes, special and end-of-generation
ids, a cache of compiled grammars keyed by (kind, text)) and the per-sequence `Constraint` (token mask,
logits masking, accept, rollback). Imports numpy, pyrt.errors and, when first used, llguidance (the
`grammar` extra); nothing from models, kernels or the context, so the engine and server can use it.
"""

from __future__ import annotations

import json
import threading
import weakref
from collections import OrderedDict
from typing import Any

import numpy as np

from ..errors import GrammarError, InvalidArgumentError, UnsupportedError

__all__ = ["KINDS", "JSON_DEFAULTS", "NUMBER_LIMIT", "NUMBER_STEP", "GrammarEngine", "Constraint", "bound_numbers",
           "engine_for", "request_grammar"]

# "grammar" is Lark or GBNF, told apart as llguidance does (a `start:` rule or `%llguidance` means Lark).
KINDS = ("json_schema", "regex", "lark", "gbnf", "grammar")

# JSON Schema compile options. Whitespace between tokens is llama.cpp's json-schema-to-grammar `space`
# rule (nothing, one space, or a newline and up to 20 indentation characters): a model may pretty-print,
# but cannot loop on whitespace. A schema's own "x-guidance" object overrides these (llguidance's rule).
JSON_DEFAULTS = {"whitespace_pattern": r"(?: |\n[ \t]{0,20})?"}

# Digits of JSON numbers are bounded, as llama.cpp's json-schema-to-grammar bounds them: otherwise a model
# can repeat "0" until max_tokens inside a number that no grammar rule ends (seen with Gemma 3 270M,
# greedy). A number or integer without its own bound stays within +-NUMBER_LIMIT (15 digits, exact in a
# double); a number without its own multipleOf gets NUMBER_STEP, i.e. at most 10 fraction digits (the
# finest step llguidance 1.9 takes exactly). Such numbers are written without an exponent.
NUMBER_LIMIT = 999_999_999_999_999
NUMBER_STEP = 1e-10

_NEG_INF = np.float32(-np.inf)
_NOT_SCHEMAS = frozenset(("enum", "const", "default", "examples", "x-guidance"))


def _llguidance():
    try:
        import llguidance
        import llguidance.gbnf_to_lark
    except ImportError:
        raise UnsupportedError("constrained decoding needs llguidance: pip install 'pyrt[grammar]'") from None
    return llguidance


class GrammarEngine:
    """llguidance's tokenizer for one pyrt `Tokenizer`, and the grammars compiled against it.

    Building the engine's token trie takes ~1.7 s for a 262k vocabulary, so get engines through
    `engine_for(tokenizer)`, which keeps one per tokenizer. Thread-safe.
    """

    def __init__(self, tokenizer, cache_size: int = 64):
        llg = _llguidance()
        self.n_vocab = tokenizer.n_vocab
        self.eog_ids = sorted(tokenizer.eog_ids)
        tokens = tokenizer.token_bytes()
        if not self.eog_ids:
            raise UnsupportedError("the vocabulary has no end-of-generation token; a grammar cannot end")
        self.ll_tokenizer = llg.LLTokenizer(llg.TokenizerWrapper(_EngineVocab(tokenizer, tokens)),
                                            n_vocab=self.n_vocab, eos_token=self.eog_ids)
        self.n_words = (self.n_vocab + 31) // 32  # int32 words of one bitmask
        self._cache: OrderedDict[tuple[str, str], Any] = OrderedDict()
        self._cache_size = cache_size
        self._lock = threading.Lock()

    def compile(self, kind: str, text: str):
        """The compiled grammar (an unstarted llguidance matcher) for (kind, text); GrammarError with the
        engine's message when it cannot be compiled. Cached (LRU) by (kind, text)."""
        if kind not in KINDS:
            raise InvalidArgumentError(f"grammar kind must be one of {', '.join(KINDS)}, got {kind!r}")
        if not isinstance(text, str):
            raise InvalidArgumentError(f"the {kind} must be given as text, got {type(text).__name__}")
        key = (kind, text)
        with self._lock:
            m = self._cache.get(key)
            if m is not None:
                self._cache.move_to_end(key)
                return m
        llg = _llguidance()
        m = llg.LLMatcher(self.ll_tokenizer, _grammar_spec(llg, kind, text), log_level=0)
        if m.is_error():
            raise GrammarError(f"invalid {kind}: {_one_line(m.get_error())}")
        with self._lock:
            self._cache[key] = m
            if len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return m

    def constraint(self, kind: str, text: str) -> "Constraint":
        """A fresh per-sequence constraint for (kind, text)."""
        return Constraint(self, self.compile(kind, text).deep_copy(), kind)


def _one_line(msg: str) -> str:
    """The engine's (multi-line) message on one line, as pyrt's errors are."""
    return " ".join(line.strip() for line in msg.splitlines() if line.strip())


def bound_numbers(schema):
    """The schema with NUMBER_LIMIT as the missing minimum / maximum of every number and integer, and
    NUMBER_STEP as the missing multipleOf of every number."""
    if isinstance(schema, list):
        return [bound_numbers(v) for v in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: (v if k in _NOT_SCHEMAS else bound_numbers(v)) for k, v in schema.items()}
    t = schema.get("type")
    types = t if isinstance(t, list) else [t]
    if any(x in ("number", "integer") for x in types if isinstance(x, str)):
        lo = schema.get("minimum", schema.get("exclusiveMinimum"))
        hi = schema.get("maximum", schema.get("exclusiveMaximum"))
        num = (int, float)
        if lo is None and (hi is None or isinstance(hi, num) and hi > -NUMBER_LIMIT):
            out["minimum"] = -NUMBER_LIMIT
        if hi is None and (lo is None or isinstance(lo, num) and lo < NUMBER_LIMIT):
            out["maximum"] = NUMBER_LIMIT
        if "number" in types and "multipleOf" not in schema:
            out["multipleOf"] = NUMBER_STEP
    return out


def _grammar_spec(llg, kind: str, text: str) -> str:
    """llguidance's grammar description for (kind, text); GrammarError where the text itself is bad."""
    from llguidance.gbnf_to_lark import any_to_lark, gbnf_to_lark
    if kind == "json_schema":
        try:
            schema = json.loads(text)
        except json.JSONDecodeError as e:
            raise GrammarError(f"invalid json_schema: not JSON: {e}") from None
        if not isinstance(schema, (dict, bool)):
            raise GrammarError(f"invalid json_schema: a schema is an object or a boolean, "
                               f"got {type(schema).__name__}")
        try:
            return llg.LLMatcher.grammar_from_json_schema(bound_numbers(schema), defaults=JSON_DEFAULTS)
        except ValueError as e:
            raise GrammarError(f"invalid json_schema: {e}") from None
    if kind == "regex":
        return llg.LLMatcher.grammar_from_regex(text)
    try:
        if kind == "gbnf":
            text = gbnf_to_lark(text)
        elif kind == "grammar":
            text = any_to_lark(text)
    except Exception as e:  # the converter raises GbnfToLarkError, and bare Exception for undefined rules
        raise GrammarError(f"invalid gbnf grammar: {_one_line(str(e))}") from None
    return llg.LLMatcher.grammar_from_lark(text)


class _EngineVocab:
    """What llguidance's TokenizerWrapper reads: token bytes, special ids, and a tokenize callable."""

    def __init__(self, tokenizer, tokens: list[bytes]):
        self._tok = tokenizer
        self.tokens = tokens
        self.eos_token_id = tokenizer.eos_id if tokenizer.eos_id is not None else min(tokenizer.eog_ids)
        self.bos_token_id = tokenizer.bos_id
        self.special_token_ids = [t for t, b in enumerate(tokens) if b[:1] == b"\xff"]

    def __call__(self, text) -> list[int]:
        # the engine tokenizes forced text (token healing, fast-forward); special texts stay text
        if isinstance(text, bytes):
            text = text.decode("utf-8", errors="replace")
        return self._tok.tokenize(text, add_special=False, parse_special=False, space_prefix=False)


_ENGINES: "weakref.WeakKeyDictionary[Any, GrammarEngine]" = weakref.WeakKeyDictionary()
_ENGINES_LOCK = threading.Lock()


def engine_for(tokenizer) -> GrammarEngine:
    """The GrammarEngine of a pyrt Tokenizer (built on first use, then shared)."""
    with _ENGINES_LOCK:
        eng = _ENGINES.get(tokenizer)
        if eng is None:
            eng = _ENGINES[tokenizer] = GrammarEngine(tokenizer)
        return eng


class Constraint:
    """One sequence's grammar state. Per step: `mask_logits(logits)` (computing the mask, or using the one
    `fill_mask` computed for this state), sample, then `accept(token)`. End-of-generation tokens are
    allowed only where the grammar is complete.

    Not thread-safe on its own: one step's calls come from one thread at a time (the mask of the next
    step may be computed in another thread while the forward pass runs; llguidance drops the GIL).
    """

    def __init__(self, engine: GrammarEngine, matcher, kind: str):
        self.engine = engine
        self.kind = kind
        self._m = matcher
        self.bitmask = np.full(engine.n_words, -1, dtype=np.int32)  # [n_words] i32, bit t%32 of word t//32
        self._denied = np.empty(engine.n_vocab, dtype=np.bool_)  # [n_vocab] scratch of mask_logits
        self._fresh = False  # bitmask holds the mask of the current state
        self.n_accepted = 0

    # -- state -------------------------------------------------------------------------------------
    def is_accepting(self) -> bool:
        """The output so far is a complete match (an end-of-generation token is allowed now)."""
        return self._m.is_accepting()

    def is_stopped(self) -> bool:
        """The grammar allows no further text: the output is complete and generation ends here."""
        return self._m.is_stopped()

    def is_error(self) -> bool:
        return self._m.is_error()

    def stop_reason(self) -> str:
        return self._m.stop_reason()

    def forced_bytes(self) -> bytes:
        """The bytes the grammar forces next (the only continuation); the mask then allows just the
        canonical first token of that text, not every token that is a prefix of it."""
        return self._m.compute_ff_bytes()

    # -- masks -------------------------------------------------------------------------------------
    def fill_mask(self, out: np.ndarray | None = None) -> np.ndarray:
        """Computes the allowed tokens of the current state into `out` (or `self.bitmask`): an int32
        bitmask [ceil(n_vocab / 32)], token t allowed iff bit t % 32 of word t // 32 is set; or, when
        `out` is a bool array [>= n_vocab], one entry per token. Returns `out`."""
        if out is None or out is self.bitmask:
            if not self._fresh:
                self._m.unsafe_compute_mask_ptr(self.bitmask.ctypes.data, self.bitmask.nbytes)
                self._check()
                self._fresh = True
            return self.bitmask
        if out.dtype == np.int32:
            if out.ndim != 1 or out.shape[0] != self.engine.n_words or not out.flags.c_contiguous:
                raise InvalidArgumentError(f"bitmask must be a contiguous int32 [{self.engine.n_words}]")
            self._m.unsafe_compute_mask_ptr(out.ctypes.data, out.nbytes)
            self._check()
            return out
        if out.dtype == np.bool_:
            n = self.engine.n_vocab
            if out.ndim != 1 or out.shape[0] < n:
                raise InvalidArgumentError(f"bool mask must be 1-D with at least {n} entries")
            out[:n] = self.allowed()
            out[n:] = False
            return out
        raise InvalidArgumentError(f"mask must be int32 (bitmask) or bool, got {out.dtype}")

    def allowed(self) -> np.ndarray:
        """The current state's mask as bool [n_vocab]."""
        bits = np.unpackbits(self.fill_mask().view(np.uint8), count=self.engine.n_vocab, bitorder="little")
        return bits.view(np.bool_)

    def mask_logits(self, logits: np.ndarray) -> np.ndarray:
        """Sets the logits of disallowed tokens to -inf in place, from the current state's mask.
        logits: [n_vocab] f32 (writable). Returns logits."""
        n = self.engine.n_vocab
        if logits.ndim != 1 or logits.shape[0] != n:
            raise InvalidArgumentError(f"logits must be [{n}], got {list(logits.shape)}")
        np.logical_not(self.allowed(), out=self._denied)
        np.copyto(logits, _NEG_INF, where=self._denied)
        return logits

    def forbid(self, token_ids) -> None:
        """Clears the given tokens from the current state's mask (e.g. end-of-generation ids when the
        caller ignores EOS); the next `allowed`/`mask_logits` of this step honours it."""
        words = self.fill_mask().view(np.uint32)
        for t in token_ids:
            words[t >> 5] &= np.uint32(0xFFFFFFFF ^ (1 << (t & 31)))

    # -- advancing ---------------------------------------------------------------------------------
    def accept(self, token: int) -> None:
        """Advances the state by one sampled token; GrammarError if the grammar rejects it (the
        constraint then stays in its error state)."""
        self._fresh = False
        if not self._m.consume_token(int(token)):
            raise GrammarError(f"token {int(token)} is not allowed by the {self.kind}: "
                               f"{_one_line(self._m.get_error())}")
        self.n_accepted += 1

    def rollback(self, n_tokens: int) -> None:
        """Undoes the last n_tokens accepted tokens (speculative decoding, a rejected draft)."""
        if not 0 <= n_tokens <= self.n_accepted:
            raise InvalidArgumentError(f"cannot roll back {n_tokens} of {self.n_accepted} tokens")
        self._fresh = False
        if not self._m.rollback(n_tokens):
            raise GrammarError(f"rollback of {n_tokens} tokens failed: {_one_line(self._m.get_error())}")
        self.n_accepted -= n_tokens

    def reset(self) -> None:
        self._fresh = False
        self._m.reset()
        self.n_accepted = 0

    def _check(self) -> None:
        if self._m.is_error():
            raise GrammarError(f"the {self.kind} matcher failed: {_one_line(self._m.get_error())}")


def request_grammar(json_schema=None, regex: str | None = None, grammar: str | None = None,
                    response_format: dict | None = None) -> tuple[str, str] | None:
    """(kind, text) of a request's constraint, or None: at most one of json_schema (a dict, a bool or
    JSON text), regex, grammar (Lark or GBNF text) and an OpenAI response_format (`{"type": "text"}`,
    `{"type": "json_object"}` or `{"type": "json_schema", "json_schema": {"schema": ..., ...}}`)."""
    given = [k for k, v in (("json_schema", json_schema), ("regex", regex), ("grammar", grammar),
                            ("response_format", response_format)) if v is not None]
    if len(given) > 1:
        raise InvalidArgumentError(f"{' and '.join(given)} are mutually exclusive: give one constraint")
    if response_format is not None:
        return _response_format(response_format)
    if json_schema is not None:
        if isinstance(json_schema, str):
            return "json_schema", json_schema
        if isinstance(json_schema, (dict, bool)):
            return "json_schema", json.dumps(json_schema)
        raise InvalidArgumentError(f"json_schema must be a dict or JSON text, got {type(json_schema).__name__}")
    if regex is not None:
        return "regex", regex
    if grammar is not None:
        return "grammar", grammar
    return None


def _response_format(rf) -> tuple[str, str] | None:
    if not isinstance(rf, dict) or not isinstance(rf.get("type"), str):
        raise InvalidArgumentError("response_format must be an object with a 'type'")
    t = rf["type"]
    if t == "text":
        return None
    if t == "json_object":
        # llama-server also reads a "schema" here; OpenAI's json_object is any JSON object
        return "json_schema", json.dumps(rf.get("schema", {"type": "object"}))
    if t == "json_schema":
        js = rf.get("json_schema")
        if not isinstance(js, dict):
            raise InvalidArgumentError("response_format json_schema needs a 'json_schema' object")
        schema = js.get("schema", rf.get("schema"))
        if schema is None:
            # no schema: any JSON value is valid (OpenAI requires one; llama-server accepts this)
            schema = {}
        if not isinstance(schema, (dict, bool)):
            raise InvalidArgumentError("response_format json_schema.schema must be an object")
        return "json_schema", json.dumps(schema)
    raise InvalidArgumentError(f"response_format type must be 'text', 'json_object' or 'json_schema', got {t!r}")
