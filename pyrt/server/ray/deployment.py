"""pyrt on Ray Serve: `PyrtReplica` (one Engine behind pyrt's ASGI app, reporting what its KV cache holds),
`PyrtIngress` (the HTTP endpoint: routing keys from the request, forwarded through a handle that
`PrefixSessionRouter` routes; a request whose replica died before answering is sent once more),
`deployment(...)` (the bound application) and `serve_forever(...)` (`pyrt serve --ray`).

Sessions move between replicas through state files on the shared slot-save path (ServerConfig.session_states):
every turn leaves its sequence there, and a replica without the conversation in its cache resumes from it.
Imports ray.serve's public API, pyrt.engine, pyrt.runtime and pyrt.server.
"""

from __future__ import annotations

import asyncio
import collections
import json
import os
import sys
import time

import ray
from ray import serve
from ray.exceptions import RayActorError, RayTaskError
from ray.serve.config import RequestRouterConfig
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError, ReplicaUnavailableError
from starlette.applications import Starlette
from starlette.routing import Route

from .. import protocol as P
from ..app import ServerConfig, ServerState, _Auth, build_app
from .router import PrefixSessionRouter
from .routing import BLOCK_TOKENS, Prompter, RoutedRequest, block_hashes, routing_keys

REPLICA_HEADER = b"x-pyrt-replica"   # names the replica actor that answered (ray.get_actor(name, "serve"))
NODE_HEADER = b"x-pyrt-node"         # and the Ray node it runs on
# a replica that died before answering: the request is sent again (once), as if the replica had not been chosen
RETRYABLE = (RayActorError, ReplicaUnavailableError)
# sessions a replica reports (most recent first, at most this many)
SESSIONS_REPORTED = 1024


class PyrtReplica:
    """One pyrt Engine (its own continuous batching and KV cache; weights memory-mapped, so replicas on one
    host share them in the page cache) behind pyrt's ASGI app, called by `forward`."""

    def __init__(self, model_path: str, load_kw: dict, server_kw: dict, n_parallel: int = 4, max_queue: int = 256,
                 cache_ram_bytes: int = 0, block_tokens: int = BLOCK_TOKENS):
        def loader():
            from ...engine import Engine
            from ...runtime.llm import load
            return Engine.launch(lambda: load(model_path, n_seq_max=n_parallel, progress=False, **load_kw),
                                 n_parallel, max_queue=max_queue, cache_ram_bytes=cache_ram_bytes)

        self.state = ServerState(ServerConfig(**server_kw), loader)
        self.state.load()
        if self.state.engine is None:
            raise RuntimeError(f"pyrt replica: the model failed to load: {self.state.load_error}")
        self.app = build_app(self.state)
        self.name = serve.get_replica_context().replica_id.to_full_id_str()
        self.node = ray.get_runtime_context().get_node_id()
        self.block_tokens = block_tokens
        self._sessions: collections.OrderedDict[str, None] = collections.OrderedDict()
        self._slot_hashes: dict[int, tuple[list[int], list[int]]] = {}

    async def forward(self, routed: RoutedRequest):
        """Run the request through the app: yields (status, headers, first body chunk, whether that is all),
        then the other chunks of the body (a whole JSON response is one item: one trip through Ray)."""
        if routed.session:
            self._sessions[routed.session] = None
            self._sessions.move_to_end(routed.session)
            while len(self._sessions) > SESSIONS_REPORTED:
                self._sessions.popitem(last=False)
        scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": routed.method,
                 "scheme": "http", "path": routed.path, "raw_path": routed.path.encode(), "root_path": "",
                 "query_string": routed.query_string, "headers": routed.headers, "client": routed.client,
                 "server": None}
        out: asyncio.Queue = asyncio.Queue()
        gone = asyncio.Event()
        body_sent = False

        async def receive():
            nonlocal body_sent
            if not body_sent:
                body_sent = True
                return {"type": "http.request", "body": routed.body, "more_body": False}
            await gone.wait()  # the caller went away (this generator was closed or cancelled)
            return {"type": "http.disconnect"}

        async def send(msg):
            out.put_nowait(msg)

        task = asyncio.ensure_future(self.app(scope, receive, send))
        task.add_done_callback(lambda t: out.put_nowait(None))
        start = None
        try:
            while True:
                msg = await out.get()
                if msg is None:
                    if not task.cancelled() and task.exception() is not None:
                        raise task.exception()
                    if start is not None:
                        yield (*start, b"", True)
                    return
                if msg["type"] == "http.response.start":
                    start = (msg["status"], [*msg.get("headers", []), (REPLICA_HEADER, self.name.encode()),
                                             (NODE_HEADER, self.node.encode())])
                elif msg["type"] == "http.response.body":
                    body, done = bytes(msg.get("body", b"")), not msg.get("more_body", False)
                    if start is not None:
                        yield (*start, body, done)
                        start = None
                    elif body:
                        yield body
                    if done:
                        return
        finally:
            gone.set()
            if not task.done():
                try:
                    await asyncio.wait_for(task, 10.0)
                except (asyncio.TimeoutError, Exception):  # noqa: BLE001 - the caller is gone either way
                    task.cancel()

    async def call(self, routed: RoutedRequest) -> tuple[int, list, bytes]:
        """`forward` in one answer (status, headers, body): a response that is not streamed."""
        status, headers, parts = 500, [], []
        async for item in self.forward(routed):
            if isinstance(item, tuple):
                status, headers, body, _ = item
                parts.append(body)
            else:
                parts.append(item)
        return status, headers, b"".join(parts)

    async def record_routing_stats(self) -> dict:
        """What the router reads: the block hashes of every cached sequence, the sessions served here, the
        slots and the requests running or waiting (changes only when these change: Serve then broadcasts).
        Async: it runs on the loop that runs `forward`, which updates the sessions."""
        eng = self.state.engine
        blocks: set[int] = set()
        for s in eng.slots:
            toks = list(s.tokens)
            memo = self._slot_hashes.get(s.id)
            if memo is None or memo[0] != toks:
                memo = self._slot_hashes[s.id] = (toks, block_hashes(toks, self.block_tokens))
            blocks.update(memo[1])
        return {"blocks": sorted(blocks), "sessions": list(reversed(self._sessions)), "n_parallel": eng.n_parallel,
                "load": eng.n_busy() + eng.n_waiting(), "replica": self.name, "node": self.node}

    def check_health(self) -> None:
        eng = self.state.engine
        if eng is None or not eng.healthy():
            raise RuntimeError("the pyrt engine is not running")

    def __del__(self):
        state = getattr(self, "state", None)
        if state is not None and state.engine is not None:
            state.engine.stop(grace_s=state.config.shutdown_grace_s)


