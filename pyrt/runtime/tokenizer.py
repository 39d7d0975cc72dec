"""Tokenizers built from GGUF metadata: SPM (`llama`) and byte-level BPE (`gpt2`), id-exact with llama.cpp.

Owns vocabulary loading (special and end-of-generation tokens, token attributes), special-token
partitioning, tokenize, token_to_piece, detokenize and the streaming UTF-8 decoder.
Imports only numpy, pyrt.errors and its two helpers tokenizer_spm / tokenizer_bpe (no model or kernel code).
"""

from __future__ import annotations

import codecs
from typing import Any, Iterable

import numpy as np

from ..errors import InvalidArgumentError, TokenizerError, UnsupportedError
from .tokenizer_bpe import PRE_TYPES, bpe_merge, byte_encode, compile_passes, decode_bytelevel, pretokenize
from .tokenizer_spm import spm_merge

__all__ = ["Tokenizer", "StreamDecoder"]

# GGUF token types (tokenizer.ggml.token_type) and llama.cpp's attribute bits they map to.
ATTR_UNDEFINED = 0
ATTR_UNKNOWN = 1 << 0
ATTR_UNUSED = 1 << 1
ATTR_NORMAL = 1 << 2
ATTR_CONTROL = 1 << 3
ATTR_USER_DEFINED = 1 << 4
ATTR_BYTE = 1 << 5
ATTR_LSTRIP = 1 << 7
ATTR_RSTRIP = 1 << 8
# index = GGUF token type 0..6: undefined, normal, unknown, control, user-defined, unused, byte
_TYPE_TO_ATTR = np.array(
    [ATTR_UNDEFINED, ATTR_NORMAL, ATTR_UNKNOWN, ATTR_CONTROL, ATTR_USER_DEFINED, ATTR_UNUSED, ATTR_BYTE],
    dtype=np.int32,
)

_K = "tokenizer.ggml."
# (metadata key suffix, attribute name); later keys of the same attribute override earlier ones,
# as in llama.cpp (the deprecated prefix/suffix/middle keys come last).
_SPECIAL_KEYS = (
    ("bos_token_id", "bos_id"), ("eos_token_id", "eos_id"), ("eot_token_id", "eot_id"),
    ("eom_token_id", "eom_id"), ("unknown_token_id", "unk_id"), ("seperator_token_id", "sep_id"),
    ("padding_token_id", "pad_id"), ("mask_token_id", "mask_id"),
    ("fim_pre_token_id", "fim_pre_id"), ("fim_suf_token_id", "fim_suf_id"),
    ("fim_mid_token_id", "fim_mid_id"), ("fim_pad_token_id", "fim_pad_id"),
    ("fim_rep_token_id", "fim_rep_id"), ("fim_sep_token_id", "fim_sep_id"),
    ("prefix_token_id", "fim_pre_id"), ("suffix_token_id", "fim_suf_id"), ("middle_token_id", "fim_mid_id"),
)

