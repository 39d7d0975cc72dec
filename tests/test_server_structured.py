"""Structured output through `pyrt serve` (a real process on 127.0.0.1, as tests/test_server.py): OpenAI
`response_format`, llama-server's `grammar` / `json_schema`, `tools` + `tool_choice`, streaming and not,
bad schemas as 400s, and constrained requests beside unconstrained ones. A synthetic model (random
weights): the grammar alone decides the structure, so every output must validate."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")
pytest.importorskip("llguidance")
jsonschema = pytest.importorskip("jsonschema")
openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")

import synthetic  # noqa: E402
from test_server import Server, _run_concurrently  # noqa: E402
from test_structured import FORMATS, SCHEMAS, _bounded  # noqa: E402

GREEDY = dict(temperature=0.0, max_tokens=200)
SAMPLED = dict(temperature=1.0, top_p=1.0, max_tokens=200, seed=7, extra_body={"top_k": 0, "min_p": 0.0})

# ChatML that renders `tools` (as HF templates do: the OpenAI list as JSON in the system turn)
TEMPLATE = ("{% if tools %}<|im_start|>system\nTools: {{ tools | tojson }}<|im_end|>\n{% endif %}"
            "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
            "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")

NAMES = ["object_person", "array_min_max", "anyof_objects", "string_pattern_id", "nested_object", "enum_mixed"]
WEATHER = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 8},
                                            "unit": {"enum": ["c", "f"]}},
           "required": ["city", "unit"], "additionalProperties": False}
ADD = {"type": "object", "properties": {"a": {"type": "integer", "minimum": 0, "maximum": 99},
                                        "b": {"type": "integer", "minimum": 0, "maximum": 99}},
       "required": ["a", "b"], "additionalProperties": False}
TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "weather", "parameters": WEATHER}},
         {"type": "function", "function": {"name": "add", "parameters": ADD}}]
MSGS = [{"role": "user", "content": "hello there"}]


def _schema(name):
    return _bounded(next(s["schema"] for s in SCHEMAS if s["name"] == name))


def _valid(text, schema, finish):
    assert finish == "stop", (finish, text)
    jsonschema.validate(json.loads(text), schema, format_checker=FORMATS)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    d = tmp_path_factory.mktemp("server_structured")
    model = str(d / "llama.gguf")
    synthetic.write_model(model, "llama", "Q8_0")
    tmpl = d / "tools.jinja"
    tmpl.write_text(TEMPLATE)
    s = Server(model, "-c", "4096", "-np", "4", "--chat-template", str(tmpl))
    yield s
    s.stop()


def _chat_stream(c, **kw):
    """(content, tool_calls deltas, finish_reason) of a streamed chat completion."""
    content, calls, fr = "", [], None
    for ch in c.chat.completions.create(model="m", messages=kw.pop("messages", MSGS), stream=True, **kw):
        if not ch.choices:
            continue
        d = ch.choices[0].delta
        content += d.content or ""
        calls += d.tool_calls or []
        fr = ch.choices[0].finish_reason or fr
    return content, calls, fr


@pytest.mark.parametrize("sampler", ["greedy", "sampled"])
def test_response_format_json_schema_validates(server, sampler):
    c = server.client()
    kw = GREEDY if sampler == "greedy" else SAMPLED
    for name in NAMES:
        schema = _schema(name)
        rf = {"type": "json_schema", "json_schema": {"name": name, "schema": schema, "strict": True}}
        r = c.chat.completions.create(model="m", messages=MSGS, response_format=rf, **kw)
        _valid(r.choices[0].message.content, schema, r.choices[0].finish_reason)
        text, _, fr = _chat_stream(c, response_format=rf, **kw)
        _valid(text, schema, fr)
        if sampler == "greedy":
            assert text == r.choices[0].message.content
        # /v1/completions takes response_format too
        r = c.completions.create(model="m", prompt="x y", extra_body={"response_format": rf}, **{
            k: v for k, v in kw.items() if k != "extra_body"})
        _valid(r.choices[0].text, schema, r.choices[0].finish_reason)


def test_json_object_parses_and_text_is_unconstrained(server):
    c = server.client()
    for kw in (GREEDY, SAMPLED):
        r = c.chat.completions.create(model="m", messages=MSGS, response_format={"type": "json_object"}, **kw)
        assert r.choices[0].finish_reason == "stop"
        assert isinstance(json.loads(r.choices[0].message.content), dict)
    plain = c.chat.completions.create(model="m", messages=MSGS, **GREEDY).choices[0].message.content
    text = c.chat.completions.create(model="m", messages=MSGS, response_format={"type": "text"},
                                     **GREEDY).choices[0].message.content
    assert text == plain


def test_llama_completion_grammar_and_json_schema(server):
    gbnf = 'root ::= "yes" | "no" | num\nnum ::= [1-9] [0-9]{0,3}'
    schema = _schema("object_person")
    for extra in ({"temperature": 0.0}, {"temperature": 1.0, "top_k": 0, "seed": 3}):
        for stream in (False, True):
            body = {"prompt": "q", "n_predict": 200, "grammar": gbnf, "stream": stream, **extra}
            out = _llama(server, body)
            assert out["stop_type"] == "eos", out
            assert out["content"] in ("yes", "no") or (out["content"].isdigit() and len(out["content"]) <= 4)
            body = {"prompt": "q", "n_predict": 200, "json_schema": schema, "stream": stream, **extra}
            out = _llama(server, body)
            _valid(out["content"], schema, "stop" if out["stop_type"] == "eos" else out["stop_type"])
    # llama-server's fields as extra body on /v1/*
    r = server.client().chat.completions.create(model="m", messages=MSGS, extra_body={"grammar": gbnf}, **GREEDY)
    assert r.choices[0].message.content in ("yes", "no") or r.choices[0].message.content.isdigit()


def _llama(server, body) -> dict:
    if not body.get("stream"):
        r = server.post("/completion", body)
        assert r.status_code == 200, r.text
        return r.json()
    content, last = "", None
    with httpx.stream("POST", server.url + "/completion", json=body, headers=server.headers, timeout=60) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            if line.startswith("data: "):
                last = json.loads(line[6:])
                content += last["content"]
    last["content"] = content
    return last


def test_length_before_the_grammar_completes(server):
    rf = {"type": "json_schema", "json_schema": {"name": "p", "schema": _schema("object_person")}}
    r = server.client().chat.completions.create(model="m", messages=MSGS, response_format=rf,
                                                temperature=0.0, max_tokens=3)
    assert r.choices[0].finish_reason == "length"
    assert r.usage.completion_tokens == 3


def _check_calls(calls):
    assert len(calls) == 1
    call = calls[0]
    assert call.type == "function" and call.id
    schema = {"get_weather": WEATHER, "add": ADD}[call.function.name]
    jsonschema.validate(json.loads(call.function.arguments), schema)
    return call.function.name


@pytest.mark.parametrize("kw", [GREEDY, SAMPLED], ids=["greedy", "sampled"])
def test_tool_choice_required_and_named(server, kw):
    c = server.client()
    kw = {**kw, "max_tokens": 600}  # the random model spends many tokens on the allowed whitespace
    for choice, want in (("required", None), ({"type": "function", "function": {"name": "add"}}, "add"),
                         ({"type": "function", "function": {"name": "get_weather"}}, "get_weather")):
        r = c.chat.completions.create(model="m", messages=MSGS, tools=TOOLS, tool_choice=choice, **kw)
        ch = r.choices[0]
        assert ch.finish_reason == "tool_calls" and ch.message.content is None
        name = _check_calls(ch.message.tool_calls)
        assert want in (None, name)
        content, calls, fr = _chat_stream(c, tools=TOOLS, tool_choice=choice, **kw)
        assert fr == "tool_calls" and content == ""
        assert calls[0].index == 0
        assert _check_calls(calls) == name
        if kw is GREEDY:
            assert calls[0].function.arguments == ch.message.tool_calls[0].function.arguments


def test_tools_reach_the_template(server):
    c = server.client()
    with_tools = c.chat.completions.create(model="m", messages=MSGS, tools=TOOLS, max_tokens=1, temperature=0.0)
    without = c.chat.completions.create(model="m", messages=MSGS, max_tokens=1, temperature=0.0)
    n_tools = len(server.post("/tokenize", {"content": "Tools: " + json.dumps(TOOLS)}).json()["tokens"])
    assert with_tools.usage.prompt_tokens >= without.usage.prompt_tokens + n_tools // 2


def test_tool_choice_auto_parses_a_call_or_returns_text(server):
    """"auto" generates freely and reads the reply as a call when it is one: forced here with a
    response_format of the call's shape, then free text (a random model does not write a call)."""
    c = server.client()
    from pyrt.runtime.tools import tool_call_schema
    rf = {"type": "json_schema", "json_schema": {"name": "call", "schema": tool_call_schema(TOOLS, "required")}}
    long = {**GREEDY, "max_tokens": 600}
    r = c.chat.completions.create(model="m", messages=MSGS, tools=TOOLS, tool_choice="auto", response_format=rf,
                                  **long)
    assert r.choices[0].finish_reason == "tool_calls"
    _check_calls(r.choices[0].message.tool_calls)
    content, calls, fr = _chat_stream(c, tools=TOOLS, response_format=rf, **long)
    assert fr == "tool_calls" and content == ""
    _check_calls(calls)
    r = c.chat.completions.create(model="m", messages=MSGS, tools=TOOLS, **GREEDY)
    text = r.choices[0].message.content
    assert r.choices[0].finish_reason in ("stop", "length") and not r.choices[0].message.tool_calls
    content, calls, fr = _chat_stream(c, tools=TOOLS, **GREEDY)
    assert content == text and not calls


