"""pyrt on Ray Serve: 2 replicas of a tiny synthetic model on a local two-node cluster (ray.cluster_utils,
one CPU per node, a replica per node), against one pyrt server in-process (the oracle): same answers; a shared
system prompt lands on one replica and is computed once; a session sticks to its replica; an overloaded
replica spills; a replica killed (ray.kill) during a session's turn: the turn is retried on the other replica,
which resumes from the session's state file and evaluates only the new tokens. One cluster for the module."""

from __future__ import annotations

import json
import os
import socket
import threading
import time

import pytest

ray = pytest.importorskip("ray")
pytest.importorskip("ray.serve")
httpx = pytest.importorskip("httpx")
pytest.importorskip("starlette")

import synthetic  # noqa: E402
from pyrt.server import protocol as P  # noqa: E402
from pyrt.server.ray.routing import Prompter, block_hashes, prefix_blocks, routing_keys  # noqa: E402

N_PARALLEL = 2
MAX_LOAD = 3  # requests in flight at which a replica spills (above the slots: the kill test polls a busy one)
N_CTX = 2048
GREEDY = {"temperature": 0.0, "max_tokens": 12, "ignore_eos": True}
KEY = "ray-test-key"


def auth(**extra) -> dict:
    return {"Authorization": f"Bearer {KEY}", **extra}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    d = tmp_path_factory.mktemp("ray_models")
    path = str(d / "llama-q8_0.gguf")
    synthetic.write_model(path, "llama", "Q8_0")
    slots = d / "slots"
    slots.mkdir()
    return {"path": path, "slots": str(slots)}


@pytest.fixture(scope="module")
def oracle(model):
    """One pyrt server (the ASGI app over one Engine) in this process, configured as each replica."""
    from starlette.testclient import TestClient

    from pyrt.engine import Engine
    from pyrt.runtime.llm import load
    from pyrt.server.app import ServerConfig, ServerState, build_app

    def loader():
        return Engine.launch(lambda: load(model["path"], n_ctx=N_CTX, n_threads=1, n_seq_max=N_PARALLEL,
                                          progress=False), N_PARALLEL)

    state = ServerState(ServerConfig(chat_template="chatml"), loader)
    state.load()
    with TestClient(build_app(state)) as c:
        yield c
    state.engine.stop()


@pytest.fixture(scope="module")
def cluster(model):
    from ray import serve
    from ray.cluster_utils import Cluster

    from pyrt.server.ray import deployment

    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    c.add_node(num_cpus=1)
    ray.init(address=c.address, log_to_driver=False)
    port = _free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port}, proxy_location="HeadOnly")
    app = deployment(model["path"], replicas=2, threads=1, n_parallel=N_PARALLEL, n_ctx=N_CTX,
                     chat_template="chatml", slot_save_path=model["slots"], stats_period_s=0.25,
                     max_replicas_per_node=1, health_check_period_s=1.0, max_load=MAX_LOAD, api_keys=[KEY])
    serve.run(app, name="pyrt", route_prefix="/")
    yield {"url": f"http://127.0.0.1:{port}", "cluster": c}
    serve.shutdown()
    ray.shutdown()
    c.shutdown()


def post(url: str, path: str, body: dict, **kw) -> httpx.Response:
    r = httpx.post(url + path, json=body, timeout=120, headers=auth(**kw.pop("headers", {})), **kw)
    assert r.status_code == 200, r.text
    return r


def replica(r: httpx.Response) -> str:
    return r.headers["x-pyrt-replica"]


def chat(system: str, *turns: str) -> list[dict]:
    msgs = [{"role": "system", "content": system}]
    for i, t in enumerate(turns):
        msgs.append({"role": "user" if i % 2 == 0 else "assistant", "content": t})
    return msgs


