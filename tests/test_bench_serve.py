"""pyrt.bench.serve and `pyrt bench serve` against a fake OpenAI-compatible server on 127.0.0.1 with known
delays: TTFT / TPOT / ITL / latency within tolerance of the injected delays, the three stream formats
(completions, chat, llama-server's /completion), Poisson and all-at-once arrivals, the concurrency cap,
prompt lengths through /tokenize and without it, shared-prefix groups and the cached-token counts.

The fake server is plain asyncio HTTP/1.1 (keep-alive, chunked server-sent events) in its own thread.
"""

from __future__ import annotations

import asyncio
import json
import math
import sys
import threading
import time

import pytest

httpx = pytest.importorskip("httpx")

from pyrt.bench import serve  # noqa: E402

TTFT, ITL = 0.08, 0.02


def fake_tokens(text: str) -> list[str]:
    """The fake tokenizer: a word of more than 6 letters is two tokens, so prompt fitting must adjust."""
    out = []
    for w in text.split():
        out += [w[:6], w[6:]] if len(w) > 6 else [w]
    return out


class FakeServer:
    """Streams max_tokens content chunks: the first TTFT after the request, then one every ITL. Counts the
    generation requests in flight (peak) and reports as cached the longest token prefix shared with any prompt
    it saw before."""

    def __init__(self, ttft=TTFT, itl=ITL, tokenize=True):
        self.ttft, self.itl, self.tokenize = ttft, itl, tokenize
        self.arrivals: list[tuple[float, str, dict]] = []
        self.in_flight = self.peak = 0
        self.seen: list[list[str]] = []
        self.cached_total = 0
        self.loop = asyncio.new_event_loop()
        started = threading.Event()

        def main():
            asyncio.set_event_loop(self.loop)
            self.server = self.loop.run_until_complete(asyncio.start_server(self.handle, "127.0.0.1", 0))
            self.port = self.server.sockets[0].getsockname()[1]
            started.set()
            self.loop.run_forever()

        self.thread = threading.Thread(target=main, daemon=True)
        self.thread.start()
        started.wait(10)
        self.url = f"http://127.0.0.1:{self.port}"

    def close(self):
        async def shutdown():
            self.server.close()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(shutdown(), self.loop).result(5)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()

    def reset(self):
        self.arrivals.clear()
        self.seen.clear()
        self.in_flight = self.peak = 0
        self.cached_total = 0

    async def handle(self, reader, writer):
        try:
            while True:
                line = await reader.readline()
                if not line:
                    break
                method, path, _ = line.decode().split(" ", 2)
                n = 0
                while True:
                    h = await reader.readline()
                    if h in (b"\r\n", b"\n", b""):
                        break
                    k, _, v = h.decode().partition(":")
                    if k.strip().lower() == "content-length":
                        n = int(v)
                body = json.loads(await reader.readexactly(n)) if n else {}
                await self.route(method, path, body, writer)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    async def send_json(self, writer, obj, status=200):
        data = json.dumps(obj).encode()
        writer.write(f"HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {len(data)}\r\n\r\n"
                     .encode() + data)
        await writer.drain()

    async def route(self, method, path, body, writer):
        if path == "/tokenize" and self.tokenize:
            return await self.send_json(writer, {"tokens": list(range(len(fake_tokens(body["content"]))))})
        if path == "/v1/models":
            return await self.send_json(writer, {"data": [{"id": "fake-model"}]})
        if path not in serve.ENDPOINTS:
            return await self.send_json(writer, {"error": {"message": "not found"}}, 404)
        if path == "/v1/chat/completions":
            text = " ".join(m["content"] for m in body["messages"])
        else:
            text = body["prompt"]
        n_out = body.get("max_tokens", body.get("n_predict"))
        warmup = n_out <= 8
        if not warmup:
            self.arrivals.append((time.perf_counter(), path, body))
        toks = fake_tokens(text)
        cached = 0
        for s in self.seen:
            k = 0
            while k < min(len(s), len(toks)) and s[k] == toks[k]:
                k += 1
            cached = max(cached, k)
        self.seen.append(toks)
        if not warmup:
            self.cached_total += cached
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)
        try:
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n")

            async def event(obj):
                data = f"data: {obj if isinstance(obj, str) else json.dumps(obj)}\n\n".encode()
                writer.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
                await writer.drain()

            if path == "/v1/chat/completions":
                await event({"choices": [{"index": 0, "delta": {"role": "assistant", "content": None}}]})
            await asyncio.sleep(self.ttft)
            for i in range(n_out):
                if i:
                    await asyncio.sleep(self.itl)
                if path == "/completion":
                    await event({"content": "tok ", "stop": False})
                elif path == "/v1/chat/completions":
                    await event({"choices": [{"index": 0, "delta": {"content": "tok "}, "finish_reason": None}]})
                else:
                    await event({"choices": [{"index": 0, "text": "tok ", "finish_reason": None}]})
            usage = {"prompt_tokens": len(toks) + 1, "completion_tokens": n_out,
                     "prompt_tokens_details": {"cached_tokens": cached}}
            timings = {"prompt_n": len(toks) + 1 - cached, "cache_n": cached, "predicted_n": n_out}
            if path == "/completion":
                await event({"content": "", "stop": True, "timings": timings})
            elif path == "/v1/chat/completions":
                await event({"choices": [{"index": 0, "delta": {}, "finish_reason": "length"}]})
                await event({"choices": [], "usage": usage})
                await event("[DONE]")
            else:
                await event({"choices": [{"index": 0, "text": "", "finish_reason": "length"}], "usage": usage})
                await event("[DONE]")
            writer.write(b"0\r\n\r\n")
            await writer.drain()
        finally:
            self.in_flight -= 1