@pytest.mark.parametrize("body", [
    {"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {
        "type": "object", "properties": {"a": {"$ref": "#/$defs/missing"}}}}}},
    {"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "nosuchtype"}}}},
    {"grammar": "root ::= foo"},
    {"grammar": "root ::= \"a"},
    {"response_format": {"type": "xml"}},
    {"response_format": {"type": "json_object"}, "json_schema": {"type": "object"}},
    {"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "nope"}}},
    {"tools": TOOLS, "tool_choice": "sometimes"},
    {"tools": [{"type": "function", "function": {"name": "bad name!"}}], "tool_choice": "required"},
    {"tool_choice": "required"},
])
def test_bad_constraints_are_400_and_the_server_keeps_serving(server, body):
    r = server.post("/v1/chat/completions", {"messages": MSGS, "max_tokens": 4, **body})
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["type"] == "invalid_request_error" and err["message"]
    if "grammar" in body or "schema" in json.dumps(body.get("response_format", {})):
        assert err["message"].startswith("invalid ") or "mutually exclusive" in err["message"], err
    r = server.post("/completion", {"prompt": "a", "n_predict": 2, "grammar": body.get("grammar", "root ::= foo")})
    assert r.status_code == 400
    r = server.post("/v1/chat/completions", {"messages": MSGS, "max_tokens": 2})
    assert r.status_code == 200


