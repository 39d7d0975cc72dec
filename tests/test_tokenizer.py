"""Tokenizer tests: ids, pieces and detokenization against llama.cpp goldens (llama-cpp-python).

Goldens come from tools/make_tokenizer_goldens.py on tests/data/tokenizer_corpus.json; variant
goldens apply metadata overrides to a base vocab file to reach other pre-tokenizers and flags.
"""

from __future__ import annotations

import functools
import json
import random
import time
from pathlib import Path

import numpy as np
import pytest

from pyrt.errors import InvalidArgumentError, TokenizerError, UnsupportedError
from pyrt.io.gguf_file import GGUFFile
from pyrt.runtime.tokenizer import Tokenizer

DATA = Path(__file__).parent / "data"
VOCABS = ["llama-spm", "llama-bpe", "qwen2", "gpt-2"]
VARIANTS = sorted(
    p.name[len("tokenizer_goldens_"):-len(".json")]
    for p in DATA.glob("tokenizer_goldens_*.json")
    if p.name[len("tokenizer_goldens_"):-len(".json")] not in VOCABS
)


@functools.lru_cache(maxsize=None)
def _metadata(name: str) -> dict:
    return dict(GGUFFile(DATA / "vocab" / f"ggml-vocab-{name}.gguf").metadata)


@functools.lru_cache(maxsize=None)
def _goldens(name: str) -> dict:
    return json.loads((DATA / f"tokenizer_goldens_{name}.json").read_text(encoding="utf-8"))


@functools.lru_cache(maxsize=None)
def _tokenizer(name: str) -> Tokenizer:
    g = _goldens(name)
    md = dict(_metadata(g.get("base", name)))
    md.update(g.get("overrides", {}))
    return Tokenizer.from_metadata(md)


def test_corpus_covers_the_brief():
    corpus = json.loads((DATA / "tokenizer_corpus.json").read_text(encoding="utf-8"))
    assert len(corpus) >= 200 and len(set(corpus)) == len(corpus)
    for must in ["", " ", "\n\n\n", "<s>", "</s>", "<|endoftext|>", "<|im_start|>", "<|im_sta", "<unk>",
                 "👨‍👩‍👧‍👦", "🇺🇸🇬🇧🇯🇵", "1234567890", "don't"]:
        assert must in corpus
    for name in VOCABS:
        assert [c["text"] for c in _goldens(name)["cases"]] == corpus


def _mismatches(tok: Tokenizer, g: dict) -> list[str]:
    bad = []
    for c in g["cases"]:
        text = c["text"]
        got = tok.tokenize(text, add_special=True, parse_special=False)
        if got != c["ids"]:
            bad.append(f"tokenize(add_special) {text!r}: {got} != {c['ids']}")
        got = tok.tokenize(text, add_special=False, parse_special=True)
        if got != c["ids_special"]:
            bad.append(f"tokenize(parse_special) {text!r}: {got} != {c['ids_special']}")
        got = tok.detokenize_bytes(c["ids"], special=False).hex()
        if got != c["detok"]:
            bad.append(f"detokenize {text!r}: {bytes.fromhex(got)!r} != {bytes.fromhex(c['detok'])!r}")
        got = tok.detokenize_bytes(c["ids_special"], special=True).hex()
        if got != c["detok_special"]:
            bad.append(f"detokenize(special) {text!r}: {bytes.fromhex(got)!r} != "
                       f"{bytes.fromhex(c['detok_special'])!r}")
    return bad


@pytest.mark.parametrize("name", VOCABS + VARIANTS)
def test_ids_and_detokenize_match_llama_cpp(name):
    g = _goldens(name)
    assert len(g["cases"]) >= 150
    bad = _mismatches(_tokenizer(name), g)
    assert not bad, f"{len(bad)} mismatches, first ones:\n" + "\n".join(bad[:10])


@pytest.mark.parametrize("name", VOCABS + VARIANTS)
def test_special_ids_and_eog_match_llama_cpp(name):
    g, tok = _goldens(name), _tokenizer(name)
    assert tok.n_vocab == g["n_vocab"]
    assert (tok.bos_id, tok.eos_id, tok.eot_id) == (g["bos"], g["eos"], g["eot"])
    assert (tok.add_bos, tok.add_eos) == (g["add_bos"], g["add_eos"])
    assert sorted(tok.eog_ids) == g["eog"]
    for t in g["eog"]:
        assert tok.is_eog(t)
    assert not tok.is_eog(tok.tokenize("a", add_special=False)[0])


