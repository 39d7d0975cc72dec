"""OpenAI tool-call helpers (pyrt.runtime.tools): call schemas per tool_choice and parsing into tool_calls."""

import json

import pytest

from pyrt.errors import InvalidArgumentError
from pyrt.runtime.tools import check_tools, parse_tool_calls, tool_call_schema

WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "Weather of a city",
                                            "parameters": {"type": "object", "properties": {
                                                "city": {"type": "string"}, "unit": {"enum": ["c", "f"]}},
                                                "required": ["city"], "additionalProperties": False}}}
TIME = {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object", "properties": {
    "tz": {"type": "string"}}, "required": ["tz"]}}}
NOARGS = {"type": "function", "function": {"name": "ping"}}
TOOLS = [WEATHER, TIME, NOARGS]


def _ids():
    n = iter(range(100))
    return lambda: f"call_{next(n)}"


def test_schema_per_tool_choice():
    assert tool_call_schema(TOOLS, "auto") is None and tool_call_schema(TOOLS, "none") is None
    named = tool_call_schema(TOOLS, {"type": "function", "function": {"name": "get_time"}})
    assert named == {"type": "object", "properties": {"name": {"const": "get_time"},
                                                      "arguments": TIME["function"]["parameters"]},
                     "required": ["name", "arguments"], "additionalProperties": False}
    req = tool_call_schema(TOOLS, "required")
    assert [a["properties"]["name"]["const"] for a in req["anyOf"]] == ["get_weather", "get_time", "ping"]
    assert req["anyOf"][2]["properties"]["arguments"] == {"type": "object", "properties": {}}
    par = tool_call_schema(TOOLS, "required", parallel_tool_calls=True)
    assert par["type"] == "array" and par["minItems"] == 1 and par["items"] == req
    assert tool_call_schema([WEATHER], "required")["properties"]["name"] == {"const": "get_weather"}


@pytest.mark.parametrize("tools, choice, match", [
    ([], "required", "non-empty"),
    ([{"type": "function", "function": {"name": "bad name"}}], "required", "must match"),
    ([WEATHER, WEATHER], "required", "twice"),
    ([{"type": "retrieval"}], "required", "must be"),
    (TOOLS, {"type": "function", "function": {"name": "nope"}}, "not in tools"),
    (TOOLS, "sometimes", "tool_choice must be"),
])
def test_bad_tools(tools, choice, match):
    with pytest.raises(InvalidArgumentError, match=match):
        tool_call_schema(tools, choice)


def test_parse_tool_calls_shapes():
    one = '{"name": "get_weather", "arguments": {"city": "Paris", "unit": "c"}}'
    calls = parse_tool_calls(one, TOOLS, make_id=_ids())
    assert calls == [{"id": "call_0", "type": "function",
                      "function": {"name": "get_weather", "arguments": '{"city": "Paris", "unit": "c"}'}}]
    two = '[{"name": "get_time", "arguments": {"tz": "UTC"}}, {"name": "ping", "arguments": {}}]'
    assert [c["function"]["name"] for c in parse_tool_calls(two, TOOLS)] == ["get_time", "ping"]
    tagged = 'Let me check.\n<tool_call>\n{"name": "get_time", "parameters": {"tz": "CET"}}\n</tool_call>'
    calls = parse_tool_calls(tagged, TOOLS)
    assert len(calls) == 1 and json.loads(calls[0]["function"]["arguments"]) == {"tz": "CET"}
    fenced = '```json\n{"name": "ping", "arguments": "{}"}\n```'
    assert parse_tool_calls(fenced, TOOLS)[0]["function"] == {"name": "ping", "arguments": "{}"}
    ids = {c["id"] for c in parse_tool_calls(two, TOOLS)}
    assert len(ids) == 2 and all(i.startswith("call_") for i in ids)


@pytest.mark.parametrize("text", ["The weather is nice.", '{"name": "unknown", "arguments": {}}',
                                  '{"name": "get_time", "arguments": [1]}', '{"name": "get_time"', "[]x"])
def test_parse_no_call(text):
    assert parse_tool_calls(text, TOOLS) == []


def test_check_tools_defaults_parameters():
    assert check_tools([NOARGS]) == {"ping": {"type": "object", "properties": {}}}


def test_parameter_definitions_move_to_the_root():
    point = {"type": "object", "properties": {"x": {"type": "integer"}}, "required": ["x"]}
    line = {"type": "function", "function": {"name": "line", "parameters": {
        "$defs": {"p": point}, "type": "object",
        "properties": {"a": {"$ref": "#/$defs/p"}, "b": {"$ref": "#/$defs/p"}}, "required": ["a", "b"]}}}
    tree = {"type": "function", "function": {"name": "tree", "parameters": {
        "type": "object", "properties": {"kids": {"type": "array", "items": {"$ref": "#"}}}}}}
    s = tool_call_schema([line, tree], "required")
    assert s["$defs"]["line.p"] == point
    assert s["anyOf"][0]["properties"]["arguments"]["properties"]["a"] == {"$ref": "#/$defs/line.p"}
    assert "$defs" not in s["anyOf"][0]["properties"]["arguments"]
    assert s["$defs"]["tree"] == s["anyOf"][1]["properties"]["arguments"]
    assert s["$defs"]["tree"]["properties"]["kids"]["items"] == {"$ref": "#/$defs/tree"}
    jsonschema = pytest.importorskip("jsonschema")
    jsonschema.validate({"name": "line", "arguments": {"a": {"x": 1}, "b": {"x": 2}}}, s)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"name": "line", "arguments": {"a": {"x": "no"}, "b": {"x": 2}}}, s)
    jsonschema.validate({"name": "tree", "arguments": {"kids": [{"kids": []}]}}, s)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"name": "tree", "arguments": {"kids": [{"kids": [3]}]}}, s)
