"""Request bodies -> (prompt ids, GenerationParams), engine results -> response objects, for the OpenAI
API (/v1/chat/completions, /v1/completions) and llama-server's /completion.

Plain functions over dicts: no HTTP framework here. Errors are `ApiError(status, message, type, code)`.
Structured output: `response_format` / `json_schema` / `grammar` -> the engine's constraint spec (compiled
here, so a bad one is a 400 before anything is queued), `tools` / `tool_choice` -> the template's tool list
and the schema of a required call. Imports pyrt.engine, pyrt.runtime.chat, .constrain, .tools and pyrt.errors.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..engine.requests import FINISH_LENGTH, FINISH_STOP, Completion, GenerationParams, TokenInfo


class ApiError(Exception):
    """An error answered as OpenAI error JSON: {"error": {"message", "type", "code"}}."""

    def __init__(self, status: int, message: str, type_: str = "invalid_request_error", code=None):
        super().__init__(message)
        self.status, self.message, self.type, self.code = status, message, type_, code

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "code": self.code if self.code is not None
                          else self.status}}


def bad(message: str) -> ApiError:
    return ApiError(400, message)


def _get(body: dict, key: str, kind, default, lo=None, hi=None, aliases=()):
    """body[key] (or an alias) checked for type and range; `default` when absent or null."""
    for k in (key, *aliases):
        if k in body and body[k] is not None:
            v = body[k]
            key = k
            break
    else:
        return default
    if kind is bool:
        if not isinstance(v, bool):
            raise bad(f"'{key}' must be a boolean")
    elif kind is int:
        if isinstance(v, bool) or not (isinstance(v, int) or (isinstance(v, float) and v.is_integer())):
            raise bad(f"'{key}' must be an integer")
        v = int(v)
    elif kind is float:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise bad(f"'{key}' must be a number")
        v = float(v)
    elif kind is str:
        if not isinstance(v, str):
            raise bad(f"'{key}' must be a string")
    if lo is not None and v < lo:
        raise bad(f"'{key}' must be >= {lo}")
    if hi is not None and v > hi:
        raise bad(f"'{key}' must be <= {hi}")
    return v


def _stop(body: dict) -> list[str]:
    s = body.get("stop")
    if s is None:
        return []
    if isinstance(s, str):
        return [s] if s else []
    if isinstance(s, list) and all(isinstance(x, str) for x in s):
        return [x for x in s if x]
    raise bad("'stop' must be a string or a list of strings")


def generation_params(body: dict, llama: bool = False, timeout_s: float | None = None) -> GenerationParams:
    """Sampling and stopping settings common to every completion endpoint (llama-server's names accepted)."""
    if not isinstance(body, dict):
        raise bad("the request body must be a JSON object")
    n = _get(body, "n", int, 1)
    if n != 1:
        raise bad("only n = 1 is supported")
    p = GenerationParams(timeout_s=timeout_s)
    keys = ("n_predict", "max_tokens") if llama else ("max_completion_tokens", "max_tokens", "n_predict")
    p.max_tokens = _get(body, keys[0], int, -1, lo=-1, aliases=keys[1:])
    p.temperature = _get(body, "temperature", float, p.temperature, lo=0.0, hi=100.0)
    p.top_k = _get(body, "top_k", int, p.top_k, lo=0)
    p.top_p = _get(body, "top_p", float, p.top_p, lo=0.0, hi=1.0)
    p.min_p = _get(body, "min_p", float, p.min_p, lo=0.0, hi=1.0)
    p.repeat_penalty = _get(body, "repeat_penalty", float, p.repeat_penalty, lo=0.0)
    if p.repeat_penalty <= 0.0:
        raise bad("'repeat_penalty' must be > 0")
    p.repeat_last_n = _get(body, "repeat_last_n", int, p.repeat_last_n, lo=-1)
    seed = _get(body, "seed", int, None)
    p.seed = seed if seed is not None and seed >= 0 else None
    p.stop = _stop(body)
    p.ignore_eos = _get(body, "ignore_eos", bool, False)
    p.cache_prompt = _get(body, "cache_prompt", bool, True)
    p.id_slot = _get(body, "id_slot", int, -1, lo=-1)
    p.n_probs = _get(body, "n_probs", int, 0, lo=0, hi=20)
    return p


def openai_logprobs(body: dict, p: GenerationParams, chat: bool) -> None:
    """OpenAI's logprobs settings: chat: logprobs (bool) + top_logprobs (0-20); completions: logprobs (int)."""
    if chat:
        if _get(body, "logprobs", bool, False):
            p.logprobs = True
            p.n_probs = _get(body, "top_logprobs", int, 0, lo=0, hi=20)
        elif body.get("top_logprobs") is not None:
            raise bad("'top_logprobs' needs 'logprobs': true")
    else:
        lp = _get(body, "logprobs", int, None, lo=0, hi=5)
        if lp is not None:
            p.logprobs = True
            p.n_probs = lp
    if p.n_probs:
        p.logprobs = True


def prompt_ids(engine, prompt) -> list[int]:
    """A completion prompt: a string, a list of token ids, or a list holding one of those."""
    tk = engine.tokenizer
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], (str, list)):
        prompt = prompt[0]
    if isinstance(prompt, str):
        return tk.tokenize(prompt, add_special=True, parse_special=True)
    if isinstance(prompt, list) and prompt and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
        return list(prompt)
    if isinstance(prompt, list) and len(prompt) > 1:
        raise bad("only one prompt per request is supported")
    raise bad("'prompt' must be a string or a list of token ids")


