"""Constrained decoding (pyrt.runtime.constrain on llguidance): token bytes, masks against brute-force
references, validity of constrained outputs (jsonschema, regex, grammars), exactness, finish reasons and
bad input.

The random synthetic models make no structure of their own: the grammar alone decides it, so every
output checks the masks, the sampler order and the state updates end to end.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

llguidance = pytest.importorskip("llguidance")
jsonschema = pytest.importorskip("jsonschema")
import regex  # noqa: E402

import synthetic  # noqa: E402

import pyrt  # noqa: E402
from pyrt.errors import GrammarError, InvalidArgumentError  # noqa: E402
from pyrt.io.gguf_file import GGUFFile  # noqa: E402
from pyrt.runtime.constrain import engine_for, request_grammar  # noqa: E402
from pyrt.runtime.tokenizer import (ATTR_BYTE, ATTR_CONTROL, ATTR_NORMAL, ATTR_UNKNOWN, ATTR_USER_DEFINED,  # noqa: E402
                                    Tokenizer)  # noqa: E402

DATA = Path(__file__).parent / "data"
SCHEMAS = json.loads((DATA / "json_schemas" / "schemas.json").read_text())["schemas"]
VOCABS = ["llama-spm", "llama-bpe", "qwen2", "gpt-2"]

# sampler settings: every output must be valid under each of them
SAMPLERS = {
    "greedy": dict(temperature=0.0),
    "temp": dict(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, seed=1),
    "top_k": dict(temperature=0.9, top_k=5, top_p=1.0, min_p=0.0, seed=2),
    "top_p_min_p": dict(temperature=0.8, top_k=40, top_p=0.5, min_p=0.1, seed=3),
    "penalty": dict(temperature=0.7, top_k=40, top_p=0.95, min_p=0.05, repeat_penalty=1.5, seed=4),
}


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Synthetic llama (SPM vocabulary) and qwen2 (byte-level BPE) models, n_ctx 1024."""
    d = tmp_path_factory.mktemp("structured")
    out = {}
    for arch in ("llama", "qwen2"):
        p = d / f"{arch}.gguf"
        synthetic.write_model(p, arch, "Q8_0", n_ctx=1024)
        out[arch] = pyrt.load(p, n_ctx=1024, n_threads=1)
    return out


def _vocab_tokenizer(name: str) -> Tokenizer:
    return Tokenizer.from_metadata(dict(GGUFFile(DATA / "vocab" / f"ggml-vocab-{name}.gguf").metadata))


def _gpt2_unicode_to_byte() -> dict[str, int]:
    """GPT-2's byte-level alphabet inverted (tools/synthetic.py writes it out as the reference)."""
    return {c: b for b, c in synthetic.bytes_to_unicode()}


def _reference_bytes(tok: Tokenizer) -> list[bytes]:
    """Every token's bytes derived from the vocabulary text alone (the rules token_bytes documents)."""
    u2b = _gpt2_unicode_to_byte()
    out = []
    for t in range(tok.n_vocab):
        text, a = tok.token_text(t), tok.token_attr(t)
        special = b"\xff" + text.encode("utf-8", "surrogateescape")
        if a & (ATTR_CONTROL | ATTR_UNKNOWN):
            b = special
        elif a & ATTR_USER_DEFINED:
            b = text.encode("utf-8")
        elif a & ATTR_BYTE:
            b = bytes([int(text[3:5], 16)])
        elif a & ATTR_NORMAL:
            b = text.replace("\u2581", " ").encode("utf-8") if tok.is_spm else bytes(u2b[c] for c in text)
        else:
            b = special
        out.append(special if b[:1] == b"\xff" else b)
    return out