@pytest.mark.parametrize("name", VOCABS)
def test_token_to_piece_matches_llama_cpp(name):
    g, tok = _goldens(name), _tokenizer(name)
    assert len(g["pieces"]) > 1000
    bad = []
    for tid, (plain, special) in g["pieces"].items():
        tid = int(tid)
        if tok.token_to_piece(tid).hex() != plain or tok.token_to_piece(tid, special=True).hex() != special:
            bad.append((tid, tok.token_text(tid), bytes.fromhex(plain), bytes.fromhex(special)))
    assert not bad, bad[:10]


@pytest.mark.parametrize("name", VOCABS)
def test_round_trip_where_llama_cpp_round_trips(name):
    g, tok = _goldens(name), _tokenizer(name)
    n = 0
    for c in g["cases"]:
        if bytes.fromhex(c["detok_special"]) == c["text"].encode("utf-8"):
            ids = tok.tokenize(c["text"], add_special=False, parse_special=True)
            assert tok.detokenize(ids, special=True) == c["text"]
            n += 1
    assert n >= 100, f"only {n} round-tripping strings for {name}"


def test_spm_specifics():
    tok = _tokenizer("llama-spm")
    assert tok.tokenize("") == [1] and tok.tokenize("", add_special=False) == []
    # leading-space prefix: "Hello" and " Hello" differ, detokenize drops the prefix again
    a, b = tok.tokenize("Hello", False), tok.tokenize(" Hello", False)
    assert a != b and tok.detokenize(a) == "Hello" and tok.detokenize(b) == " Hello"
    # byte fallback for characters outside the vocabulary
    ids = tok.tokenize("🦙", add_special=False)
    assert [tok.token_text(i) for i in ids][-4:] == ["<0xF0>", "<0x9F>", "<0xA6>", "<0x99>"]
    # control tokens only with parse_special; their piece only with special=True
    assert 2 in tok.tokenize("a</s>", False, parse_special=True)
    assert 2 not in tok.tokenize("a</s>", False, parse_special=False)
    assert tok.token_to_piece(2) == b"" and tok.token_to_piece(2, special=True) == b"</s>"


def test_bpe_specifics():
    tok = _tokenizer("llama-bpe")
    ids = tok.tokenize("1234567", add_special=False)
    assert [tok.token_to_piece(i) for i in ids] == [b"123", b"456", b"7"]  # llama3 digit groups
    q = _tokenizer("qwen2")
    ids = q.tokenize("<|im_start|>user", add_special=False, parse_special=True)
    assert q.token_text(ids[0]) == "<|im_start|>" and q.is_control(ids[0])
    assert q.tokenize("<|im_start|>", False, False) != ids[:1]
    assert q.is_eog(q.tokenize("<|im_end|>", False, True)[0])


def _check_stream(tok: Tokenizer, ids: list[int], special: bool = False) -> None:
    dec = tok.decoder(special)
    pieces = b""
    out = ""
    for t in ids:
        s = dec.feed(t)
        pieces += tok.token_to_piece(t, special)
        out += s
        assert "\ufffd" not in s
        # everything complete so far has been emitted, nothing more
        complete = pieces.decode("utf-8", errors="ignore")
        tail = len(pieces) - len(complete.encode("utf-8"))
        assert out == complete and 0 <= tail < 4
    out += dec.flush()
    assert out == pieces.decode("utf-8")


def test_stream_decoder_holds_back_partial_utf8():
    spm = _tokenizer("llama-spm")
    text = "日本🦙x👨‍👩‍👧 ñ 𝓗"
    ids = spm.tokenize(text, add_special=False)
    assert any(spm.token_attr(i) & 32 for i in ids)  # byte tokens really split characters here
    _check_stream(spm, ids)
    # a character split over byte tokens comes out whole on its last byte
    dec = spm.decoder()
    byte_ids = spm.tokenize("🦙", add_special=False)[-4:]
    assert [dec.feed(i) for i in byte_ids] == ["", "", "", "🦙"]
    for name in ["llama-bpe", "qwen2", "gpt-2"]:
        tok = _tokenizer(name)
        ids = tok.tokenize(text + " 鱻龘", add_special=False)
        assert any(tok.token_to_piece(i).decode("utf-8", "ignore").encode() != tok.token_to_piece(i) for i in ids)
        _check_stream(tok, ids)
    # an unfinished sequence is replaced on flush, and the decoder starts afresh
    dec = spm.decoder()
    assert dec.feed(byte_ids[0]) == "" and dec.flush() == "\ufffd"
    assert dec.feed(spm.tokenize("a", False)[-1]) == " a"  # SPM pieces keep their space