# -- routing keys, no cluster ---------------------------------------------------------------------------
def test_block_hashes_identify_prefixes():
    a = list(range(1, 70))
    b = a[:40] + [999] + a[41:]
    ha, hb = block_hashes(a, 16), block_hashes(b, 16)
    assert len(ha) == 4 and len(block_hashes(a[:15], 16)) == 0
    assert ha[:2] == hb[:2] and ha[2] != hb[2] and ha[3] != hb[3]  # chained: a difference ends the match
    assert prefix_blocks(hb, set(ha)) == 2 and prefix_blocks(ha, set(ha)) == 4
    assert block_hashes(a, 16) == ha  # deterministic (no per-process salt)


def test_ingress_prompt_ids_are_the_servers(model, oracle):
    """The ingress hashes exactly the ids the replica evaluates (chat template, tools, completions)."""
    pr = Prompter(model["path"], "chatml")
    body = {"messages": chat("be brief", "hello there"), "max_tokens": 1}
    served = oracle.post("/v1/chat/completions", json=body).json()
    ids = pr.prompt_ids("/v1/chat/completions", body)
    assert len(ids) == served["usage"]["prompt_tokens"]
    toks = oracle.post("/tokenize", json={"content": "a b c d", "add_special": True}).json()["tokens"]
    assert pr.prompt_ids("/completion", {"prompt": "a b c d"}) == toks
    s, blocks, stream = routing_keys(pr, "/v1/chat/completions",
                                     json.dumps({**body, "user": "u1", "stream": True}).encode(), {}, 4)
    assert s == P.session_file("u1") and blocks == block_hashes(ids, 4) and stream
    assert routing_keys(pr, "/v1/models", b"", {"x-session-id": "s"}, 4) == (P.session_file("s"), [], False)
    assert routing_keys(pr, "/v1/completions", b"not json", {}, 4) == (None, [], False)


# -- the routing policy, no cluster ----------------------------------------------------------------------
class _Replica:
    def __init__(self, name, stats=None):
        self.replica_id, self.routing_stats = name, stats or {}


class _QueueLens:
    def __init__(self, lens):
        self.lens = lens

    def get(self, rid):
        return self.lens.get(rid)


def _policy(replicas, queue=None, **kw):
    """PrefixSessionRouter's policy without Ray's router machinery (its queue-length cache faked)."""
    from pyrt.server.ray.router import PrefixSessionRouter

    class Policy(PrefixSessionRouter):
        def __init__(self):  # the framework's __init__ (metrics, handles) is not needed by the policy
            self.initialize_state(**kw)

        @property
        def replica_queue_len_cache(self):
            return _QueueLens(queue or {})

    return Policy()


def _pending(routed, rid="r"):
    from types import SimpleNamespace
    return SimpleNamespace(args=[routed], kwargs={}, metadata=SimpleNamespace(internal_request_id=rid))


def _req(blocks=(), session=None):
    from pyrt.server.ray.routing import RoutedRequest
    return RoutedRequest("POST", "/v1/completions", b"", [], b"{}", session, list(blocks))


def _choose(policy, replicas, routed):
    import asyncio
    return asyncio.run(policy.choose_replicas(replicas, _pending(routed)))


