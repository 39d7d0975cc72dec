"""Write llama.cpp tokenizer goldens for tests/test_tokenizer.py.

Loads each vocab file in tests/data/vocab with llama-cpp-python (vocab_only) and records, for every
string of tests/data/tokenizer_corpus.json, llama_tokenize with (add_special, parse_special) in
{(True, False), (False, True)}, llama_detokenize of both, a sample of llama_token_to_piece and the
vocab's special ids. Variants (a vocab file with some metadata overridden, to reach other
pre-tokenizers and flags) are written to a temporary GGUF and recorded on every second corpus string.
Usage: python tools/make_tokenizer_goldens.py [name ...]   (names from VOCABS or VARIANTS)
"""

from __future__ import annotations

import ctypes
import json
import random
import sys
import tempfile
from pathlib import Path

import gguf
import llama_cpp

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tests" / "data"
VOCABS = ["llama-spm", "llama-bpe", "qwen2", "gpt-2"]
# name -> (base vocab, metadata overrides); tests apply the same overrides to the base metadata
VARIANTS = {
    "gpt-2-default": ("gpt-2", {"tokenizer.ggml.pre": "default"}),
    "gpt-2-starcoder": ("gpt-2", {"tokenizer.ggml.pre": "starcoder"}),
    "gpt-2-smollm": ("gpt-2", {"tokenizer.ggml.pre": "smollm", "tokenizer.ggml.add_eos_token": True}),
    "llama-bpe-dbrx": ("llama-bpe", {"tokenizer.ggml.pre": "dbrx"}),
    "qwen2-qwen35": ("qwen2", {"tokenizer.ggml.pre": "qwen35"}),
    "qwen2-stablelm2": ("qwen2", {"tokenizer.ggml.pre": "stablelm2", "tokenizer.ggml.add_bos_token": True}),
    "llama-spm-noprefix": ("llama-spm", {"tokenizer.ggml.add_space_prefix": False,
                                         "tokenizer.ggml.add_eos_token": True}),
}