def test_constrained_beside_unconstrained_leaves_it_unchanged(server):
    c = server.client()
    prompts = ["one two three", "four five six seven", "eight"]

    def plain(p):
        return c.completions.create(model="m", prompt=p, temperature=0.0, max_tokens=48).choices[0].text

    alone = [plain(p) for p in prompts]
    schema = _schema("nested_object")
    rf = {"type": "json_schema", "json_schema": {"name": "n", "schema": schema}}

    def run(job):
        kind, p = job
        if kind == "plain":
            return plain(p)
        r = c.chat.completions.create(model="m", messages=[{"role": "user", "content": p}], response_format=rf,
                                      **GREEDY)
        _valid(r.choices[0].message.content, schema, r.choices[0].finish_reason)
        return None

    jobs = [("plain", prompts[0]), ("json", "a"), ("plain", prompts[1]), ("json", "b c"), ("plain", prompts[2])]
    out = _run_concurrently(run, jobs)
    assert [o for o in out if o is not None] == alone


@pytest.mark.slow
def test_gemma_server_structured(gemma_path):
    """Gemma 3 (262k vocabulary, its own chat template): a JSON-schema reply and a named tool call validate,
    and an unconstrained request beside them gives its text alone."""
    s = Server(gemma_path, "-c", "2048", "-np", "3", key=None)
    try:
        c = s.client()
        schema = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 20},
                                                   "age": {"type": "integer", "minimum": 0, "maximum": 120}},
                  "required": ["name", "age"], "additionalProperties": False}
        rf = {"type": "json_schema", "json_schema": {"name": "person", "schema": schema, "strict": True}}
        msgs = [{"role": "user", "content": "Invent a person. Reply in JSON."}]

        def plain(_=None):
            return c.chat.completions.create(model="m", messages=[{"role": "user", "content": "Say hello."}],
                                             temperature=0.0, max_tokens=24).choices[0].message.content

        def person(_=None):
            r = c.chat.completions.create(model="m", messages=msgs, response_format=rf, temperature=0.0,
                                          max_tokens=64)
            _valid(r.choices[0].message.content, schema, r.choices[0].finish_reason)

        def weather(_=None):
            r = c.chat.completions.create(model="m", messages=[{"role": "user", "content": "Weather in Oslo?"}],
                                          tools=TOOLS, tool_choice={"type": "function",
                                                                    "function": {"name": "get_weather"}},
                                          temperature=0.0, max_tokens=64)
            assert r.choices[0].finish_reason == "tool_calls"
            assert _check_calls(r.choices[0].message.tool_calls) == "get_weather"

        alone = plain()
        out = _run_concurrently(lambda f: f(), [person, plain, weather])
        assert out[1] == alone
    finally:
        s.stop()


def test_logprobs_under_a_grammar(server):
    """Log-probabilities are those of the constrained distribution: the forbidden tokens are no
    alternatives (and no -inf reaches the JSON)."""
    r = server.client().chat.completions.create(model="m", messages=MSGS, logprobs=True, top_logprobs=5,
                                                extra_body={"grammar": 'root ::= "yes" | "no"'}, **GREEDY)
    ch = r.choices[0]
    assert ch.message.content in ("yes", "no") and ch.finish_reason == "stop"
    lps = ch.logprobs.content
    assert lps and all(-1e9 < t.logprob <= 0 for t in lps)
    first = lps[0].top_logprobs
    assert 1 <= len(first) <= 5 and all(-1e9 < t.logprob <= 0 for t in first)
    assert sum(2.718281828 ** t.logprob for t in first) == pytest.approx(1.0, abs=1e-3)
