"""The ASGI app (Starlette) over one `Engine`: OpenAI-compatible endpoints and llama-server's extras.

Thin: parsing and formatting live in pyrt.server.protocol, generation in pyrt.engine. Engine events
cross from the engine thread into the event loop with `call_soon_threadsafe`. A client that goes away
(streaming or not) has its request cancelled, which frees its cells at the engine's next step.
Imports starlette (the `server` extra), pyrt.engine, pyrt.io.files (slot files), pyrt.server.protocol.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import os
import threading
import time
from dataclasses import dataclass, field

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request as HttpRequest
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route

from ..engine import Engine, Request
from ..engine.requests import FINISH_CANCELLED, FINISH_ERROR, FINISH_STOP, FINISH_TIMEOUT, Completion, Piece
from ..engine.scheduler import EngineStoppedError, QueueFullError
from ..engine.slots import SlotBusyError
from ..errors import ContextOverflowError, InvalidArgumentError, PyrtError, StateError
from ..io.files import read_file
from ..runtime.tools import parse_tool_calls
from . import protocol as P
from .protocol import ApiError

AUTH_EXEMPT = ("/health", "/v1/health", "/models", "/v1/models")


@dataclass
class ServerConfig:
    model_alias: str = ""
    api_keys: list[str] = field(default_factory=list)
    slot_save_path: str | None = None
    chat_template: str | None = None
    timeout_s: float | None = 600.0
    max_body_bytes: int = 8 << 20
    shutdown_grace_s: float = 10.0
    # keep each session's state (session_id / X-Session-Id / user) in a file on slot_save_path after every
    # turn and resume from it where no cache holds the conversation (replicas sharing that folder)
    session_states: bool = False


class ServerState:
    """What the routes share: the engine (None while the model loads) and the config."""

    def __init__(self, config: ServerConfig, loader):
        self.config = config
        self.loader = loader          # () -> Engine (started); runs in a thread at startup
        self.engine: Engine | None = None
        self.template = None
        self.load_error: str | None = None
        self.t_start = time.time()
        self.on_load_error = None     # set by the runner: stop the process

    def load(self) -> None:
        try:
            eng = self.loader()
            self.template = _template(eng, self.config.chat_template)
            self.engine = eng
        except Exception as e:  # noqa: BLE001 - reported, then the server exits
            self.load_error = f"{type(e).__name__}: {e}" if not isinstance(e, PyrtError) else str(e)
            if self.on_load_error is not None:
                self.on_load_error(self.load_error)


def _template(engine: Engine, spec: str | None):
    """--chat-template, else the file's, else ChatML (llama-server's fallback)."""
    import sys

    from ..errors import TokenizerError
    from ..runtime.chat import template_for
    try:
        return template_for(engine.llm, spec)
    except TokenizerError:
        print("pyrt serve: warning: the file has no chat template; using chatml (set --chat-template)",
              file=sys.stderr, flush=True)
        return template_for(engine.llm, "chatml")


def _error(e: ApiError) -> JSONResponse:
    return JSONResponse(e.body(), status_code=e.status)


def _engine(state: ServerState) -> Engine:
    if state.engine is None:
        if state.load_error:
            raise ApiError(500, f"model failed to load: {state.load_error}", "server_error")
        raise ApiError(503, "Loading model", "unavailable_error")
    return state.engine


async def _json_body(request: HttpRequest, limit: int) -> dict:
    n = request.headers.get("content-length")
    if n is not None and n.isdigit() and int(n) > limit:
        raise ApiError(413, f"request body larger than {limit} bytes", "invalid_request_error")
    buf = bytearray()
    async for chunk in request.stream():
        buf += chunk
        if len(buf) > limit:
            raise ApiError(413, f"request body larger than {limit} bytes", "invalid_request_error")
    if not buf:
        return {}
    try:
        body = json.loads(bytes(buf))
    except (ValueError, UnicodeDecodeError) as e:
        raise P.bad(f"invalid JSON: {e}") from None
    if not isinstance(body, dict):
        raise P.bad("the request body must be a JSON object")
    return body


class _Bridge:
    """Engine events (from the engine thread) into an asyncio queue."""

    def __init__(self):
        self.loop = asyncio.get_running_loop()
        self.queue: asyncio.Queue = asyncio.Queue()

    def __call__(self, ev) -> None:
        try:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, ev)
        except RuntimeError:  # the loop is closed: nobody is listening any more
            pass


def _state_path(cfg: ServerConfig, body: dict, request: HttpRequest) -> str | None:
    if not (cfg.session_states and cfg.slot_save_path):
        return None
    sid = P.session_id(body, request.headers)
    return os.path.join(cfg.slot_save_path, P.session_file(sid)) if sid is not None else None


def _submit(engine: Engine, ids: list[int], params, state_path: str | None = None) -> tuple[Request, _Bridge]:
    bridge = _Bridge()
    req = Request(ids, params, sink=bridge, state_path=state_path)
    try:
        engine.submit(req)
    except ContextOverflowError as e:
        raise ApiError(400, str(e), "invalid_request_error", "context_length_exceeded") from None
    except InvalidArgumentError as e:
        raise P.bad(str(e)) from None
    except QueueFullError as e:
        raise ApiError(503, str(e), "unavailable_error") from None
    except EngineStoppedError as e:
        raise ApiError(503, str(e), "unavailable_error") from None
    return req, bridge


async def _watch_disconnect(receive, req: Request) -> None:
    while True:
        msg = await receive()
        if msg["type"] == "http.disconnect":
            req.cancel()
            return


def _completion_error(c: Completion) -> ApiError | None:
    if c.finish_reason == FINISH_TIMEOUT:
        return ApiError(408, "the request timed out (--timeout)", "timeout_error")
    if c.finish_reason == FINISH_CANCELLED:
        return ApiError(503, "the request was cancelled (server shutting down)", "unavailable_error")
    if c.finish_reason == FINISH_ERROR:
        if isinstance(c.error, ContextOverflowError):
            return ApiError(400, str(c.error), "invalid_request_error", "context_length_exceeded")
        return ApiError(500, f"generation failed: {c.error}", "server_error")
    return None


async def _collect(request: HttpRequest, req: Request, bridge: _Bridge) -> Completion:
    """Wait for the Completion of a non-streaming request, cancelling it if the client goes away."""
    watch = asyncio.ensure_future(_watch_disconnect(request.receive, req))
    try:
        while True:
            ev = await bridge.queue.get()
            if isinstance(ev, Completion):
                return ev
    finally:
        watch.cancel()
        req.cancel()  # no-op when done; frees the cells if this task was cancelled


class _SSE:
    """A server-sent-events response from an async iterator of `data:` payloads; the request is
    cancelled when the client disconnects (watched on `receive`, also while nothing is sent)."""

    def __init__(self, chunks, req: Request, done: bool = True):
        self.chunks, self.req, self.done = chunks, req, done

    async def __call__(self, scope, receive, send) -> None:
        watch = asyncio.ensure_future(_watch_disconnect(receive, self.req))
        try:
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache"),
                                    (b"x-accel-buffering", b"no")]})
            async for obj in self.chunks:
                if self.req.cancelled:
                    break
                await send({"type": "http.response.body", "more_body": True,
                            "body": b"data: " + json.dumps(obj, ensure_ascii=False).encode() + b"\n\n"})
            if not self.req.cancelled:
                tail = b"data: [DONE]\n\n" if self.done else b""
                await send({"type": "http.response.body", "body": tail, "more_body": False})
        except OSError:
            pass
        finally:
            watch.cancel()
            self.req.cancel()


async def _constrain(eng: Engine, body: dict, params, spec=None) -> None:
    """The request's constraint (given `spec`, else read from the body) compiled, off the event loop,
    into params; a 400 with the grammar engine's message when it cannot be compiled."""
    spec = spec if spec is not None else P.constraint_spec(body)
    if spec is not None:
        await asyncio.to_thread(P.compile_constraint, eng, spec)
        params.constraint = spec