def _write_variant(base: str, overrides: dict, out: Path) -> None:
    """Copy the base vocab file's metadata with `overrides` applied (new keys are added)."""
    reader = gguf.GGUFReader(DATA / "vocab" / f"ggml-vocab-{base}.gguf")
    arch = reader.fields["general.architecture"].contents()
    w = gguf.GGUFWriter(str(out), arch)
    todo = dict(overrides)
    for key, field in reader.fields.items():
        if key.startswith("GGUF.") or key == "general.architecture":
            continue
        vtype = field.types[0]
        sub = field.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None
        val = todo.pop(key) if key in todo else field.contents()
        w.add_key_value(key, val, vtype, sub)
    for key, val in todo.items():
        vtype = {bool: gguf.GGUFValueType.BOOL, str: gguf.GGUFValueType.STRING,
                 int: gguf.GGUFValueType.UINT32}[type(val)]
        w.add_key_value(key, val, vtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def _tokenize(vocab, text: bytes, add_special: bool, parse_special: bool) -> list[int]:
    n_max = len(text) + 16
    buf = (llama_cpp.llama_token * n_max)()
    n = llama_cpp.llama_tokenize(vocab, text, len(text), buf, n_max, add_special, parse_special)
    if n < 0:
        raise RuntimeError(f"llama_tokenize failed for {text!r}: {n}")
    return list(buf[:n])


def _detokenize(vocab, ids: list[int], unparse_special: bool) -> bytes:
    arr = (llama_cpp.llama_token * max(1, len(ids)))(*ids)
    cap = 64 + 64 * len(ids)
    out = ctypes.create_string_buffer(cap)
    n = llama_cpp.llama_detokenize(vocab, arr, len(ids), out, cap, False, unparse_special)
    if n < 0:
        raise RuntimeError(f"llama_detokenize failed: {n}")
    return out.raw[:n]


def _piece(vocab, token: int, special: bool) -> bytes:
    buf = ctypes.create_string_buffer(256)
    n = llama_cpp.llama_token_to_piece(vocab, token, buf, 256, 0, special)
    if n < 0:
        buf = ctypes.create_string_buffer(-n)
        n = llama_cpp.llama_token_to_piece(vocab, token, buf, -n, 0, special)
    return buf.raw[:n]


def _opt(x: int) -> int | None:
    return None if x < 0 else int(x)


def make(name: str, corpus: list[str], path: Path | None = None, pieces: bool = True) -> dict:
    path = path or DATA / "vocab" / f"ggml-vocab-{name}.gguf"
    llm = llama_cpp.Llama(model_path=str(path), vocab_only=True, verbose=False)
    vocab = llama_cpp.llama_model_get_vocab(llm.model)
    n_vocab = llama_cpp.llama_vocab_n_tokens(vocab)
    cases = []
    seen_ids: set[int] = set()
    for text in corpus:
        raw = text.encode("utf-8")
        ids_plain = _tokenize(vocab, raw, True, False)
        ids_parse = _tokenize(vocab, raw, False, True)
        # cross-check against the high-level API the brief names
        assert ids_plain == llm.tokenize(raw, add_bos=True, special=False)
        assert ids_parse == llm.tokenize(raw, add_bos=False, special=True)
        seen_ids.update(ids_plain)
        seen_ids.update(ids_parse)
        cases.append({
            "text": text,
            "ids": ids_plain,
            "ids_special": ids_parse,
            "detok": _detokenize(vocab, ids_plain, False).hex(),
            "detok_special": _detokenize(vocab, ids_parse, True).hex(),
        })
    if not pieces:
        return _summary(name, vocab, n_vocab, cases, {})
    rng = random.Random(0)
    sample = set(rng.sample(range(n_vocab), 800)) | set(range(min(300, n_vocab)))
    sample |= set(range(max(0, n_vocab - 300), n_vocab)) | seen_ids
    attr_special = {i for i in range(n_vocab) if llama_cpp.llama_vocab_get_attr(vocab, i) & (1 | 8 | 16)}
    sample |= attr_special
    table = {str(i): [_piece(vocab, i, False).hex(), _piece(vocab, i, True).hex()] for i in sorted(sample)}
    return _summary(name, vocab, n_vocab, cases, table)


def _summary(name, vocab, n_vocab, cases, pieces) -> dict:
    return {
        "vocab": name,
        "oracle": f"llama-cpp-python {llama_cpp.__version__}",
        "n_vocab": n_vocab,
        "bos": _opt(llama_cpp.llama_vocab_bos(vocab)),
        "eos": _opt(llama_cpp.llama_vocab_eos(vocab)),
        "eot": _opt(llama_cpp.llama_vocab_eot(vocab)),
        "add_bos": bool(llama_cpp.llama_vocab_get_add_bos(vocab)),
        "add_eos": bool(llama_cpp.llama_vocab_get_add_eos(vocab)),
        "eog": [i for i in range(n_vocab) if llama_cpp.llama_vocab_is_eog(vocab, i)],
        "cases": cases,
        "pieces": pieces,
    }


def main(argv: list[str]) -> None:
    corpus = json.loads((DATA / "tokenizer_corpus.json").read_text(encoding="utf-8"))
    for name in argv or VOCABS + list(VARIANTS):
        if name in VARIANTS:
            base, overrides = VARIANTS[name]
            with tempfile.TemporaryDirectory() as tmp:
                path = Path(tmp) / "variant.gguf"
                _write_variant(base, overrides, path)
                g = make(name, corpus[::2], path, pieces=False)
            g["base"], g["overrides"] = base, overrides
        else:
            g = make(name, corpus)
        out = DATA / f"tokenizer_goldens_{name}.json"
        out.write_text(json.dumps(g, ensure_ascii=True, separators=(",", ":")) + "\n", encoding="utf-8")
        print(f"{out.relative_to(ROOT)}: {len(g['cases'])} cases, {len(g['pieces'])} pieces, eog={g['eog']}")


if __name__ == "__main__":
    main(sys.argv[1:])