@pytest.fixture(scope="module")
def fake():
    s = FakeServer()
    yield s
    s.close()


@pytest.fixture()
def server(fake):
    fake.reset()
    return fake


def _cfg(url, **kw):
    base = dict(base_url=url, num_prompts=6, input_len=24, output_len=10, ignore_eos=True, seed=3)
    return serve.RunConfig(**{**base, **kw})


# ---- metrics ---------------------------------------------------------------------------------------------------

def test_compute_metrics_exact():
    rs = []
    for i in range(4):  # TTFT 0.1*(i+1) s, 5 tokens, gaps of 0.01*(i+1) s
        r = serve.RequestResult(index=i, ok=True, prompt_len=10, output_tokens=5, ttft=0.1 * (i + 1),
                                itl=[0.01 * (i + 1)] * 4, prompt_eval=7, prompt_cached=4)
        r.latency = r.ttft + sum(r.itl)
        rs.append(r)
    rs.append(serve.RequestResult(index=4, ok=False, error="HTTP 503: busy", prompt_len=10))
    m = serve.compute_metrics(rs, 2.0)
    assert (m["completed"], m["failed"]) == (4, 1)
    assert m["total_input_tokens"] == 40 and m["total_output_tokens"] == 20
    assert m["request_throughput"] == pytest.approx(2.0)
    assert m["output_throughput"] == pytest.approx(10.0)
    assert m["total_token_throughput"] == pytest.approx(30.0)
    assert m["mean_ttft_ms"] == pytest.approx(250.0) and m["median_ttft_ms"] == pytest.approx(250.0)
    assert m["p99_ttft_ms"] == pytest.approx(100 + 300 * 0.99 * 1.0, rel=1e-9)  # numpy's linear interpolation
    assert m["mean_tpot_ms"] == pytest.approx(25.0)  # (latency - TTFT) / (5 - 1) = gap
    assert m["mean_itl_ms"] == pytest.approx(25.0) and m["median_itl_ms"] == pytest.approx(25.0)
    assert m["mean_e2el_ms"] == pytest.approx(250.0 + 100.0)
    assert m["prompt_tokens_evaluated"] == 28 and m["prompt_tokens_cached"] == 16
    assert m["errors"] == ["HTTP 503: busy"]


def test_tpot_needs_two_tokens():
    assert serve.RequestResult(index=0, ok=True, output_tokens=1, ttft=0.1, latency=0.1).tpot is None


@pytest.mark.parametrize("endpoint", ["/v1/completions", "/v1/chat/completions", "/completion"])
def test_latencies_match_injected_delays(server, endpoint):
    run = serve.run_benchmark(_cfg(server.url, endpoint=endpoint, max_concurrency=2), warmup=1)
    m = run["metrics"]
    n_out = 10
    assert m["completed"] == 6 and m["failed"] == 0
    assert m["total_output_tokens"] == 6 * n_out
    eps = 0.002  # timer granularity: a sleep never ends early
    assert TTFT - eps <= m["median_ttft_ms"] / 1000 < TTFT + 0.05
    assert ITL - eps <= m["median_itl_ms"] / 1000 < ITL + 0.015
    assert ITL - eps <= m["median_tpot_ms"] / 1000 < ITL + 0.015
    e2e = TTFT + (n_out - 1) * ITL
    assert e2e - eps <= m["median_e2el_ms"] / 1000 < e2e + 0.1
    for r in run["requests"]:
        assert len(r["itl"]) == n_out - 1
        assert r["prompt_len"] == 24
        assert r["prompt_tokens"] == 25 and r["prompt_eval"] + r["prompt_cached"] == 25
    # two at a time, six requests: three waves of one request's latency
    assert 3 * e2e - eps <= m["duration_s"] < 3 * e2e + 0.5
    assert m["output_throughput"] == pytest.approx(60 / m["duration_s"])
    bodies = [b for _, _, b in server.arrivals]
    assert all(b["ignore_eos"] is True and b["stream"] is True for b in bodies)