def test_router_policy_session_prefix_spill_balance():
    h = block_hashes(list(range(1, 100)), 16)  # 6 blocks
    a, b = _Replica("A", {"n_parallel": 2}), _Replica("B", {"n_parallel": 2, "blocks": h[:4]})
    both = [a, b]
    p = _policy(both)
    # the longest cached prefix, if it is at least min_match of the prompt
    assert _choose(p, both, _req(h)) == [[b], [a]]
    assert len(_choose(p, both, _req(h[:1] + [1, 2, 3, 4, 5]))[0]) == 2  # 1 of 6 blocks: balance
    # no keys: both replicas, in either order (the framework takes the shorter queue, the first of equals)
    orders = {tuple(r.replica_id for r in _choose(p, both, _req())[0]) for _ in range(64)}
    assert orders == {("A", "B"), ("B", "A")}
    # what this router sent counts before the replica reports it; a session beats a prefix
    p.on_request_routed(_pending(_req([7, 8, 9], session="s"), "q1"), "A", None)
    assert _choose(p, both, _req([7, 8, 9]))[0] == [a]
    assert _choose(p, both, _req(h, session="s"))[0] == [a]
    p.on_request_completed("A", "q1")
    # a session another router sent: from the replica's report; what this router sent last comes first
    c = _Replica("C", {"sessions": ["t", "s"]})
    assert _choose(p, [a, b, c], _req(h, session="t"))[0] == [c]
    assert _choose(p, [a, b, c], _req(h, session="s"))[0] == [a]
    # overloaded (its slots in flight) while another has fewer: spill to the others, it comes last
    busy = _policy(both, queue={"B": 2, "A": 1})
    assert _choose(busy, both, _req(h)) == [[a], [b]] and busy.decisions["spill"] == 1
    full = _policy(both, queue={"B": 2, "A": 2})
    assert _choose(full, both, _req(h))[0] == [b]  # everyone as busy: the cache wins
    # max_load and min_match from request_router_kwargs
    assert _choose(_policy(both, queue={"B": 2}, max_load=3), both, _req(h))[0] == [b]
    assert len(_choose(_policy(both, min_match=0.9), both, _req(h))[0]) == 2
    # the local record expires after local_ttl_s
    old = _policy(both, local_ttl_s=-1.0)
    old.on_request_routed(_pending(_req([7, 8, 9])), "A", None)
    assert len(_choose(old, both, _req([7, 8, 9]))[0]) == 2


# -- the cluster --------------------------------------------------------------------------------------------
def test_replicas_on_two_nodes_answer_as_one_server(cluster, oracle):
    url = cluster["url"]
    seen = set()
    for i, q in enumerate(("hello", "the tensor", "a kernel thread", "one two three")):
        body = {"messages": chat(f"system {i}", q), **GREEDY}
        r = post(url, "/v1/chat/completions", body)
        seen.add(replica(r))
        want = oracle.post("/v1/chat/completions", json=body).json()
        got = r.json()
        assert got["choices"][0]["message"]["content"] == want["choices"][0]["message"]["content"]
        assert got["usage"]["prompt_tokens"] == want["usage"]["prompt_tokens"]
        body = {"prompt": f"text number {i} goes", "n_predict": 10, "temperature": 0, "ignore_eos": True}
        assert post(url, "/completion", body).json()["content"] == oracle.post("/completion", json=body).json()["content"]
    # streaming through the ingress and the replica: the same text
    body = {"messages": chat("stream", "go"), **GREEDY, "stream": True}
    text = ""
    with httpx.stream("POST", url + "/v1/chat/completions", json=body, timeout=120, headers=auth()) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        for line in r.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                for ch in json.loads(line[6:])["choices"]:
                    text += ch["delta"].get("content") or ""
    want = oracle.post("/v1/chat/completions", json={**body, "stream": False}).json()
    assert text == want["choices"][0]["message"]["content"]
    # errors come back from the replica unchanged
    r = httpx.post(url + "/v1/chat/completions", json={"messages": []}, timeout=60, headers=auth())
    assert r.status_code == 400 and "messages" in r.json()["error"]["message"]
    # API keys are checked at the endpoint (health and models stay open)
    r = httpx.post(url + "/v1/chat/completions", json={"messages": chat("s", "q"), **GREEDY}, timeout=60)
    assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"
    assert httpx.get(url + "/v1/models", timeout=60).status_code == 200
    # the replicas run on the two nodes
    assert len(seen) == 2 or len({replica(post(url, "/v1/chat/completions", {"messages": chat(f"x{i}", "y"), **GREEDY}))
                                  for i in range(8)} | seen) == 2
    nodes = {httpx.get(url + "/health", timeout=30).headers["x-pyrt-node"] for _ in range(16)}
    assert len(nodes) == 2 and len(cluster["cluster"].list_all_nodes()) == 2