def _error(status: int, message: str, type_: str, retry: bool = False) -> tuple[int, list, bytes]:
    headers = [(b"content-type", b"application/json")] + ([(b"retry-after", b"1")] if retry else [])
    return status, headers, json.dumps(P.ApiError(status, message, type_).body()).encode()


class _Forward:
    """The ASGI response of a forwarded request: the replica's status, headers and body (chunks as they come
    when it streams); the client going away cancels the replica's request."""

    def __init__(self, handles, routed: RoutedRequest):
        (self.unary, self.streaming), self.routed = handles, routed

    async def _start(self):
        """(generator or None, head) of a replica that answered (head: the whole response when the request does
        not stream); a replica that died first gets one more try."""
        for attempt in (0, 1):
            try:
                if not self.routed.stream:
                    return None, await self.unary.call.remote(self.routed)
                gen = self.streaming.forward.remote(self.routed)
                return gen, await gen.__anext__()
            except RETRYABLE as e:
                if attempt:
                    return None, _error(503, f"the replica serving this request died ({type(e).__name__}); retry",
                                        "unavailable_error", retry=True)
            except (BackPressureError, DeploymentUnavailableError) as e:
                return None, _error(503, f"no replica can take the request now: {e}", "unavailable_error", retry=True)
            except RayTaskError as e:
                return None, _error(500, f"the replica failed: {e}", "server_error")
            except StopAsyncIteration:
                return None, _error(502, "the replica sent no response", "server_error")
        raise AssertionError("unreachable")

    async def __call__(self, scope, receive, send) -> None:
        gen, head = await self._start()
        if gen is None:
            status, headers, body = head
            await send({"type": "http.response.start", "status": status, "headers": headers})
            await send({"type": "http.response.body", "body": body})
            return
        status, headers, first, done = head
        await send({"type": "http.response.start", "status": status, "headers": headers})
        if done:
            await send({"type": "http.response.body", "body": first})
            return
        await send({"type": "http.response.body", "body": first, "more_body": True})
        sse = any(k.lower() == b"content-type" and v.startswith(b"text/event-stream") for k, v in headers)

        async def watch():
            while (await receive())["type"] != "http.disconnect":
                pass
            gen.cancel()

        watcher = asyncio.ensure_future(watch())
        try:
            async for chunk in gen:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
        except RETRYABLE as e:
            if sse:  # mid-stream: the client sees an error event it can retry on, as a server error
                err = P.ApiError(503, f"the replica serving this stream died ({type(e).__name__}); retry",
                                 "unavailable_error")
                await send({"type": "http.response.body", "body": b"data: " + json.dumps(err.body()).encode() + b"\n\n",
                            "more_body": True})
        except asyncio.CancelledError:
            raise
        except Exception:  # noqa: BLE001 - the client went away (gen cancelled) or the stream broke
            pass
        finally:
            watcher.cancel()
        try:
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        except OSError:
            pass