# ---- arrivals ----------------------------------------------------------------------------------------------------

def test_poisson_gaps():
    g = serve.arrival_gaps(4000, 10.0, seed=1)
    assert g[0] == 0.0 and len(g) == 4000
    mean = sum(g[1:]) / 3999
    sd = math.sqrt(sum((x - mean) ** 2 for x in g[1:]) / 3998)
    assert mean == pytest.approx(0.1, rel=0.05)
    assert sd / mean == pytest.approx(1.0, rel=0.08)  # exponential: coefficient of variation 1
    assert serve.arrival_gaps(5, math.inf, 1) == [0.0] * 5
    assert serve.arrival_gaps(5, 10.0, 2) == serve.arrival_gaps(5, 10.0, 2)


def test_poisson_run_sends_every_request_on_schedule(server):
    rate, n = 25.0, 12
    run = serve.run_benchmark(_cfg(server.url, num_prompts=n, request_rate=rate, output_len=9), warmup=0)
    assert run["metrics"]["completed"] == n and len(server.arrivals) == n
    t = [a[0] for a in server.arrivals]
    span = sum(serve.arrival_gaps(n, rate, 3))
    assert span - 0.005 <= t[-1] - t[0] < span + 0.25
    starts = sorted(r["start"] for r in run["requests"])
    assert starts[-1] - starts[0] == pytest.approx(span, abs=0.2)


def test_all_at_once(fake):
    s = FakeServer(ttft=0.3, itl=0.01)
    try:
        run = serve.run_benchmark(_cfg(s.url, num_prompts=8, output_len=9), warmup=0)
        assert run["metrics"]["completed"] == 8
        assert s.peak == 8 and run["peak_concurrency"] == 8
    finally:
        s.close()


def test_concurrency_cap(server):
    run = serve.run_benchmark(_cfg(server.url, num_prompts=9, max_concurrency=3, output_len=9), warmup=0)
    assert run["metrics"]["completed"] == 9 and len(server.arrivals) == 9
    assert server.peak == 3 and run["peak_concurrency"] == 3


# ---- prompts -----------------------------------------------------------------------------------------------------

def test_prompt_lengths_with_tokenize(server):
    run = serve.run_benchmark(_cfg(server.url, input_len=40, num_prompts=4, output_len=9), warmup=0)
    assert run["tokenizer"] == "server /tokenize"
    assert [len(fake_tokens(b["prompt"])) for _, _, b in server.arrivals] == [40] * 4
    assert run["metrics"]["total_input_tokens"] == 160


def test_prompt_lengths_with_a_tokenizer_of_several_tokens_per_word(server, monkeypatch):
    """A vocabulary that splits words into 2-3 tokens each (the synthetic DeepSeek file's): the lengths still
    converge (adding the token difference as words overshot by more every round)."""
    monkeypatch.setattr(sys.modules[__name__], "fake_tokens", lambda text: [w[i:i + 2] for w in text.split()
                                                                           for i in range(0, len(w), 2)])
    run = serve.run_benchmark(_cfg(server.url, input_len=128, num_prompts=4, output_len=9), warmup=0)
    # every word is >= 2 tokens here, so an odd difference can be off by one
    assert all(abs(r["prompt_len"] - 128) <= 1 for r in run["requests"])


def test_prompt_lengths_without_tokenize():
    s = FakeServer(ttft=0.01, itl=0.001, tokenize=False)
    try:
        run = serve.run_benchmark(_cfg(s.url, input_len=30, num_prompts=3, output_len=9), warmup=0)
        assert run["tokenizer"] == "~1 token per word"
        assert [len(b["prompt"].split()) for _, _, b in s.arrivals] == [30] * 3
        assert [r["prompt_len"] for r in run["requests"]] == [30] * 3
    finally:
        s.close()