def _created() -> int:
    return int(time.time())


def build_app(state: ServerState) -> Starlette:
    cfg = state.config

    def model_id() -> str:
        return cfg.model_alias or "pyrt"

    async def health(request):
        if state.engine is None:
            if state.load_error:
                return _error(ApiError(500, state.load_error, "server_error"))
            return _error(ApiError(503, "Loading model", "unavailable_error"))
        return JSONResponse({"status": "ok"})

    async def models(request):
        data = {"id": model_id(), "object": "model", "created": int(state.t_start), "owned_by": "pyrt"}
        if state.engine is not None:
            hp = state.engine.llm.model.hp
            data["meta"] = {"n_vocab": hp.n_vocab, "n_ctx_train": hp.n_ctx_train, "n_embd": hp.n_embd,
                            "n_ctx": state.engine.ctx.n_ctx, "arch": hp.arch}
        return JSONResponse({"object": "list", "data": [data]})

    async def chat_completions(request):
        eng = _engine(state)
        body = await _json_body(request, cfg.max_body_bytes)
        params = P.generation_params(body, timeout_s=cfg.timeout_s)
        P.openai_logprobs(body, params, chat=True)
        tools = P.tool_spec(body)
        spec = P.constraint_spec(body)
        if tools.schema is not None:
            if spec is not None:
                raise P.bad("a constraint (response_format, json_schema, grammar) and a required or named "
                            "tool_choice are mutually exclusive")
            spec = ("json_schema", json.dumps(tools.schema))
        ids = P.chat_prompt_ids(eng, state.template, body, tools.tools if tools.parse else None)
        await _constrain(eng, body, params, spec)
        stream = P._get(body, "stream", bool, False)
        so = body.get("stream_options") or {}
        include_usage = isinstance(so, dict) and so.get("include_usage") is True
        req, bridge = _submit(eng, ids, params, _state_path(cfg, body, request))
        rid = f"chatcmpl-{req.id}"
        created = _created()
        tk = eng.tokenizer

        def tool_calls(c: Completion) -> list:
            """OpenAI tool_calls of a finished reply ([] when it is text, or was cut by max_tokens)."""
            if not tools.parse or c.finish_reason != FINISH_STOP:
                return []
            return parse_tool_calls(c.text, tools.tools)

        def chunk(delta, fr=None, logprobs=None, **extra):
            return {"id": rid, "object": "chat.completion.chunk", "created": created, "model": model_id(),
                    "choices": [{"index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": fr}], **extra}

        if not stream:
            c = await _collect(request, req, bridge)
            err = _completion_error(c)
            if err is not None:
                return _error(err)
            message = {"role": "assistant", "content": c.text}
            fr = P.finish_reason(c)
            calls = tool_calls(c)
            if calls:
                message, fr = {"role": "assistant", "content": None, "tool_calls": calls}, "tool_calls"
            return JSONResponse({
                "id": rid, "object": "chat.completion", "created": created, "model": model_id(),
                "choices": [{"index": 0, "message": message,
                             "logprobs": P.chat_logprobs(tk, c.tokens) if params.logprobs else None,
                             "finish_reason": fr}],
                "usage": P.usage(c), "timings": c.timings()})

        async def gen():
            yield chunk({"role": "assistant", "content": ""})
            # text that may be a tool call is held back until the end (all of it for a required or named
            # call; for "auto" while it still starts like one, P.may_be_tool_call)
            holding = tools.parse
            held, held_tokens = "", []
            while True:
                ev = await bridge.queue.get()
                if isinstance(ev, Piece):
                    if holding:
                        held += ev.text
                        held_tokens += ev.tokens
                        if tools.schema is not None or P.may_be_tool_call(held):
                            continue
                        holding = False
                        text, toks, held, held_tokens = held, held_tokens, "", []
                    else:
                        text, toks = ev.text, ev.tokens
                    lp = P.chat_logprobs(tk, toks) if params.logprobs else None
                    if text or lp:
                        yield chunk({"content": text}, logprobs=lp)
                    continue
                err = _completion_error(ev)
                if err is not None:
                    yield err.body()
                    return
                fr = P.finish_reason(ev)
                calls = tool_calls(ev) if holding else []
                if calls:
                    fr = "tool_calls"
                    yield chunk({"tool_calls": [{"index": i, **call} for i, call in enumerate(calls)]})
                elif held or held_tokens:
                    lp = P.chat_logprobs(tk, held_tokens) if params.logprobs else None
                    yield chunk({"content": held}, logprobs=lp)
                yield chunk({}, fr, timings=ev.timings())
                if include_usage:
                    yield {"id": rid, "object": "chat.completion.chunk", "created": created, "model": model_id(),
                           "choices": [], "usage": P.usage(ev)}
                return
        return _SSE(gen(), req)

    async def completions(request):
        eng = _engine(state)
        body = await _json_body(request, cfg.max_body_bytes)
        params = P.generation_params(body, timeout_s=cfg.timeout_s)
        P.openai_logprobs(body, params, chat=False)
        if P._get(body, "echo", bool, False):
            raise P.bad("'echo' is not supported")
        ids = P.prompt_ids(eng, body.get("prompt"))
        await _constrain(eng, body, params)
        stream = P._get(body, "stream", bool, False)
        so = body.get("stream_options") or {}
        include_usage = isinstance(so, dict) and so.get("include_usage") is True
        req, bridge = _submit(eng, ids, params, _state_path(cfg, body, request))
        rid = f"cmpl-{req.id}"
        created = _created()
        tk = eng.tokenizer

        def chunk(text, fr=None, logprobs=None, **extra):
            return {"id": rid, "object": "text_completion", "created": created, "model": model_id(),
                    "choices": [{"index": 0, "text": text, "logprobs": logprobs, "finish_reason": fr}], **extra}

        if not stream:
            c = await _collect(request, req, bridge)
            err = _completion_error(c)
            if err is not None:
                return _error(err)
            out = chunk(c.text, P.finish_reason(c),
                        P.completion_logprobs(tk, c.tokens) if params.logprobs else None,
                        usage=P.usage(c), timings=c.timings())
            return JSONResponse(out)

        async def gen():
            offset = 0
            while True:
                ev = await bridge.queue.get()
                if isinstance(ev, Piece):
                    lp = P.completion_logprobs(tk, ev.tokens, offset) if params.logprobs else None
                    offset += len(ev.text)
                    if ev.text or lp:
                        yield chunk(ev.text, logprobs=lp)
                    continue
                err = _completion_error(ev)
                if err is not None:
                    yield err.body()
                    return
                yield chunk("", P.finish_reason(ev), timings=ev.timings(),
                            **({"usage": P.usage(ev)} if include_usage else {}))
                return
        return _SSE(gen(), req)

    async def completion_llama(request):
        """llama-server's /completion."""
        eng = _engine(state)
        body = await _json_body(request, cfg.max_body_bytes)
        params = P.generation_params(body, llama=True, timeout_s=cfg.timeout_s)
        ids = P.prompt_ids(eng, body.get("prompt"))
        await _constrain(eng, body, params)
        stream = P._get(body, "stream", bool, False)
        req, bridge = _submit(eng, ids, params, _state_path(cfg, body, request))
        tk = eng.tokenizer

        def final(c: Completion) -> dict:
            out = {"content": c.text, "id_slot": c.slot, "stop": True, "model": model_id(),
                   "tokens_predicted": c.predicted_n, "tokens_evaluated": c.prompt_tokens, "truncated": False,
                   "stop_type": P.llama_stop_type(c), "stopping_word": c.stop_word, "tokens_cached":
                   c.prompt_tokens + max(0, c.predicted_n - 1), "timings": c.timings()}
            return out

        if not stream:
            c = await _collect(request, req, bridge)
            err = _completion_error(c)
            if err is not None:
                return _error(err)
            out = final(c)
            if params.n_probs:
                out["completion_probabilities"] = P.llama_probs(tk, c.tokens)
            return JSONResponse(out)

        async def gen():
            while True:
                ev = await bridge.queue.get()
                if isinstance(ev, Piece):
                    d = {"content": ev.text, "stop": False, "id_slot": -1}
                    if params.n_probs:
                        d["completion_probabilities"] = P.llama_probs(tk, ev.tokens)
                    yield d
                    continue
                err = _completion_error(ev)
                if err is not None:
                    yield err.body()
                    return
                d = final(ev)
                d["content"] = ""
                yield d
                return
        return _SSE(gen(), req, done=False)

    async def tokenize(request):
        eng = _engine(state)
        body = await _json_body(request, cfg.max_body_bytes)
        content = body.get("content")
        if not isinstance(content, str):
            raise P.bad("'content' must be a string")
        add_special = P._get(body, "add_special", bool, False)
        parse_special = P._get(body, "parse_special", bool, True)
        ids = eng.tokenizer.tokenize(content, add_special=add_special, parse_special=parse_special)
        if P._get(body, "with_pieces", bool, False):
            toks = []
            for t in ids:
                b = eng.tokenizer.token_to_piece(t, special=True)
                try:
                    piece = b.decode("utf-8")
                except UnicodeDecodeError:
                    piece = list(b)
                toks.append({"id": t, "piece": piece})
            return JSONResponse({"tokens": toks})
        return JSONResponse({"tokens": ids})

    async def detokenize(request):
        eng = _engine(state)
        body = await _json_body(request, cfg.max_body_bytes)
        toks = body.get("tokens")
        if not isinstance(toks, list) or not all(isinstance(t, int) and not isinstance(t, bool) for t in toks):
            raise P.bad("'tokens' must be a list of token ids")
        nv = eng.ctx.n_vocab
        bad_ids = [t for t in toks if not 0 <= t < nv]
        if bad_ids:
            raise P.bad(f"token id {bad_ids[0]} is out of range [0, {nv})")
        return JSONResponse({"content": eng.tokenizer.detokenize(toks)})

    async def slots(request):
        eng = _engine(state)
        return JSONResponse(list(eng.slot_info))

    async def slot_action(request):
        eng = _engine(state)
        try:
            slot_id = int(request.path_params["id"])
        except ValueError:
            raise P.bad("slot id must be an integer") from None
        action = request.query_params.get("action", "")
        body = await _json_body(request, cfg.max_body_bytes)
        if not 0 <= slot_id < eng.n_parallel:
            raise ApiError(404, f"slot {slot_id} does not exist (0..{eng.n_parallel - 1})", "not_found_error")
        if action == "erase":
            return JSONResponse(await _engine_call(eng, lambda e: e.slot_erase(slot_id)))
        if action not in ("save", "restore"):
            raise P.bad("action must be save, restore or erase")
        if not cfg.slot_save_path:
            raise ApiError(501, "slot save/restore needs --slot-save-path", "not_supported_error")
        name = body.get("filename")
        if not isinstance(name, str) or not valid_filename(name):
            raise P.bad("'filename' must be a plain file name (no '/', '\\', '..' or NUL)")
        path = os.path.join(cfg.slot_save_path, name)
        if action == "save":
            out = await _engine_call(eng, lambda e: e.slot_save(slot_id, path))
            out["filename"] = name
            return JSONResponse(out)
        try:
            data = await asyncio.to_thread(read_file, path)
        except FileNotFoundError:
            raise ApiError(404, f"no slot file {name!r}", "not_found_error") from None
        out = await _engine_call(eng, lambda e: e.slot_restore(slot_id, data))
        out["filename"] = name
        return JSONResponse(out)

    async def metrics(request):
        eng = _engine(state)
        rows = [
            ("prompt_tokens_total", "counter", "Number of prompt tokens processed.", eng.n_prompt_tokens),
            ("prompt_seconds_total", "counter", "Prompt process time", eng.t_prompt),
            ("tokens_predicted_total", "counter", "Number of generation tokens processed.", eng.n_predicted),
            ("tokens_predicted_seconds_total", "counter", "Predict process time", eng.t_predicted),
            ("n_decode_total", "counter", "Total number of llama_decode() calls", eng.n_decode),
            ("prompt_tokens_cached_total", "counter", "Prompt tokens reused from the KV cache.",
             eng.n_cached_tokens),
            ("requests_total", "counter", "Requests started.", eng.n_requests),
            ("requests_processing", "gauge", "Number of requests processing.", eng.n_busy()),
            ("requests_deferred", "gauge", "Number of requests deferred.", eng.n_waiting()),
            ("kv_cache_tokens", "gauge", "KV-cache tokens.", eng.kv_used()),
            ("cache_ram_bytes", "gauge", "Host RAM held by evicted prefixes (--cache-ram).",
             eng.host_cache.n_bytes if eng.host_cache is not None else 0),
            ("cache_ram_restored_total", "counter", "Prompts that restored a prefix from host RAM.",
             eng.n_host_restored),
            ("session_states_saved_total", "counter", "Session states written to the slot-save path.",
             eng.n_state_saved),
            ("session_states_restored_total", "counter", "Prompts that resumed from a session state file.",
             eng.n_state_restored),
            ("kv_cache_usage_ratio", "gauge", "KV-cache usage. 1 means 100 percent usage.",
             eng.kv_used() / eng.ctx.n_ctx),
        ]
        lines = []
        for name, kind, help_, v in rows:
            lines += [f"# HELP llamacpp:{name} {help_}", f"# TYPE llamacpp:{name} {kind}", f"llamacpp:{name} {v}"]
        return PlainTextResponse("\n".join(lines) + "\n", media_type="text/plain; version=0.0.4")

    async def props(request):
        eng = _engine(state)
        return JSONResponse({"total_slots": eng.n_parallel, "model_path": str(eng.llm.file.path),
                             "default_generation_settings": {"n_ctx": eng.ctx.n_ctx},
                             "chat_template": state.template.source if state.template is not None else ""})

    routes = [
        Route("/health", health, methods=["GET"]), Route("/v1/health", health, methods=["GET"]),
        Route("/v1/models", models, methods=["GET"]), Route("/models", models, methods=["GET"]),
        Route("/v1/chat/completions", chat_completions, methods=["POST"]),
        Route("/chat/completions", chat_completions, methods=["POST"]),
        Route("/v1/completions", completions, methods=["POST"]),
        Route("/completions", completions, methods=["POST"]),
        Route("/completion", completion_llama, methods=["POST"]),
        Route("/tokenize", tokenize, methods=["POST"]), Route("/detokenize", detokenize, methods=["POST"]),
        Route("/slots", slots, methods=["GET"]), Route("/slots/{id}", slot_action, methods=["POST"]),
        Route("/metrics", metrics, methods=["GET"]), Route("/props", props, methods=["GET"]),
    ]

    async def api_error(request, exc: ApiError):
        return _error(exc)

    async def http_error(request, exc: HTTPException):
        kind = {404: "not_found_error", 405: "invalid_request_error"}.get(exc.status_code, "invalid_request_error")
        return _error(ApiError(exc.status_code, str(exc.detail), kind))

    async def state_error(request, exc: StateError):
        return _error(ApiError(400, str(exc), "invalid_request_error"))

    async def busy_error(request, exc: SlotBusyError):
        return _error(ApiError(409, str(exc), "invalid_request_error"))

    async def pyrt_error(request, exc: PyrtError):
        return _error(ApiError(400, str(exc), "invalid_request_error"))

    async def server_error(request, exc: Exception):
        return _error(ApiError(500, f"{type(exc).__name__}: {exc}", "server_error"))

    app = Starlette(routes=routes, exception_handlers={
        ApiError: api_error, HTTPException: http_error, StateError: state_error, SlotBusyError: busy_error,
        PyrtError: pyrt_error, Exception: server_error})
    app.add_middleware(_Auth, keys=cfg.api_keys)
    app.state.pyrt = state
    return app