def _content_length(headers) -> int | None:
    n = headers.get("content-length")
    return int(n) if n is not None and n.isdigit() else None


@serve.ingress()
class PyrtIngress:
    """The HTTP endpoint: computes each request's routing keys (session, prompt block hashes: the model file's
    tokenizer and chat template, no weights) and forwards it to a PyrtReplica."""

    def __init__(self, replicas, model_path: str, chat_template: str | None = None, api_keys: tuple = (),
                 block_tokens: int = BLOCK_TOKENS, max_body_bytes: int = 8 << 20):
        self.handles = (replicas, replicas.options(stream=True))
        self.prompter = Prompter(model_path, chat_template)
        self.api_keys = list(api_keys)
        self.block_tokens = block_tokens
        self.max_body_bytes = max_body_bytes

    def __serve_build_asgi_app__(self):
        limit = self.max_body_bytes

        async def forward(request):
            n = _content_length(request.headers)
            if n is not None and n > limit:
                return _Replied(*_error(413, f"request body larger than {limit} bytes", "invalid_request_error"))
            body = bytearray()
            async for chunk in request.stream():
                body += chunk
                if len(body) > limit:
                    return _Replied(*_error(413, f"request body larger than {limit} bytes", "invalid_request_error"))
            path = request.scope["path"]
            root = request.scope.get("root_path", "")
            if root and path.startswith(root):
                path = path[len(root):] or "/"
            session, blocks, stream = routing_keys(self.prompter, path, bytes(body), request.headers,
                                                   self.block_tokens)
            client = request.scope.get("client")
            routed = RoutedRequest(request.method, path, request.scope.get("query_string", b""),
                                   list(request.headers.raw), bytes(body), session, blocks,
                                   tuple(client) if client else None, stream)
            return _Forward(self.handles, routed)

        methods = ["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD"]
        app = Starlette(routes=[Route("/{path:path}", forward, methods=methods)])
        app.add_middleware(_Auth, keys=self.api_keys)
        return app


class _Replied:
    def __init__(self, status: int, headers: list, body: bytes):
        self.status, self.headers, self.body = status, headers, body

    async def __call__(self, scope, receive, send) -> None:
        await send({"type": "http.response.start", "status": self.status, "headers": self.headers})
        await send({"type": "http.response.body", "body": self.body})