# ------------------------------------------------------------------------------------------ token bytes
@pytest.mark.parametrize("name", VOCABS)
def test_token_bytes_match_vocabulary_and_llama_cpp_pieces(name):
    tok = _vocab_tokenizer(name)
    tb = tok.token_bytes()
    assert len(tb) == tok.n_vocab
    assert tb == _reference_bytes(tok)
    g = json.loads((DATA / f"tokenizer_goldens_{name}.json").read_text(encoding="utf-8"))
    assert len(g["pieces"]) > 1000
    for tid, (plain, special) in g["pieces"].items():  # llama.cpp's llama_token_to_piece
        t = int(tid)
        b = tb[t]
        if b[:1] == b"\xff":
            assert bytes.fromhex(special) in (b[1:], b"\xff"), t
        else:
            assert b == bytes.fromhex(plain), t
    # a generated stream is the concatenation of the pieces (what the streaming decoder yields)
    rng = np.random.default_rng(0)
    text_ids = [t for t in range(tok.n_vocab) if tb[t][:1] != b"\xff"]
    ids = [int(t) for t in rng.choice(text_ids, 300)]
    assert b"".join(tb[t] for t in ids) == b"".join(tok.token_to_piece(t) for t in ids)
    # detokenize differs only by the leading space of add_space_prefix and clean_spaces
    if not tok.clean_spaces:
        lead = tok.add_space_prefix and tb[ids[0]][:1] == b" "
        assert tok.detokenize_bytes(ids) == b"".join(tb[t] for t in ids)[1 if lead else 0:]


@pytest.mark.slow
def test_token_bytes_default_model(gemma_path):
    tok = Tokenizer.from_metadata(dict(GGUFFile(gemma_path).metadata))
    tb = tok.token_bytes()
    assert tok.n_vocab == 262144 and tb == _reference_bytes(tok)
    eng = engine_for(tok)
    assert eng.eog_ids == sorted(tok.eog_ids) and tok.eos_id in eng.eog_ids


# ------------------------------------------------------------------------------------ masks vs brute force
def _walk(c, tb, rng, n_states, check):
    """Follows random allowed tokens from the start state, calling check(prefix_bytes) at each state."""
    prefix = b""
    for _ in range(n_states):
        check(prefix)
        if c.is_stopped():
            break
        ids = [t for t in np.flatnonzero(c.allowed()) if tb[t][:1] != b"\xff"]
        if not ids:
            break
        t = int(rng.choice(ids))
        c.accept(t)
        prefix += tb[t]


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
@pytest.mark.parametrize("pattern", [r"[0-9]{2,4}-[a-z]+", r"(the|then|there) [a-e]{1,3}!?",
                                     r"[A-Z][a-z]* (is|was) [0-9]+(\.[0-9]{1,2})?", r"(ab|cd)*e"])
def test_regex_mask_equals_brute_force(models, arch, pattern):
    llm = models[arch]
    tok = llm.tokenizer
    tb = tok.token_bytes()
    eog = sorted(tok.eog_ids)
    c = llm.constraint(regex=pattern)
    rng = np.random.default_rng(7)
    n_checked = [0, 0]

    def check(prefix):
        got = c.allowed().copy()
        ref = np.zeros(tok.n_vocab, dtype=bool)
        for t, b in enumerate(tb):
            if b[:1] == b"\xff" or not b or not b.isascii():
                continue  # the patterns are ASCII: no special token and no non-ASCII byte can match
            ref[t] = regex.fullmatch(pattern, (prefix + b).decode(), partial=True) is not None
        ref[eog] = regex.fullmatch(pattern, prefix.decode()) is not None
        if c.forced_bytes():
            # forced bytes: llguidance allows only the canonical token of the forced text
            assert got.any() and not (got & ~ref).any()
            n_checked[1] += 1
        else:
            np.testing.assert_array_equal(got, ref, err_msg=f"state {prefix!r}")
            n_checked[0] += 1

    for _ in range(3):
        c.reset()
        _walk(c, tb, rng, 12, check)
    assert n_checked[0] >= 4


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_enum_mask_equals_brute_force(models, arch):
    options = ["alpha", "alphabet", "beta", "gamma ray", "delta-9"]
    llm = models[arch]
    tb = llm.tokenizer.token_bytes()
    eog = sorted(llm.tokenizer.eog_ids)
    c = llm.constraint(json_schema={"enum": options})
    texts = [json.dumps(o).encode() for o in options]

    def check(prefix):
        got = c.allowed().copy()
        ref = np.array([b[:1] != b"\xff" and len(b) > 0 and any(x.startswith(prefix + b) for x in texts)
                        for b in tb])
        ref[eog] = prefix in texts
        if c.forced_bytes():
            assert got.any() and not (got & ~ref).any()
        else:
            np.testing.assert_array_equal(got, ref, err_msg=f"state {prefix!r}")

    for seed in range(4):
        c.reset()
        _walk(c, tb, np.random.default_rng(seed), 12, check)