# Texts llama.cpp uses to find special tokens the converter did not name (llama-vocab.cpp, load()).
_AUTO_DETECT = (
    ("eot_id", ("<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endoftext|>", "<|end_of_text|>",
                "<EOT>", "_<EOT>", "[EOT]", "<｜end▁of▁sentence｜>", "<end_of_utterance>")),
    ("eom_id", ("<|eom_id|>",)),
    ("fim_pre_id", ("<|fim_prefix|>", "<fim-prefix>", "<fim_prefix>", "<｜fim▁begin｜>", "<PRE>", "▁<PRE>",
                    "<|code_prefix|>", "<|prefix|>")),
    ("fim_suf_id", ("<|fim_suffix|>", "<fim-suffix>", "<fim_suffix>", "<｜fim▁hole｜>", "<SUF>", "▁<SUF>",
                    "<|code_suffix|>", "<|suffix|>")),
    ("fim_mid_id", ("<|fim_middle|>", "<fim-middle>", "<fim_middle>", "<｜fim▁end｜>", "<MID>", "▁<MID>",
                    "<|code_middle|>", "<|middle|>")),
    ("fim_pad_id", ("<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", "[PAD]")),
    ("fim_rep_id", ("<|fim_repo|>", "<|repo_name|>", "<fim-repo>", "<REPO>", "<reponame>")),
    ("fim_sep_id", ("<|file_sep|>",)),
)
_EOG_TEXTS = frozenset((
    "<|eot_id|>", "<|im_end|>", "<|end|>", "<|return|>", "<|call|>", "<|flush|>", "<|calls|>",
    "<end_of_turn>", "<|endoftext|>", "</s>", "<|eom_id|>", "<EOT>", "_<EOT>", "[EOT]", "[EOS]",
    "<|end_of_text|>", "<end_of_utterance>", "<eos>", "<turn|>", "<|tool_response>",
    "<｜end▁of▁sentence｜>", "[e~[",
))
_GPT_OSS_USER_DEFINED = frozenset(("<|channel|>", "<|message|>", "<|start|>", "<|constrain|>"))

_ASCII_SPACE = " \t\n\v\f\r"  # C isspace(), used by the lstrip/rstrip attributes


def _md_get(md: dict, key: str, default: Any = None) -> Any:
    v = md.get(key, default)
    return default if v is None else v


def _strtol_hex(s: str) -> int:
    """strtol(s, NULL, 16) on the two characters llama.cpp reads from a `<0xXX>` token."""
    v = 0
    for ch in s:
        d = "0123456789abcdef".find(ch.lower())
        if d < 0:
            break
        v = v * 16 + d
    return v


class StreamDecoder:
    """Turns a stream of token ids into text, never emitting half of a UTF-8 character."""

    def __init__(self, tokenizer: "Tokenizer", special: bool = False):
        self._tok = tokenizer
        self._special = special
        self._dec = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def feed(self, token: int) -> str:
        """Append one token; return the text that is now complete (possibly empty)."""
        return self._dec.decode(self._tok.token_to_piece(token, self._special), final=False)

    def flush(self) -> str:
        """Return what is held back (an incomplete sequence becomes U+FFFD) and reset."""
        out = self._dec.decode(b"", final=True)
        self._dec.reset()
        return out