def _flatten_content(content, i: int):
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise bad(f"messages[{i}].content: only text parts are supported")
            parts.append(part["text"])
        return "\n".join(parts)
    if content is None:
        return ""
    raise bad(f"messages[{i}].content must be a string or a list of text parts")


def chat_prompt_ids(engine, template, body: dict, tools: list | None = None) -> list[int]:
    from ..runtime.chat import ChatTemplateError, chat_ids

    msgs = body.get("messages")
    if not isinstance(msgs, list) or not msgs:
        raise bad("'messages' must be a non-empty list")
    norm = []
    for i, m in enumerate(msgs):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise bad(f"messages[{i}] must be an object with a 'role' string")
        msg = {"role": m["role"], "content": _flatten_content(m.get("content"), i)}
        for k in ("tool_calls", "tool_call_id", "name"):  # tool turns, as the templates read them
            if m.get(k) is not None:
                msg[k] = m[k]
        norm.append(msg)
    if template is None:
        raise bad("this model has no chat template; start the server with --chat-template")
    # tools go to the template as `tools` (the OpenAI list, as HF templates read it); not for "none"
    extra = {"tools": tools} if tools else {}
    try:
        text = template.render(norm, add_generation_prompt=True, **extra)
    except ChatTemplateError as e:
        raise bad(str(e)) from None
    return chat_ids(engine.tokenizer, text, template.bos_token)


def session_id(body: dict, headers) -> str | None:
    """The conversation a request continues: the body's `session_id`, else the `X-Session-Id` header, else the
    body's `user` (OpenAI's end-user id); None without one."""
    for v in (body.get("session_id") if isinstance(body, dict) else None, headers.get("x-session-id"),
              body.get("user") if isinstance(body, dict) else None):
        if isinstance(v, str) and v:
            return v
    return None


def session_file(session: str) -> str:
    """The file name of a session's state on the slot-save path (a hash: any id is a safe name)."""
    import hashlib
    return "session-" + hashlib.sha256(session.encode("utf-8", "surrogatepass")).hexdigest()[:32] + ".state"


# -- responses -------------------------------------------------------------------------------------
def finish_reason(c: Completion) -> str:
    return "length" if c.finish_reason == FINISH_LENGTH else "stop"


def usage(c: Completion) -> dict:
    return {"prompt_tokens": c.prompt_tokens, "completion_tokens": c.predicted_n,
            "total_tokens": c.prompt_tokens + c.predicted_n,
            "prompt_tokens_details": {"cached_tokens": c.cache_n}}


def _piece(tk, t: int) -> tuple[str, list[int]]:
    b = tk.token_to_piece(t, special=True)
    return b.decode("utf-8", errors="replace"), list(b)


def chat_logprobs(tk, infos: list[TokenInfo]) -> dict:
    content = []
    for ti in infos:
        s, b = _piece(tk, ti.id)
        top = []
        for tid, lp in ti.top:
            ts, tb = _piece(tk, tid)
            top.append({"token": ts, "logprob": lp, "bytes": tb})
        content.append({"token": s, "logprob": ti.logprob, "bytes": b, "top_logprobs": top})
    return {"content": content}