def test_errors():
    md = _metadata("gpt-2")
    with pytest.raises(TokenizerError):
        Tokenizer.from_metadata({k: v for k, v in md.items() if k != "tokenizer.ggml.model"})
    with pytest.raises(TokenizerError):
        Tokenizer.from_metadata({**md, "tokenizer.ggml.model": "no-such-model"})
    with pytest.raises(UnsupportedError):
        Tokenizer.from_metadata({**md, "tokenizer.ggml.model": "bert"})
    with pytest.raises(UnsupportedError):
        Tokenizer.from_metadata({**md, "tokenizer.ggml.pre": "no-such-pre"})
    with pytest.raises(TokenizerError):
        Tokenizer.from_metadata({k: v for k, v in md.items() if k != "tokenizer.ggml.tokens"})
    with pytest.raises(TokenizerError):
        Tokenizer.from_metadata({k: v for k, v in md.items() if k != "tokenizer.ggml.merges"})
    with pytest.raises(TokenizerError):
        Tokenizer.from_metadata({**md, "tokenizer.ggml.token_type": np.ones(10, np.int32)})
    # llama.cpp refuses a "phi-3" named vocab without <|endoftext|>
    with pytest.raises(TokenizerError):
        Tokenizer.from_metadata({**_metadata("llama-spm"), "general.name": "Phi-3 mini"})
    tok = _tokenizer("gpt-2")
    with pytest.raises(InvalidArgumentError):
        tok.token_to_piece(tok.n_vocab)
    with pytest.raises(InvalidArgumentError):
        tok.token_to_piece(-1)
    with pytest.raises(InvalidArgumentError):
        tok.tokenize(b"bytes")  # type: ignore[arg-type]


def test_build_speed_large_vocab(capsys):
    md = _metadata("qwen2")  # 151936 tokens, 151387 merges
    t0 = time.perf_counter()
    tok = Tokenizer.from_metadata(md)
    t1 = time.perf_counter()
    text = " ".join(c["text"] for c in _goldens("qwen2")["cases"])[:4096]
    ids = tok.tokenize(text, parse_special=True)
    t2 = time.perf_counter()
    # a Gemma-3-sized SPM vocabulary (262144 tokens), synthetic
    rng = random.Random(0)
    alphabet = "abcdefghijklmnopqrstuvwxyz▁"
    pieces = ["<pad>", "<eos>", "<bos>", "<unk>"] + [f"<0x{i:02X}>" for i in range(256)] + list(alphabet)
    words: set[str] = set()
    while len(words) < 262144 - len(pieces):
        words.add("".join(rng.choice(alphabet) for _ in range(rng.randint(2, 9))))
    pieces += sorted(words)
    types = np.ones(len(pieces), np.int32)
    types[:4] = 3
    types[4:260] = 6
    spm_md = {"tokenizer.ggml.model": "llama", "tokenizer.ggml.pre": "default", "tokenizer.ggml.tokens": pieces,
              "tokenizer.ggml.scores": -np.arange(len(pieces), dtype=np.float32),
              "tokenizer.ggml.token_type": types, "tokenizer.ggml.bos_token_id": 2,
              "tokenizer.ggml.eos_token_id": 1}
    t3 = time.perf_counter()
    spm = Tokenizer.from_metadata(spm_md)
    t4 = time.perf_counter()
    spm_ids = spm.tokenize(text)
    t5 = time.perf_counter()
    assert spm.n_vocab == 262144 and spm_ids[0] == 2
    assert spm.detokenize(spm_ids[1:]) == text.replace("\u2581", " ")  # byte fallback keeps the rest
    with capsys.disabled():
        print(f"\n[tokenizer] qwen2 151936-token BPE build {t1 - t0:.3f}s, tokenize {len(text)} chars "
              f"-> {len(ids)} ids {1e3 * (t2 - t1):.1f} ms; 262144-token SPM build {t4 - t3:.3f}s, "
              f"tokenize {1e3 * (t5 - t4):.1f} ms")
    assert len(ids) > 100