class Tokenizer:
    """A GGUF vocabulary with llama.cpp's tokenize / detokenize behaviour.

    Build with `Tokenizer.from_metadata(md)`. Supports `tokenizer.ggml.model` = `llama` (SPM) and
    `gpt2` (byte-level BPE) with the pre-tokenizers listed in `tokenizer_bpe.PRE_TYPES`.
    """

    n_vocab: int
    bos_id: int | None
    eos_id: int | None
    eot_id: int | None
    eom_id: int | None
    unk_id: int | None
    sep_id: int | None
    pad_id: int | None
    mask_id: int | None
    add_bos: bool
    add_eos: bool
    add_space_prefix: bool

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_metadata(cls, md: dict) -> "Tokenizer":
        """Build from GGUF metadata (key -> value; arrays as lists or numpy arrays)."""
        self = cls.__new__(cls)
        self._load(md)
        return self

    def _load(self, md: dict) -> None:
        model = md.get(_K + "model")
        if model is None:
            raise TokenizerError("GGUF has no tokenizer.ggml.model; the file carries no usable vocabulary")
        model = str(model)
        pre = str(_md_get(md, _K + "pre", ""))
        self.model, self.pre = model, pre

        self.bos_id, self.eos_id, self.unk_id = 1, 2, 0
        self.eot_id = self.eom_id = self.sep_id = self.pad_id = self.mask_id = None
        self.fim_pre_id = self.fim_suf_id = self.fim_mid_id = None
        self.fim_pad_id = self.fim_rep_id = self.fim_sep_id = None
        self.add_space_prefix = False
        self.add_bos = self.add_eos = False
        self.ignore_merges = False
        self.clean_spaces = False
        self._ranks: dict[str, int] = {}
        self._passes: tuple = ()

        if model == "llama":
            self.is_spm = True
            self.add_space_prefix = True
            self.add_bos = True
        elif model == "gpt2":
            self.is_spm = False
            self.bos_id = self.eos_id = 11
            self.unk_id = None
            self.clean_spaces = True
            merges = md.get(_K + "merges")
            if merges is None:
                raise TokenizerError("BPE vocabulary without tokenizer.ggml.merges")
            merges = list(merges)
            # llama.cpp keys a merge "a b" as the pair split at the first space after index 0 and keeps
            # the first rank of a duplicated pair; byte-level symbols never contain a space, so the
            # merge line itself is the key.
            self._ranks = dict(zip(reversed(merges), range(len(merges) - 1, -1, -1)))
            key = pre if pre else "default"
            if key not in PRE_TYPES:
                raise UnsupportedError(f"pre-tokenizer {pre!r} (tokenizer.ggml.pre) is not supported")
            kind, flags = PRE_TYPES[key]
            self._passes = compile_passes(kind)
            for k, v in flags.items():
                setattr(self, k, v)
        elif model in ("no_vocab", "none"):
            raise TokenizerError(f"the file has no vocabulary (tokenizer.ggml.model = {model!r})")
        elif model in ("bert", "t5", "rwkv", "plamo2", "gemma4", "hybriddna", "whitespace", "test"):
            raise UnsupportedError(f"tokenizer model {model!r} is not supported (only 'llama' and 'gpt2')")
        else:
            raise TokenizerError(f"unknown tokenizer model {model!r} (tokenizer.ggml.model)")

        self.add_space_prefix = bool(_md_get(md, _K + "add_space_prefix", self.add_space_prefix))

        tokens = md.get(_K + "tokens")
        if tokens is None:
            raise TokenizerError("GGUF has no tokenizer.ggml.tokens")
        tokens = [str(t) for t in tokens] if not isinstance(tokens, list) else list(tokens)
        n = len(tokens)
        if n == 0:
            raise TokenizerError("tokenizer.ggml.tokens is empty")
        if "" in tokens:
            tokens = [t if t else f"[EMPTY_{i}]" for i, t in enumerate(tokens)]
        self.n_vocab = n
        self._text = tokens

        scores = md.get(_K + "scores")
        if scores is None:
            self._scores = [0.0] * n
        else:
            scores = np.asarray(scores)
            if scores.ndim != 1 or scores.shape[0] < n:
                raise TokenizerError(f"tokenizer.ggml.scores has {scores.size} entries for {n} tokens")
            self._scores = scores[:n].astype(np.float32).tolist()

        types = md.get(_K + "token_type")
        if types is None:
            attrs = np.full(n, ATTR_NORMAL, dtype=np.int32)
        else:
            types = np.asarray(types, dtype=np.int64)
            if types.ndim != 1 or types.shape[0] < n:
                raise TokenizerError(f"tokenizer.ggml.token_type has {types.size} entries for {n} tokens")
            types = types[:n]
            ok = (types >= 0) & (types < len(_TYPE_TO_ATTR))
            attrs = np.where(ok, _TYPE_TO_ATTR[np.where(ok, types, 0)], ATTR_UNDEFINED).astype(np.int32)
        self._attr = attrs.tolist()
        # duplicates: the last id wins, as llama.cpp's token_to_id[word] = i
        self._token_to_id = dict(zip(tokens, range(n)))

        self._load_special(md)
        self._build_special_cache()
        self._load_strip_attrs(md)

        self._piece_cache: list[bytes | None] = [None] * n
        self._word_cache: dict[str, list[int]] = {}
        self._byte_tokens: list[int | None] | None = None
        self._linefeed_id: int | None = -1
        self._token_bytes: list[bytes] | None = None

    def _load_special(self, md: dict) -> None:
        n, attr, t2i = self.n_vocab, self._attr, self._token_to_id
        for _, name in _SPECIAL_KEYS:  # defaults outside the vocabulary are disabled
            v = getattr(self, name)
            if v is not None and v >= n:
                setattr(self, name, None)
        for key, name in _SPECIAL_KEYS:
            v = md.get(_K + key)
            if v is None:
                continue
            v = int(v)
            if 0 <= v < n:
                setattr(self, name, v)
        if (v := md.get(_K + "add_bos_token")) is not None:
            self.add_bos = bool(v)
        if (v := md.get(_K + "add_eos_token")) is not None:
            self.add_eos = bool(v)

        # auto-detect unnamed special tokens by their text; llama.cpp walks an unordered_map here, so
        # when several texts qualify we take the first of the list (matches it on llama3 and qwen2)
        for name, texts in _AUTO_DETECT:
            if getattr(self, name) is not None:
                continue
            for t in texts:
                if t in t2i:
                    tid = t2i[t]
                    setattr(self, name, tid)
                    attr[tid] |= ATTR_CONTROL
                    break

        text = self._text
        for tid in np.flatnonzero(np.asarray(attr, dtype=np.int32) & ATTR_CONTROL).tolist():
            if "unused" in text[tid] and t2i[text[tid]] == tid:  # control tokens named "unused" are unused
                attr[tid] |= ATTR_UNUSED

        eog: set[int] = set()
        for tid in (self.fim_pad_id, self.fim_rep_id, self.fim_sep_id):
            if tid is not None:
                eog.add(tid)
        for text in _EOG_TEXTS:
            tid = t2i.get(text)
            if tid is not None:
                eog.add(tid)
                attr[tid] |= ATTR_CONTROL
        for text in _GPT_OSS_USER_DEFINED:
            tid = t2i.get(text)
            if tid is not None:
                attr[tid] = ATTR_USER_DEFINED
        for tid in (self.eos_id, self.eot_id, self.eom_id):
            if tid is not None:
                eog.add(tid)
        texts = {self._text[t]: t for t in eog if 0 <= t < n}
        # o200k_harmony / solar-open: "<|end|>" is not end-of-generation there
        if "<|end|>" in texts and (("<|return|>" in texts and "<|call|>" in texts)
                                   or ("<|calls|>" in texts and "<|flush|>" in texts)):
            tid = texts["<|end|>"]
            eog.discard(tid)
            attr[tid] = ATTR_USER_DEFINED
        # gemma4 / plamo2: "</s>" is a normal token
        if "</s>" in texts and ("<|tool_response>" in texts or "<|plamo:eos|>" in texts):
            tid = texts["</s>"]
            eog.discard(tid)
            attr[tid] = ATTR_NORMAL
        self.eog_ids = frozenset(eog)

    def _build_special_cache(self) -> None:
        mask = ATTR_CONTROL | ATTR_USER_DEFINED | ATTR_UNKNOWN
        ids = np.flatnonzero(np.asarray(self._attr, dtype=np.int32) & mask).tolist()
        # longest text first (llama.cpp sorts by byte length; ties by id here)
        ids.sort(key=lambda i: -len(self._text[i].encode("utf-8", "surrogateescape")))
        self._special_ids = ids

    def _load_strip_attrs(self, md: dict) -> None:
        """Per-model lstrip/rstrip attributes llama.cpp sets by name (they only affect partitioning)."""
        name = str(_md_get(md, "general.name", "")).lower()
        pre = str(_md_get(md, _K + "pre", ""))
        arch = str(_md_get(md, "general.architecture", ""))
        attr, t2i = self._attr, self._token_to_id
        if any(s in pre for s in ("jina-v2-de", "jina-v2-es", "jina-v2-code")) or any(
                s in arch for s in ("nomic-bert-moe", "jina-bert-v3")):
            if "<mask>" in t2i:
                attr[t2i["<mask>"]] |= ATTR_LSTRIP
        elif "phi-3" in name or "phi3" in name:
            for tid in self._special_ids:
                attr[tid] |= ATTR_RSTRIP
            for text, on in (("</s>", True), ("<unk>", False), ("<s>", False), ("<|endoftext|>", False)):
                if text not in t2i:
                    raise TokenizerError(f"phi-3 vocabulary without {text!r}")
                tid = t2i[text]
                attr[tid] = attr[tid] | ATTR_RSTRIP if on else attr[tid] & ~ATTR_RSTRIP
        elif "modern-bert" in name:
            if "[MASK]" in t2i:
                attr[t2i["[MASK]"]] |= ATTR_LSTRIP

    # ------------------------------------------------------------------ properties
    def token_text(self, token: int) -> str:
        """The token's text as stored in the vocabulary."""
        return self._text[self._check_id(token)]

    def token_attr(self, token: int) -> int:
        """llama.cpp's attribute bits of the token (ATTR_* constants)."""
        return self._attr[self._check_id(token)]

    def token_score(self, token: int) -> float:
        return self._scores[self._check_id(token)]

    def is_eog(self, token: int) -> bool:
        """End of generation: eos, eot, eom and the other texts llama.cpp treats as such."""
        return token in self.eog_ids

    def is_control(self, token: int) -> bool:
        return bool(self._attr[self._check_id(token)] & ATTR_CONTROL)

    @property
    def nl_id(self) -> int | None:
        """The newline token (llama.cpp's linefeed_id)."""
        if self._linefeed_id == -1:
            if self.is_spm:
                self._linefeed_id = self._byte_token(10)
                if self._linefeed_id is None:
                    self._linefeed_id = self.pad_id
            else:
                ids = self.tokenize("\n", add_special=False)
                self._linefeed_id = ids[0] if ids else self.pad_id
        return self._linefeed_id

    def _check_id(self, token: int) -> int:
        if not 0 <= token < self.n_vocab:
            raise InvalidArgumentError(f"token id {token} is outside the vocabulary [0, {self.n_vocab})")
        return token

    # ------------------------------------------------------------------ tokenize
    def tokenize(self, text: str, add_special: bool = True, parse_special: bool = False,
                 space_prefix: bool = True) -> list[int]:
        """Text -> token ids, as llama_tokenize(add_special, parse_special). space_prefix=False: no
        leading space before the text even if the SPM vocabulary adds one (text that continues a
        sequence, as a grammar engine's forced text)."""
        if not isinstance(text, str):
            raise InvalidArgumentError(f"tokenize() needs a str, got {type(text).__name__}")
        if not text.isascii():
            try:
                text.encode("utf-8")
            except UnicodeEncodeError as e:
                raise InvalidArgumentError(f"text is not valid Unicode: {e}") from None
        frags = self._partition(text, parse_special) if text else []
        out: list[int] = []
        if add_special and self.add_bos:
            if self.bos_id is None:
                raise TokenizerError("the vocabulary asks for a BOS token but has none")
            out.append(self.bos_id)
        if self.is_spm:
            prev_special = True  # a leading space goes before the first text and after each special token
            for f in frags:
                if type(f) is int:
                    out.append(f)
                    prev_special = True
                else:
                    piece = text[f[0]:f[1]]
                    if self.add_space_prefix and prev_special and space_prefix:
                        piece = " " + piece
                    self._spm(piece.replace(" ", "\u2581"), out)
                    prev_special = False
        else:
            for f in frags:
                if type(f) is int:
                    out.append(f)
                else:
                    self._bpe(text[f[0]:f[1]], out)
        if add_special and self.add_eos:
            if self.eos_id is None:
                raise TokenizerError("the vocabulary asks for an EOS token but has none")
            out.append(self.eos_id)
        return out

    def _partition(self, text: str, parse_special: bool) -> list:
        """Split out special-token texts (llama.cpp tokenizer_st_partition): ids and (start, end) spans."""
        frags: list = [(0, len(text))]
        skip = 0 if parse_special else (ATTR_CONTROL | ATTR_UNKNOWN)
        attrs, texts = self._attr, self._text
        for tid in self._special_ids:
            a = attrs[tid]
            if a & skip:
                continue
            s = texts[tid]
            if s not in text:
                continue
            ls = len(s)
            new: list = []
            for f in frags:
                if type(f) is int:
                    new.append(f)
                    continue
                lo, hi = f
                while True:
                    m = text.find(s, lo, hi)
                    if m < 0:
                        new.append((lo, hi))
                        break
                    left = m
                    if a & ATTR_LSTRIP:
                        while left > lo and text[left - 1] in _ASCII_SPACE:
                            left -= 1
                    if left > lo:
                        new.append((lo, left))
                    new.append(tid)
                    lo = m + ls
                    if a & ATTR_RSTRIP:
                        while lo < hi and text[lo] in _ASCII_SPACE:
                            lo += 1
                    if lo >= hi:
                        break
            frags = new
        return frags

    def _byte_token(self, b: int) -> int | None:
        if self._byte_tokens is None:
            t2i, table = self._token_to_id, []
            for i in range(256):
                tid = t2i.get(f"<0x{i:02X}>")
                if tid is None:
                    tid = t2i.get(bytes([i]).decode("utf-8", "surrogateescape"))
                table.append(tid)
            self._byte_tokens = table
        return self._byte_tokens[b]

    def _spm(self, text: str, out: list[int]) -> None:
        t2i = self._token_to_id
        for sym in spm_merge(text, t2i, self._scores):
            tid = t2i.get(sym)
            if tid is not None:
                out.append(tid)
                continue
            # merged symbols are always tokens, so this is one unknown character: byte fallback
            for b in sym.encode("utf-8", "surrogatepass"):
                bt = self._byte_token(b)
                if bt is None:
                    raise TokenizerError(f"SPM vocabulary has no byte token for 0x{b:02X}")
                out.append(bt)

    def _bpe(self, text: str, out: list[int]) -> None:
        cache, t2i = self._word_cache, self._token_to_id
        for word in pretokenize(text, self._passes):
            ids = cache.get(word)
            if ids is None:
                enc = byte_encode(word)
                if self.ignore_merges and enc in t2i:
                    ids = [t2i[enc]]
                else:
                    ids = []
                    for sym in bpe_merge(enc, self._ranks):
                        tid = t2i.get(sym)
                        if tid is not None:
                            ids.append(tid)
                        else:
                            # llama.cpp looks up each byte of the symbol's UTF-8 as a one-byte token
                            for b in sym.encode("utf-8"):
                                tid = t2i.get(bytes([b]).decode("utf-8", "surrogateescape"))
                                if tid is not None:
                                    ids.append(tid)
                if len(cache) > 65536:
                    cache.clear()
                cache[word] = ids
            out.extend(ids)

    def _piece(self, token: int) -> bytes:
        p = self._piece_cache[token]
        if p is None:
            a, t = self._attr[token], self._text[token]
            if a & (ATTR_UNKNOWN | ATTR_CONTROL | ATTR_USER_DEFINED):
                p = t.encode("utf-8", "surrogateescape")
            elif a & ATTR_NORMAL:
                if self.is_spm:
                    p = t.replace("\u2581", " ").encode("utf-8", "surrogateescape")
                else:
                    p = decode_bytelevel(t)
            elif a & ATTR_BYTE:
                p = bytes([_strtol_hex(t[3:5]) & 0xFF])
            else:
                p = b""
            self._piece_cache[token] = p
        return p

    def token_to_piece(self, token: int, special: bool = False) -> bytes:
        """The bytes of one token, as llama_token_to_piece(lstrip=0): control/unknown tokens are
        empty unless `special`."""
        self._check_id(token)
        if not special and self._attr[token] & (ATTR_UNKNOWN | ATTR_CONTROL):
            return b""
        return self._piece(token)

    def token_bytes(self) -> list[bytes]:
        """Every token's bytes as generation emits them, for a grammar engine (index = token id).

        Normal, byte and user-defined tokens: exactly `token_to_piece(t)`, the bytes the streaming
        decoder yields for the token (SPM: U+2581 -> space, `<0xNN>` -> that byte; byte-level BPE:
        the GPT-2 byte map undone). `detokenize` differs only by its sequence-level rules: the
        leading space of an `add_space_prefix` vocabulary and `clean_spaces`. Control, unknown,
        unused and undefined tokens emit no text; they are b"\\xff" + their vocabulary text, the
        special-token convention of llguidance (0xFF never occurs in UTF-8, so no text matches it).
        So is a token whose bytes start with 0xFF (the byte token <0xFF>, BPE's "ÿ" byte): it cannot be
        part of UTF-8 text either, and would otherwise read as a special-token marker.
        """
        if self._token_bytes is None:
            hidden = ATTR_CONTROL | ATTR_UNKNOWN
            out = []
            for t in range(self.n_vocab):
                a = self._attr[t]
                p = self._piece(t)
                if a & hidden or not a & (ATTR_NORMAL | ATTR_BYTE | ATTR_USER_DEFINED) or p[:1] == b"\xff":
                    out.append(b"\xff" + self._text[t].encode("utf-8", "surrogateescape"))
                else:
                    out.append(p)
            self._token_bytes = out
        return self._token_bytes

    def detokenize_bytes(self, ids: Iterable[int], special: bool = False) -> bytes:
        """llama_detokenize(remove_special=False, unparse_special=special) as raw bytes."""
        buf = bytearray()
        remove_space = self.add_space_prefix
        for tid in ids:
            p = self.token_to_piece(int(tid), special)
            if remove_space and p:
                if p[:1] == b" ":
                    p = p[1:]
            remove_space = False
            buf += p
        if self.clean_spaces and buf:
            buf = _clean_spaces(buf)
        return bytes(buf)

    def detokenize(self, ids: Iterable[int], special: bool = False) -> str:
        """Token ids -> text, as llama_detokenize(remove_special=False, unparse_special=special);
        invalid UTF-8 becomes U+FFFD."""
        return self.detokenize_bytes(ids, special).decode("utf-8", errors="replace")

    def decoder(self, special: bool = False) -> StreamDecoder:
        """A streaming decoder for generated tokens (no leading-space removal, no space cleanup)."""
        return StreamDecoder(self, special)