def test_shared_system_prompt_lands_on_one_replica_and_is_computed_once(cluster):
    url = cluster["url"]
    system = "You are a model. " + " ".join(f"rule {i} is the number {i}." for i in range(30))
    n_sys = len(httpx.post(url + "/tokenize", json={"content": system}, timeout=60, headers=auth()).json()["tokens"])
    outs = [post(url, "/v1/chat/completions", {"messages": chat(system, q), **GREEDY})
            for q in ("hello", "the tensor", "a kernel thread", "four", "five")]
    assert len({replica(r) for r in outs}) == 1
    first, rest = outs[0].json(), [r.json() for r in outs[1:]]
    assert first["usage"]["prompt_tokens_details"]["cached_tokens"] < n_sys
    for o in rest:
        cached = o["usage"]["prompt_tokens_details"]["cached_tokens"]
        assert cached >= n_sys
        assert o["timings"]["prompt_n"] == o["usage"]["prompt_tokens"] - cached


def _conversation(url, session: str, system: str, n_turns: int, max_tokens: int = 8):
    turns, out = [], []
    for t in range(n_turns):
        turns.append(f"question {t} of {session}")
        r = post(url, "/v1/chat/completions", {"messages": chat(system, *turns), "temperature": 0.0,
                                                 "max_tokens": max_tokens, "ignore_eos": True},
                 headers={"X-Session-Id": session})
        turns.append(r.json()["choices"][0]["message"]["content"])
        out.append(r)
    return out


def test_sessions_stick_to_their_replica(cluster):
    url = cluster["url"]
    for k in range(3):
        rs = _conversation(url, f"sticky-{k}", f"short system {k}", 3)
        assert len({replica(r) for r in rs}) == 1
        for prev, r in zip(rs, rs[1:]):
            # each turn reuses the previous turn's prompt from that replica's cache
            assert r.json()["usage"]["prompt_tokens_details"]["cached_tokens"] >= prev.json()["usage"]["prompt_tokens"]
    # the session field and `user` are session ids too
    a = [post(url, "/v1/chat/completions", {"messages": chat("u", f"q{i}"), **GREEDY, "user": "alice"})
         for i in range(3)]
    assert len({replica(r) for r in a}) == 1


def test_overloaded_replica_spills_to_the_other(cluster):
    url = cluster["url"]
    first = _conversation(url, "busy", "spill system", 1)[0]
    home = replica(first)
    long = {"messages": chat("spill system", "question 0 of busy"), "temperature": 0.0, "max_tokens": 1500,
            "ignore_eos": True, "stream": True}
    started, release, errors = [], threading.Event(), []

    def hold():
        try:
            with httpx.stream("POST", url + "/v1/chat/completions", json=long, timeout=120,
                              headers=auth(**{"X-Session-Id": "busy"})) as r:
                started.append(replica(r))
                release.wait(60)
        except Exception as e:  # noqa: BLE001 - reported by the assertion below
            errors.append(e)

    ts = [threading.Thread(target=hold) for _ in range(MAX_LOAD)]
    for t in ts:
        t.start()
    try:
        t0 = time.time()
        while len(started) < MAX_LOAD and not errors and time.time() - t0 < 60:
            time.sleep(0.02)
        assert not errors and started == [home] * MAX_LOAD
        # the session's replica has max_load requests in flight: the next turn goes to the other one
        r = post(url, "/v1/chat/completions", {"messages": chat("spill system", "question 0 of busy"), **GREEDY},
                 headers={"X-Session-Id": "busy"})
        assert replica(r) != home
    finally:
        release.set()
        for t in ts:
            t.join(120)