def deployment(model: str | None = None, *, replicas: int = 2, threads: int = 1, n_parallel: int = 4,
               n_ctx: int = 8192, load_kw: dict | None = None, slot_save_path: str | None = None,
               session_states: bool = True, chat_template: str | None = None, alias: str | None = None,
               api_keys=(), timeout_s: float | None = 600.0, max_queue: int = 256, cache_ram_mib: int = 0,
               max_body_bytes: int = 8 << 20, block_tokens: int = BLOCK_TOKENS, stats_period_s: float = 1.0,
               max_load: int | None = None, min_match: float = 0.5, max_ongoing_requests: int | None = None, ingress_replicas: int = 1,
               health_check_period_s: float = 5.0, max_replicas_per_node: int | None = None,
               request_router_class=PrefixSessionRouter, replica_options: dict | None = None,
               name: str = "pyrt"):
    """The Ray Serve application of `replicas` pyrt engines behind one OpenAI-compatible endpoint
    (`serve.run(deployment(...), route_prefix="/")`).

    threads: CPUs (Numba threads) per replica. n_parallel, n_ctx, load_kw (pyrt.runtime.llm.load's other
    keywords): each replica's engine; the model file is mapped (use_mmap=True) unless load_kw says
    use_mmap=False, so that replicas on one host share one copy of the weights. slot_save_path: a folder
    every replica reads and writes (the same path on every host: shared storage), for /slots and, with
    session_states, session migration. max_load: the in-flight requests at which a replica counts as
    overloaded (default: its slots); min_match: the fraction of a prompt's token blocks a replica must hold
    to draw it (PrefixSessionRouter); max_ongoing_requests: Ray's hard cap per replica (default
    4 * n_parallel). request_router_class: Ray Serve's router for the replicas
    (a class or its import path; Ray's "ray.serve._private.request_router:PowerOfTwoChoicesRequestRouter" routes
    on load alone). replica_options: more Ray Serve deployment options for the replicas (autoscaling_config,
    placement_group_bundles, ...; they override these). The model file must be at `model` on every host."""
    if model is None:
        from ...default_model import default_model_path
        model = default_model_path()
    model = os.path.abspath(model)
    if slot_save_path is not None:
        slot_save_path = os.path.abspath(slot_save_path)
    server_kw = dict(model_alias=alias or os.path.basename(model), api_keys=[], slot_save_path=slot_save_path,
                     chat_template=chat_template, timeout_s=timeout_s, max_body_bytes=max_body_bytes,
                     session_states=bool(session_states and slot_save_path))
    load_kw = dict(load_kw or {})
    load_kw.update(n_ctx=n_ctx, n_threads=threads)
    if load_kw.get("use_mmap") is None:  # replicas on one host share the page cache's copy of a mapped file
        load_kw["use_mmap"] = True
    router = RequestRouterConfig(
        request_router_class=request_router_class,
        request_router_kwargs={"max_load": max_load, "min_match": min_match}
        if request_router_class is PrefixSessionRouter else {},
        request_routing_stats_period_s=stats_period_s,
        request_routing_stats_timeout_s=max(10.0, 10 * stats_period_s))
    opts = dict(name=f"{name}-replica", num_replicas=replicas, ray_actor_options={"num_cpus": threads},
                max_ongoing_requests=max_ongoing_requests or 4 * n_parallel, request_router_config=router,
                health_check_period_s=health_check_period_s, graceful_shutdown_timeout_s=30.0)
    if max_replicas_per_node is not None:
        opts["max_replicas_per_node"] = max_replicas_per_node
    opts.update(replica_options or {})
    if "autoscaling_config" in opts:
        opts.pop("num_replicas")
    replica = serve.deployment(PyrtReplica).options(**opts)
    ingress = serve.deployment(PyrtIngress).options(
        name=f"{name}-ingress", num_replicas=ingress_replicas, ray_actor_options={"num_cpus": 0},
        max_ongoing_requests=100_000)
    return ingress.bind(replica.bind(model, load_kw, server_kw, n_parallel, max_queue, cache_ram_mib << 20,
                                     block_tokens),
                        model, chat_template, tuple(api_keys), block_tokens, max_body_bytes)


def serve_forever(app, host: str = "127.0.0.1", port: int = 8080, address: str | None = None,
                  name: str = "pyrt", num_cpus: int | None = None) -> int:
    """Start (or join, address="auto" or ray://...) a Ray cluster, run the application on http://host:port
    until SIGINT/SIGTERM, then delete it (and stop the cluster this process started)."""
    import signal
    import threading

    ray.init(address=address, num_cpus=num_cpus if address is None else None, include_dashboard=False,
             log_to_driver=False)
    try:
        serve.start(http_options={"host": host, "port": port}, proxy_location="HeadOnly")
        t0 = time.time()
        serve.run(app, name=name, route_prefix="/", blocking=False)
        print(f"pyrt serve --ray: ready in {time.time() - t0:.1f} s, listening on http://{host}:{port} "
              f"(replica logs: the Ray session's logs/serve folder, /tmp/ray/session_latest on the head)",
              file=sys.stderr, flush=True)
        stop = threading.Event()
        prev = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            while not stop.wait(0.5):
                pass
        finally:
            for sig, h in prev.items():
                signal.signal(sig, h)
        serve.delete(name)
        if address is None:
            serve.shutdown()
    finally:
        ray.shutdown()
    return 0