def _clean_spaces(t: bytearray) -> bytearray:
    """llama.cpp's clean_up_tokenization_spaces passes over the detokenized bytes."""
    SP, Q = 0x20, 0x27
    # " ?", " !", " .", " ,": drop the space
    n = len(t)
    out = 1
    for i in range(1, n):
        x = t[i]
        if t[i - 1] == SP and x in (0x3F, 0x21, 0x2E, 0x2C):
            out -= 1
        t[out] = x
        out += 1
    # " ' ": drop both spaces around a lone apostrophe
    n, out, i = out, 1, 1
    while i < n:
        x = t[i]
        if x == Q and i + 1 < n and t[i - 1] == SP and t[i + 1] == SP:
            out -= 1
            i += 1
            t[i] = 0
        t[out] = x
        out += 1
        i += 1
    # " 's", " 'm", " 're", " 've": drop the space
    n, out = out, 1
    for i in range(1, n):
        x = t[i]
        if t[i - 1] == SP and x == Q and i + 1 < n:
            x1 = t[i + 1]
            if x1 in (0x73, 0x6D):  # s m
                out -= 1
            elif x1 not in (0x74, 0x64) and i + 2 < n:  # not t d
                x2 = t[i + 2]
                if (x1 == 0x72 and x2 == 0x65) or (x1 == 0x76 and x2 == 0x65):  # re ve
                    out -= 1
        t[out] = x
        out += 1
    del t[out:]
    return t