def test_killed_replica_session_resumes_on_the_other(cluster, oracle):
    """A turn running on a replica that is killed is retried on the other replica, which restores the
    session's state file (the previous turn) and evaluates only the new tokens; the answer is unchanged."""
    url = cluster["url"]
    system = "migration system prompt. " + " ".join(f"fact {i}." for i in range(20))
    t1 = post(url, "/v1/chat/completions", {"messages": chat(system, "first question"), "temperature": 0.0,
                                             "max_tokens": 8, "ignore_eos": True}, headers={"X-Session-Id": "mig"})
    home = replica(t1)
    n1 = t1.json()["usage"]["prompt_tokens"]
    reply = t1.json()["choices"][0]["message"]["content"]
    body = {"messages": chat(system, "first question", reply, "second question"), "temperature": 0.0,
            "max_tokens": 1800, "ignore_eos": True}
    result = {}

    def turn2():
        result["r"] = httpx.post(url + "/v1/chat/completions", json=body, timeout=180,
                                 headers=auth(**{"X-Session-Id": "mig"}))

    th = threading.Thread(target=turn2)
    th.start()
    # wait until the turn runs on its replica (/slots of the session's replica), then kill that replica
    t0 = time.time()
    while time.time() - t0 < 60:
        r = httpx.get(url + "/slots", headers=auth(**{"X-Session-Id": "mig"}), timeout=30)
        if replica(r) == home and any(s["is_processing"] for s in r.json()):
            break
        time.sleep(0.01)
    else:
        pytest.fail("turn 2 never ran on the session's replica")
    ray.kill(ray.get_actor(home, namespace="serve"), no_restart=True)
    th.join(180)
    r = result["r"]
    assert r.status_code == 200, r.text
    assert replica(r) != home
    j = r.json()
    cached = j["usage"]["prompt_tokens_details"]["cached_tokens"]
    assert cached >= n1  # the first turn came from the state file, not recomputed
    assert j["timings"]["prompt_n"] == j["usage"]["prompt_tokens"] - cached
    # the oracle's first tokens (a restored cache equals a computed one but for the last bits of the KV rows)
    want = oracle.post("/v1/chat/completions", json={**body, "max_tokens": 12}).json()
    assert j["choices"][0]["message"]["content"].startswith(want["choices"][0]["message"]["content"])
    # the session now lives there: its replica counts the restored state
    m = httpx.get(url + "/metrics", headers=auth(**{"X-Session-Id": "mig"}), timeout=30)
    assert replica(m) == replica(r)
    restored = [ln for ln in m.text.splitlines() if ln.startswith("llamacpp:session_states_restored_total")]
    assert restored and float(restored[0].split()[1]) >= 1


def test_killed_replica_ends_its_stream_with_a_retryable_error(cluster):
    url = cluster["url"]
    body = {"messages": chat("stream to kill", "go"), "temperature": 0.0, "max_tokens": 1800, "ignore_eos": True,
            "stream": True}
    events = []
    with httpx.stream("POST", url + "/v1/chat/completions", json=body, timeout=180,
                      headers=auth(**{"X-Session-Id": "killed-stream"})) as r:
        assert r.status_code == 200
        lines = r.iter_lines()
        for line in lines:
            if line.startswith("data: "):
                events.append(line[6:])
                if len(events) == 3:
                    break
        ray.kill(ray.get_actor(replica(r), namespace="serve"), no_restart=True)
        events += [line[6:] for line in lines if line.startswith("data: ")]
    last = json.loads(events[-1])
    assert last["error"]["code"] == 503 and "retry" in last["error"]["message"]
    assert "[DONE]" not in events
    # Ray replaces the killed replicas: two run again and answer
    from ray import serve
    t0 = time.time()
    while time.time() - t0 < 120:
        st = serve.status().applications["pyrt"].deployments["pyrt-replica"]
        if st.replica_states.get("RUNNING", 0) == 2 and sum(st.replica_states.values()) == 2:
            break
        time.sleep(0.5)
    else:
        pytest.fail(f"the killed replicas were not replaced: {st.replica_states}")
    # the router learns of the new replica shortly after Serve reports it running: both answer within a minute
    seen, n, t0 = set(), 0, time.time()
    while len(seen) < 2 and time.time() - t0 < 60:
        seen.add(replica(post(url, "/v1/chat/completions", {"messages": chat(f"after {n}", "q"), **GREEDY})))
        n += 1
    assert len(seen) == 2, f"only {seen} answered {n} requests"


def test_cli_ray_flags_are_checked_before_ray_starts(model):
    import subprocess
    import sys
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))
    r = subprocess.run([sys.executable, "-m", "pyrt.cli", "serve", "--ray", "--replicas", "0", "-m", model["path"]],
                       env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and "--replicas must be in [1, 1024]" in r.stderr