def test_rollback_restores_the_mask(models):
    llm = models["qwen2"]
    c = llm.constraint(json_schema=SCHEMAS[[s["name"] for s in SCHEMAS].index("product")]["schema"])
    rng = np.random.default_rng(0)
    masks, toks = [], []
    for _ in range(10):
        masks.append(c.allowed().copy())
        t = int(rng.choice(np.flatnonzero(masks[-1])))
        c.accept(t)
        toks.append(t)
    c.rollback(4)
    np.testing.assert_array_equal(c.allowed(), masks[6])
    c.accept(toks[6])
    np.testing.assert_array_equal(c.allowed(), masks[7])
    with pytest.raises(InvalidArgumentError):
        c.rollback(100)


def test_mask_forms_agree_and_reject_disallowed_token(models):
    llm = models["llama"]
    c = llm.constraint(regex=r"[0-9]+")
    bits = c.fill_mask(np.zeros(c.engine.n_words, dtype=np.int32))
    bools = c.fill_mask(np.zeros(llm.n_vocab + 5, dtype=bool))
    np.testing.assert_array_equal(np.unpackbits(bits.view(np.uint8), bitorder="little")[:llm.n_vocab],
                                  bools[:llm.n_vocab])
    assert not bools[llm.n_vocab:].any()
    logits = np.zeros(llm.n_vocab, dtype=np.float32)
    c.mask_logits(logits)
    assert np.array_equal(np.isfinite(logits), bools[:llm.n_vocab])
    bad = int(np.flatnonzero(~bools[:llm.n_vocab])[5])
    with pytest.raises(GrammarError, match="not allowed"):
        c.accept(bad)


