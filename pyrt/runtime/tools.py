"""OpenAI tool calling as data: the JSON Schema a required or named call is generated under, and the
parse of a generated call into OpenAI's `tool_calls` shape.

Pure functions over JSON-like values (no model, no grammar engine): the server renders `tools` into the
chat template, constrains a `required` / named `tool_choice` with `tool_call_schema`, and turns the
reply into `tool_calls` with `parse_tool_calls`. Imports only the standard library and pyrt.errors.
"""

from __future__ import annotations

import json
import re
import uuid
from typing import Callable

from ..errors import InvalidArgumentError

__all__ = ["check_tools", "tool_call_schema", "parse_tool_calls"]

_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")  # OpenAI's function name rule


def check_tools(tools) -> dict[str, dict]:
    """{name: parameters schema} of an OpenAI `tools` list; InvalidArgumentError if malformed."""
    if not isinstance(tools, list) or not tools:
        raise InvalidArgumentError("tools must be a non-empty list")
    out: dict[str, dict] = {}
    for i, t in enumerate(tools):
        if not isinstance(t, dict) or t.get("type") != "function" or not isinstance(t.get("function"), dict):
            raise InvalidArgumentError(f"tools[{i}] must be {{\"type\": \"function\", \"function\": {{...}}}}")
        f = t["function"]
        name = f.get("name")
        if not isinstance(name, str) or not _NAME.match(name):
            raise InvalidArgumentError(f"tools[{i}].function.name must match {_NAME.pattern}, got {name!r}")
        if name in out:
            raise InvalidArgumentError(f"tools: function {name!r} is declared twice")
        params = f.get("parameters", {"type": "object", "properties": {}})
        if not isinstance(params, dict):
            raise InvalidArgumentError(f"tools[{i}].function.parameters must be a JSON Schema object")
        out[name] = params
    return out


def _call_schema(name: str, params: dict, defs: dict) -> dict:
    """The call object of one function; the parameters' own definitions move into `defs` (the root's
    $defs, as "<name>.<key>"), since their "#/..." references resolve against the root of the call schema."""
    def rewrite(v):
        if isinstance(v, list):
            return [rewrite(x) for x in v]
        if not isinstance(v, dict):
            return v
        out = {k: rewrite(x) for k, x in v.items() if k not in ("$defs", "definitions")}
        ref = v.get("$ref")
        if isinstance(ref, str):
            for prefix in ("#/$defs/", "#/definitions/"):
                if ref.startswith(prefix):
                    out["$ref"] = f"#/$defs/{name}.{ref[len(prefix):]}"
            if ref == "#":
                out["$ref"] = f"#/$defs/{name}"
                defs[name] = params_rewritten
        return out

    own = {**params.get("definitions", {}), **params.get("$defs", {})}
    params_rewritten: dict = {}
    params_rewritten.update(rewrite(params))
    for k, d in own.items():
        defs[f"{name}.{k}"] = rewrite(d)
    return {"type": "object", "properties": {"name": {"const": name}, "arguments": params_rewritten},
            "required": ["name", "arguments"], "additionalProperties": False}


def _with_defs(schema: dict, defs: dict) -> dict:
    return {**schema, "$defs": defs} if defs else schema


def tool_call_schema(tools, tool_choice="auto", parallel_tool_calls: bool = False) -> dict | None:
    """The JSON Schema of the reply for `tool_choice`: None for "auto" and "none" (free text; "auto"
    replies are parsed afterwards), a call `{"name": ..., "arguments": {...}}` of any declared function
    for "required", of the named one for `{"type": "function", "function": {"name": ...}}`. With
    parallel_tool_calls, "required" allows a list of one or more calls."""
    if tool_choice in (None, "auto", "none"):
        if tools is not None:
            check_tools(tools)
        return None
    funcs = check_tools(tools)
    defs: dict = {}
    if tool_choice == "required":
        calls = [_call_schema(n, p, defs) for n, p in funcs.items()]
        one = calls[0] if len(calls) == 1 else {"anyOf": calls}
        return _with_defs({"type": "array", "items": one, "minItems": 1} if parallel_tool_calls else one, defs)
    if isinstance(tool_choice, dict) and tool_choice.get("type") == "function":
        name = (tool_choice.get("function") or {}).get("name")
        if name not in funcs:
            raise InvalidArgumentError(f"tool_choice names function {name!r}, which is not in tools")
        return _with_defs(_call_schema(name, funcs[name], defs), defs)
    raise InvalidArgumentError("tool_choice must be 'none', 'auto', 'required' or "
                               "{\"type\": \"function\", \"function\": {\"name\": ...}}")


_TAGGED = re.compile(r"<tool_call>\s*(.*?)\s*</tool_call>", re.S)
_FENCED = re.compile(r"^```(?:json)?\s*(.*?)\s*```$", re.S)


def parse_tool_calls(text: str, tools, make_id: Callable[[], str] | None = None) -> list[dict]:
    """OpenAI `tool_calls` from a reply: the whole reply as one call object or a list of them (what
    `tool_call_schema` generates), optionally in a ```json fence, or `<tool_call>{...}</tool_call>` blocks
    (Hermes / Qwen templates). A call is `{"name": ..., "arguments": {...}}` ("parameters" is read as
    "arguments") naming a declared function. Returns [] when the reply holds no call."""
    funcs = check_tools(tools)
    make_id = make_id or (lambda: "call_" + uuid.uuid4().hex[:24])
    s = text.strip()
    m = _FENCED.match(s)
    if m:
        s = m.group(1)
    blocks = _TAGGED.findall(s)
    values = []
    for src in (blocks or [s]):
        try:
            v = json.loads(src)
        except json.JSONDecodeError:
            return []
        values.extend(v if isinstance(v, list) else [v])
    calls = []
    for v in values:
        if not isinstance(v, dict) or v.get("name") not in funcs:
            return []
        args = v.get("arguments", v.get("parameters", {}))
        if isinstance(args, str):  # some templates double-encode the arguments
            try:
                args = json.loads(args)
            except json.JSONDecodeError:
                return []
        if not isinstance(args, dict):
            return []
        calls.append({"id": make_id(), "type": "function",
                      "function": {"name": v["name"], "arguments": json.dumps(args, ensure_ascii=False)}})
    return calls