def completion_logprobs(tk, infos: list[TokenInfo], offset0: int = 0) -> dict:
    tokens, lps, tops, offs = [], [], [], []
    off = offset0
    for ti in infos:
        s, _ = _piece(tk, ti.id)
        tokens.append(s)
        lps.append(ti.logprob)
        tops.append({_piece(tk, tid)[0]: lp for tid, lp in ti.top})
        offs.append(off)
        off += len(s)
    return {"tokens": tokens, "token_logprobs": lps, "top_logprobs": tops, "text_offset": offs}


def llama_probs(tk, infos: list[TokenInfo]) -> list[dict]:
    out = []
    for ti in infos:
        s, b = _piece(tk, ti.id)
        out.append({"id": ti.id, "token": s, "logprob": ti.logprob, "bytes": b,
                    "top_logprobs": [{"id": tid, "token": _piece(tk, tid)[0], "logprob": lp,
                                      "bytes": _piece(tk, tid)[1]} for tid, lp in ti.top]})
    return out


def llama_stop_type(c: Completion) -> str:
    if c.finish_reason == FINISH_LENGTH:
        return "limit"
    if c.finish_reason == FINISH_STOP:
        return "word" if c.stop_word else "eos"
    return "none"


# -- structured output -----------------------------------------------------------------------------
def constraint_spec(body: dict) -> tuple[str, str] | None:
    """(kind, text) of the request's constraint: OpenAI `response_format`, or llama-server's `json_schema`
    (a schema object or JSON text) or `grammar` (GBNF or Lark text); at most one of them."""
    from ..errors import InvalidArgumentError
    from ..runtime.constrain import request_grammar

    g = body.get("grammar")
    if g is not None and not isinstance(g, str):
        raise bad("'grammar' must be a string (GBNF or Lark)")
    if g == "":
        g = None  # llama-server sends "" for no grammar
    try:
        return request_grammar(json_schema=body.get("json_schema"), grammar=g,
                               response_format=body.get("response_format"))
    except InvalidArgumentError as e:
        raise bad(str(e)) from None


def compile_constraint(engine, spec: tuple[str, str]) -> None:
    """Compiles the constraint against the engine's vocabulary (cached by text), so that a schema or
    grammar the grammar engine rejects is a 400 with its message before anything is queued."""
    from ..errors import GrammarError, InvalidArgumentError, UnsupportedError
    from ..runtime.constrain import engine_for

    try:
        engine_for(engine.tokenizer).compile(*spec)
    except (GrammarError, InvalidArgumentError) as e:
        raise bad(str(e)) from None
    except UnsupportedError as e:
        raise ApiError(501, str(e), "not_supported_error") from None


@dataclass
class ToolSpec:
    """A chat request's tools: the list for the template, the choice, the schema a required or named call
    is generated under (None for "auto" / "none")."""

    tools: list | None = None
    choice: object = "none"
    schema: dict | None = None

    @property
    def parse(self) -> bool:
        """Whether the reply is read as tool calls."""
        return self.tools is not None and self.choice != "none"


def tool_spec(body: dict) -> ToolSpec:
    from ..errors import InvalidArgumentError
    from ..runtime.tools import tool_call_schema

    tools = body.get("tools")
    choice = body.get("tool_choice")
    if tools is None or tools == []:
        if choice not in (None, "none", "auto"):
            raise bad("'tool_choice' needs 'tools'")
        return ToolSpec()
    choice = "auto" if choice is None else choice
    parallel = _get(body, "parallel_tool_calls", bool, False)
    try:
        schema = tool_call_schema(tools, choice, parallel_tool_calls=parallel)
    except InvalidArgumentError as e:
        raise bad(str(e)) from None
    return ToolSpec(tools, choice, schema)


# how an "auto" reply that may be a tool call starts (after whitespace): the text is held back while it
# could still be one of these, then parsed with pyrt.runtime.tools.parse_tool_calls at the end
TOOL_CALL_OPENERS = ("{", "[", "```", "<tool_call>")


def may_be_tool_call(text: str) -> bool:
    s = text.lstrip()
    return not s or any(s.startswith(o) or o.startswith(s) for o in TOOL_CALL_OPENERS)