async def _engine_call(eng: Engine, fn):
    try:
        return await asyncio.wrap_future(eng.call(fn))
    except EngineStoppedError as e:
        raise ApiError(503, str(e), "unavailable_error") from None
    except InvalidArgumentError as e:
        raise P.bad(str(e)) from None


def valid_filename(name: str) -> bool:
    """A slot file name: one path component, no traversal, no NUL, not hidden, printable, short."""
    if not name or len(name) > 255 or name in (".", "..") or name.startswith("."):
        return False
    if any(c in name for c in ("/", "\\", "\x00", ":")) or ".." in name:
        return False
    return all(c.isprintable() for c in name)


class _Auth:
    """API keys: `Authorization: Bearer KEY` or `X-Api-Key: KEY` on every path but health and models."""

    def __init__(self, app, keys: list[str]):
        self.app = app
        self.keys = [k.encode() for k in keys if k]

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or not self.keys or scope["path"] in AUTH_EXEMPT:
            return await self.app(scope, receive, send)
        given = None
        for k, v in scope.get("headers", []):
            if k == b"authorization" and v[:7].lower() == b"bearer ":
                given = v[7:].strip()
            elif k == b"x-api-key":
                given = v.strip()
        if given is not None and any(hmac.compare_digest(given, k) for k in self.keys):
            return await self.app(scope, receive, send)
        resp = _error(ApiError(401, "Invalid API Key", "authentication_error"))
        await resp(scope, receive, send)