def test_shared_prefix_groups(server):
    L, G, n, own = 20, 3, 9, 12
    run = serve.run_benchmark(_cfg(server.url, num_prompts=n, input_len=own, shared_prefix_len=L, num_groups=G,
                                   max_concurrency=1, output_len=9), warmup=0)
    prompts = [fake_tokens(b["prompt"]) for _, _, b in server.arrivals]
    assert [len(p) for p in prompts] == [L + own] * n
    for i in range(n):
        for j in range(n):
            same = prompts[i][:L] == prompts[j][:L]
            assert same == (i % G == j % G)
    assert [r["group"] for r in run["requests"]] == [i % G for i in range(n)]
    m = run["metrics"]
    # each group's first request computes its whole prompt, the other (n - G) reuse at least the prefix
    assert m["prompt_tokens_cached"] == server.cached_total >= (n - G) * L
    assert m["prompt_tokens_evaluated"] == n * (L + own + 1) - m["prompt_tokens_cached"]


def test_shared_prefix_chat_puts_prefix_in_system_message(server):
    serve.run_benchmark(_cfg(server.url, endpoint="/v1/chat/completions", num_prompts=4, shared_prefix_len=16,
                             num_groups=2, output_len=9), warmup=0)
    msgs = [b["messages"] for _, _, b in server.arrivals]
    assert all([m["role"] for m in ms] == ["system", "user"] for ms in msgs)
    systems = sorted(ms[0]["content"] for ms in msgs)
    assert systems[0] == systems[1] != systems[2] == systems[3]


def test_failed_requests_are_counted(server):
    run = serve.run_benchmark(_cfg("http://127.0.0.1:1", num_prompts=2), warmup=0)
    assert run["metrics"]["completed"] == 0 and run["metrics"]["failed"] == 2
    assert run["metrics"]["errors"]


# ---- tables and the CLI ------------------------------------------------------------------------------------------

def test_cli_json_compare_and_merge(server, tmp_path, capsys):
    from pyrt import cli
    out = tmp_path / "a.json"
    rc = cli.main(["bench", "serve", "--base-url", server.url, "--label", "A", "--compare", server.url,
                   "--compare-label", "B", "-n", "4", "--input-len", "16", "--output-len", "9",
                   "--max-concurrency", "1,2", "--ignore-eos", "--json", str(out)])
    stdout = capsys.readouterr().out
    assert rc == 0
    doc = json.loads(out.read_text())
    assert [res["label"] for res in doc["results"]] == ["A", "B"]
    assert [run["config"]["max_concurrency"] for run in doc["results"][0]["runs"]] == [1, 2]
    assert doc["results"][0]["server"]["models"] == "fake-model"
    assert "| c=1 " in stdout and "| c=2 " in stdout and "A / B" in stdout
    assert len(server.arrivals) == 4 * 2 * 2
    # per load point both servers get the same prompts, and each point new ones (none cached from the last)
    sets = [{b["prompt"] for _, _, b in server.arrivals[i:i + 4]} for i in range(0, 16, 4)]
    assert sets[0] == sets[1] and sets[2] == sets[3] and not sets[0] & sets[2]
    # --merge: the tables and ratios of two saved results, without running
    rc = cli.main(["bench", "serve", "--merge", str(out), str(out)])
    stdout = capsys.readouterr().out
    assert rc == 0
    ratio_rows = [ln for ln in stdout.split("A / A")[1].splitlines() if ln.startswith("| c=")]
    assert len(ratio_rows) == 2 and all(ln.count("   1.000 |") == 2 for ln in ratio_rows)


def test_cli_rejects_bad_arguments(capsys):
    from pyrt import cli
    assert cli.main(["bench", "serve", "--max-concurrency", "0"]) != 0
    assert "concurrenc" in capsys.readouterr().err


def test_cli_unreachable_server_is_one_line(capsys):
    from pyrt import cli
    assert cli.main(["bench", "serve", "--base-url", "http://127.0.0.1:1", "-n", "1"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: warm-up request") and "Traceback" not in err


@pytest.mark.parametrize("fraction,n,want", [(0.5, 8, 4), (0.25, 8, 2), (1.0, 5, 5), (0.0, 5, 0), (1 / 3, 9, 3)])
def test_extra_body_fraction_spreads_evenly(fraction, n, want):
    cfg = serve.RunConfig(base_url="http://127.0.0.1:1", extra_body={"response_format": {"type": "json_object"}},
                          extra_body_fraction=fraction)
    p = serve.Prompt(text="a b", prefix="", suffix="a b", prompt_len=2, output_len=4)
    marked = ["response_format" in serve.request_body(cfg, p, i) for i in range(n)]
    assert sum(marked) == want
    if 0 < want < n:  # spread out: no two neighbours both marked when at most half are
        assert not any(a and b for a, b in zip(marked, marked[1:])) or fraction > 0.5