# ------------------------------------------------------------------------------------------- validity
def _bounded(schema):
    """The schema with unbounded strings, arrays and objects bounded, for a random model (which would
    otherwise rarely close them); an output valid here is valid under the original, which is stricter
    nowhere."""
    if isinstance(schema, list):
        return [_bounded(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    s = {k: (_bounded(v) if k not in ("enum", "const", "properties", "$defs", "required") else v)
         for k, v in schema.items()}
    if isinstance(s.get("properties"), dict):
        s["properties"] = {k: _bounded(v) for k, v in s["properties"].items()}
    if isinstance(s.get("$defs"), dict):
        s["$defs"] = {k: _bounded(v) for k, v in s["$defs"].items()}
    types = s.get("type", [])
    types = types if isinstance(types, list) else [types]
    if not s:
        return {"type": "integer", "minimum": 0, "maximum": 99}  # any value: one a random model finishes
    free = not any(k in s for k in ("enum", "const", "pattern", "format", "$ref", "anyOf", "oneOf", "allOf"))
    if "string" in types and (free or "pattern" in s or s.get("format") in ("email", "hostname")):
        s.setdefault("maxLength", 6 if free else 24)
    if "number" in types or "integer" in types:  # digits: integers within bounds
        s["type"] = ["integer" if t == "number" else t for t in types] if isinstance(s["type"], list) else "integer"
        s.setdefault("minimum", -999)
        s.setdefault("maximum", 999)
    if "array" in types:
        s.setdefault("maxItems", 3)
        s.setdefault("items", {"type": "integer"})
    if "object" in types:
        extra = s.get("additionalProperties", True)
        if "properties" not in s:  # free keys: two short named ones of the allowed value type
            value = extra if isinstance(extra, dict) else {"type": "integer"}
            s["properties"] = {"k1": value, "k2": value}
            s.pop("maxProperties", None)
        s["additionalProperties"] = False
    return s


FORMATS = jsonschema.FormatChecker()


@FORMATS.checks("date-time")
def _rfc3339_date_time(value) -> bool:
    # RFC 3339 allows second 60 (leap seconds); datetime.fromisoformat, jsonschema's default, does not
    m = regex.fullmatch(r"(\d{4}-\d{2}-\d{2})[Tt](\d{2}):(\d{2}):(\d{2})(\.\d+)?([Zz]|[+-]\d{2}:\d{2})", value)
    return bool(m) and FORMATS.conforms(m[1], "date") and int(m[2]) < 24 and int(m[3]) < 60 and int(m[4]) <= 60


def _check_json(out: str, schema: dict, finish: str, name: str):
    assert finish == "stop", f"{name}: {finish} before the output completed: {out!r}"
    value = json.loads(out)
    jsonschema.validate(value, schema, format_checker=FORMATS)


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
@pytest.mark.parametrize("sampler", ["greedy", "temp"])
def test_all_schemas_valid_synthetic(models, arch, sampler):
    llm = models[arch]
    n_stop = 0
    for s in SCHEMAS:
        bounded = _bounded(s["schema"])
        out = "".join(llm.generate("data:", max_tokens=1000, json_schema=bounded, **SAMPLERS[sampler]))
        _check_json(out, bounded, llm.last_finish_reason, s["name"])
        jsonschema.validate(json.loads(out), s["schema"], format_checker=FORMATS)
        n_stop += 1
    assert n_stop == len(SCHEMAS) >= 50


@pytest.mark.parametrize("sampler", list(SAMPLERS))
def test_every_sampler_setting_respects_the_schema(models, sampler):
    llm = models["qwen2"]
    for name in ("object_enum_field", "array_min_max", "oneof_tagged", "invoice"):
        schema = _bounded(SCHEMAS[[s["name"] for s in SCHEMAS].index(name)]["schema"])
        out = "".join(llm.chat([{"role": "user", "content": "go"}], chat_template="chatml", max_tokens=900,
                               json_schema=schema, **SAMPLERS[sampler]))
        _check_json(out, schema, llm.last_finish_reason, name)


REGEXES = [r"[0-9]{3}-[0-9]{4}", r"(yes|no)", r"[a-z]{2,6}@[a-z]{2,5}\.(com|org)",
           r"-?(0|[1-9][0-9]{0,5})(\.[0-9]{1,3})?", r"#[0-9a-f]{6}", r"\((x|y)(,(x|y)){0,4}\)"]


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_regex_outputs_match(models, arch):
    llm = models[arch]
    for pattern in REGEXES:
        for sampler in ("greedy", "temp", "top_p_min_p"):
            out = "".join(llm.generate("x", max_tokens=100, regex=pattern, **SAMPLERS[sampler]))
            assert llm.last_finish_reason == "stop" and regex.fullmatch(pattern, out), (pattern, out)


GBNF_LIST = r'''root ::= "[" item ("," item){0,5} "]"
item ::= [0-9] | "\"" [a-c]{1,3} "\""'''
LARK_EXPR = r'''start: expr
expr: term (("+" | "-") term)*
term: factor (("*" | "/") factor)*
factor: NUMBER | "(" expr ")"
NUMBER: /[1-9][0-9]?/'''
GBNF_EXPR = r'''root ::= expr
expr ::= term (("+" | "-") term)*
term ::= factor (("*" | "/") factor)*
factor ::= [1-9] [0-9]? | "(" expr ")"'''


def _is_arithmetic(text: str) -> bool:
    try:
        tree = ast.parse(text, mode="eval")
    except SyntaxError:
        return False
    ok = (ast.Expression, ast.BinOp, ast.Add, ast.Sub, ast.Mult, ast.Div, ast.Constant)
    return " " not in text and all(isinstance(n, ok) for n in ast.walk(tree))


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_grammar_outputs_parse(models, arch):
    llm = models[arch]
    for sampler in ("greedy", "temp", "top_k"):
        out = "".join(llm.generate("x", max_tokens=200, grammar=GBNF_LIST, **SAMPLERS[sampler]))
        assert llm.last_finish_reason == "stop"
        assert regex.fullmatch(r'\[([0-9]|"[a-c]{1,3}")(,([0-9]|"[a-c]{1,3}")){0,5}\]', out), out
        for g in (LARK_EXPR, GBNF_EXPR):
            out = "".join(llm.generate("x", max_tokens=300, grammar=g, **SAMPLERS[sampler]))
            if llm.last_finish_reason == "stop":
                assert _is_arithmetic(out), out
            else:  # a random model may nest past the limit: then it says so
                assert llm.last_finish_reason == "length"


# ------------------------------------------------------------------------------------------- exactness
@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_single_string_schema_is_exact(models, arch):
    llm = models[arch]
    text = "The quick brown fox jumps over 13 lazy dogs; ünïcödé ✓ \"quoted\" \\ back"
    for sampler in ("greedy", "temp"):
        out = "".join(llm.generate("x", max_tokens=200, json_schema={"const": text}, **SAMPLERS[sampler]))
        assert out == json.dumps(text, ensure_ascii=False) and llm.last_finish_reason == "stop"
        out = "".join(llm.generate("x", max_tokens=200, json_schema={"enum": [text]}, **SAMPLERS[sampler]))
        assert out == json.dumps(text, ensure_ascii=False)
        out = "".join(llm.generate("x", max_tokens=200, regex=regex.escape(text), **SAMPLERS[sampler]))
        assert out == text and llm.last_finish_reason == "stop"


def test_length_is_reported_before_the_grammar_completes(models):
    llm = models["llama"]
    out = "".join(llm.generate("x", max_tokens=3, json_schema={"const": "a long constant string here"},
                               temperature=0.0))
    assert llm.last_finish_reason == "length"
    full = json.dumps("a long constant string here")
    assert full.startswith(out) and out != full
    # ignore_eos: the grammar may go on ([a-z]+), so only the token limit ends it
    ids = list(llm.generate_ids(llm.tokenize("x"), max_tokens=20, regex="[a-z]+", temperature=0.0, ignore_eos=True))
    assert len(ids) == 20 and llm.last_finish_reason == "length"
    assert regex.fullmatch("[a-z]+", llm.detokenize(ids))


# ------------------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("kw, engine_text", [
    (dict(json_schema="{not json"), "not JSON"),
    (dict(json_schema={"type": "objectx"}), "Invalid type: objectx"),
    (dict(json_schema={"type": "string", "pattern": "(unclosed"}), "unclosed group"),
    (dict(json_schema='["a list"]'), "a schema is an object or a boolean"),
    (dict(regex="a(b"), "unclosed group"),
    (dict(grammar="start: foo"), 'unknown name: "foo"'),
    (dict(grammar='root ::= "a" bar'), "bar"),
    (dict(grammar='root ::= "a'), "gbnf"),
])
def test_bad_grammar_raises_with_the_engine_message(models, kw, engine_text):
    llm = models["llama"]
    list(llm.generate("the world", max_tokens=2, temperature=0.0))
    before = list(llm._tokens)
    with pytest.raises(GrammarError, match=engine_text.replace("(", r"\(")) as e:
        list(llm.generate("other prompt", max_tokens=4, **kw))
    assert "\n" not in str(e.value)
    assert isinstance(e.value, InvalidArgumentError) and llm._tokens == before  # nothing evaluated