def run(state: ServerState, host: str, port: int, log_level: str = "warning") -> int:
    """Serve until SIGINT/SIGTERM. uvicorn runs in a thread (/health answers 503 meanwhile) while the
    model loads in the main thread (see Engine.start); on a signal, requests in flight get
    shutdown_grace_s to finish, then are cancelled, and the engine stops."""
    import signal
    import sys

    import uvicorn

    app = build_app(state)
    config = uvicorn.Config(app, host=host, port=port, log_level=log_level, lifespan="off",
                            timeout_graceful_shutdown=max(0.1, state.config.shutdown_grace_s),
                            access_log=False)
    server = uvicorn.Server(config)
    failed = []

    def on_load_error(msg):
        print(f"error: {msg}", file=sys.stderr, flush=True)
        failed.append(msg)
        server.should_exit = True

    state.on_load_error = on_load_error

    def on_signal(sig, frame):
        if state.engine is None and not failed:  # still loading: stop now
            raise KeyboardInterrupt
        if server.should_exit and sig == signal.SIGINT:
            server.force_exit = True
        server.should_exit = True

    prev = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    web = threading.Thread(target=server.run, name="pyrt-http", daemon=True)
    web.start()
    t0 = time.time()
    while not server.started and web.is_alive() and time.time() - t0 < 10:
        time.sleep(0.02)
    if not server.started:
        server.should_exit = True
        for sig, h in prev.items():
            signal.signal(sig, h)
        print(f"error: could not listen on {host}:{port}", file=sys.stderr, flush=True)
        return 1
    try:
        state.load()
        if state.engine is not None:
            print(f"pyrt serve: model loaded, listening on http://{host}:{port}", file=sys.stderr, flush=True)
        while web.is_alive():
            web.join(0.25)
    finally:
        server.should_exit = True
        if state.engine is not None:
            state.engine.stop(grace_s=0.0)
        for sig, h in prev.items():
            signal.signal(sig, h)
    return 1 if failed else 0