def test_request_grammar_rules():
    assert request_grammar() is None
    assert request_grammar(regex="a+") == ("regex", "a+")
    assert request_grammar(json_schema={"type": "integer"}) == ("json_schema", '{"type": "integer"}')
    assert request_grammar(response_format={"type": "text"}) is None
    assert request_grammar(response_format={"type": "json_object"}) == ("json_schema", '{"type": "object"}')
    rf = {"type": "json_schema", "json_schema": {"name": "x", "strict": True, "schema": {"type": "boolean"}}}
    assert request_grammar(response_format=rf) == ("json_schema", '{"type": "boolean"}')
    with pytest.raises(InvalidArgumentError, match="mutually exclusive"):
        request_grammar(regex="a", grammar="root ::= \"a\"")
    with pytest.raises(InvalidArgumentError):
        request_grammar(response_format={"type": "xml"})


def test_cli_json_schema(models, tmp_path):
    path = models["qwen2"].file.path
    schema = tmp_path / "s.json"
    schema.write_text(json.dumps(_bounded(SCHEMAS[[s["name"] for s in SCHEMAS].index("product")]["schema"])))
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).parent.parent))
    cmd = [sys.executable, "-m", "pyrt.cli", "generate", "-m", str(path), "-p", "x", "-n", "400", "-t", "1",
           "--no-display-prompt", "--temp", "0.7", "-s", "5", "-jf", str(schema)]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr
    jsonschema.validate(json.loads(r.stdout), json.loads(schema.read_text()))
    r = subprocess.run(cmd[:-2] + ["--regex", "a(b"], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 1 and r.stderr.startswith("error: invalid regex") and r.stdout == ""


# ------------------------------------------------------------------------------------------ real model
REAL_SUBSET = ["enum_strings", "integer_bounds", "object_person", "object_optional", "array_min_max",
               "nested_object", "anyof_objects", "ref_defs", "format_date", "product", "tool_call", "invoice"]


@pytest.mark.slow
def test_schemas_valid_default_model(gemma_path):
    """Every output completes within max_tokens and validates (an incomplete one would say "length":
    listed in the failure)."""
    llm = pyrt.load(gemma_path, n_ctx=1024, n_threads=2)
    incomplete = []
    for name in REAL_SUBSET:
        schema = SCHEMAS[[s["name"] for s in SCHEMAS].index(name)]["schema"]
        msgs = [{"role": "user", "content": f"Reply with one JSON value under this JSON Schema: {json.dumps(schema)}"}]
        for sampler in ("greedy", "top_p_min_p"):
            pieces = []
            for piece in llm.chat(msgs, chat_template="gemma", max_tokens=320, json_schema=schema,
                                  **SAMPLERS[sampler]):
                pieces.append(piece)
            out = "".join(pieces)
            if llm.last_finish_reason == "length":
                incomplete.append((name, sampler, out[-60:]))
                continue
            _check_json(out, schema, llm.last_finish_reason, name)
    assert not incomplete, incomplete


# ------------------------------------------------------------------------------------------- tool calls
def test_required_and_named_tool_calls_parse_and_validate(models):
    from pyrt.runtime.tools import parse_tool_calls, tool_call_schema
    by_name = {s["name"]: s["schema"] for s in SCHEMAS}
    tools = [{"type": "function", "function": {"name": n, "parameters": _bounded(by_name[sn])}}
             for n, sn in (("make_product", "product"), ("add_person", "object_person"), ("draw", "ref_defs"))]
    params = {t["function"]["name"]: t["function"]["parameters"] for t in tools}
    llm = models["qwen2"]
    msgs = [{"role": "user", "content": "call a tool"}]
    seen = set()
    for choice, parallel in (("required", False), ("required", True),
                             ({"type": "function", "function": {"name": "draw"}}, False)):
        for sampler in ("greedy", "temp", "top_k"):
            schema = tool_call_schema(tools, choice, parallel_tool_calls=parallel)
            if parallel:
                schema["maxItems"] = 3  # bounded for a random model, as _bounded does
            schema["x-guidance"] = {"whitespace_flexible": False, "whitespace_pattern": None}  # compact JSON
            out = "".join(llm.chat(msgs, chat_template="chatml", max_tokens=900, json_schema=schema,
                                   **SAMPLERS[sampler]))
            assert llm.last_finish_reason == "stop", (choice, parallel, sampler, out)
            assert "\n" not in out and "\t" not in out  # the schema's x-guidance overrides JSON_DEFAULTS
            calls = parse_tool_calls(out, tools)
            assert calls and (parallel or len(calls) == 1)
            for c in calls:
                name = c["function"]["name"]
                assert isinstance(choice, str) or name == "draw"
                jsonschema.validate(json.loads(c["function"]["arguments"]), params[name], format_checker=FORMATS)
                seen.add(name)
    assert len(seen) >= 2


def test_unbounded_numbers_get_llama_cpp_digit_limit(models):
    from pyrt.runtime.constrain import NUMBER_LIMIT, NUMBER_STEP, bound_numbers
    s = {"type": "object", "properties": {"n": {"type": "number"}, "i": {"type": ["integer", "null"], "minimum": 3},
                                          "big": {"type": "integer", "minimum": 10 ** 20},
                                          "c": {"const": {"type": "number"}}}}
    b = bound_numbers(s)
    assert b["properties"]["n"] == {"type": "number", "minimum": -NUMBER_LIMIT, "maximum": NUMBER_LIMIT,
                                    "multipleOf": NUMBER_STEP}
    assert b["properties"]["i"] == {"type": ["integer", "null"], "minimum": 3, "maximum": NUMBER_LIMIT}
    assert b["properties"]["big"] == {"type": "integer", "minimum": 10 ** 20}  # never made unsatisfiable
    assert b["properties"]["c"] == {"const": {"type": "number"}}  # a value, not a schema
    llm = models["llama"]
    tb = llm.tokenizer.token_bytes()
    one, zero = tb.index(b"1"), tb.index(b"0")
    c = llm.constraint(json_schema={"type": "integer"})
    c.accept(one)
    n = 1
    while c.allowed()[zero]:  # "1000...": at most 15 digits, then only the end
        c.accept(zero)
        n += 1
    assert n == 15 and c.is_accepting() and not c.allowed()[one]
    c = llm.constraint(json_schema={"type": "number"})  # "0.000...": at most 10 fraction digits
    for t in (zero, tb.index(b".")):
        c.accept(t)
    n = 0
    while c.allowed()[zero]:
        c.accept(zero)
        n += 1
    assert n == 10 and c.is_accepting() and not c.allowed()[one]
