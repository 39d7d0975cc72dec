"""`pyrt bench serve`: a load benchmark for any OpenAI-compatible server (pyrt serve, llama-server, vLLM):
prompts of a given token length, Poisson arrivals or a fixed concurrency, a shared-prefix workload, and
TTFT / TPOT / ITL / end-to-end latency, throughput and the prompt tokens each server evaluated or reused.

Surface layer: an HTTP client (httpx, the `bench-serve` extra) and numpy only; imports nothing of the runtime.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import platform
import random
import time
from dataclasses import asdict, dataclass, field

import numpy as np

from ..errors import PyrtError



class BenchServeError(PyrtError):
    """The server could not be benchmarked (warm-up failed, /tokenize broke off)."""


ENDPOINTS = ("/v1/completions", "/v1/chat/completions", "/completion")

# Common English words: one token each (after a space) in the usual BPE/SentencePiece vocabularies, so a prompt
# of n words is close to n tokens even when the server has no /tokenize to make it exact.
WORDS = (
    "time year people way day man thing woman life child world school state family student group country "
    "problem hand part place case week company system program question work government number night point "
    "home water room mother area money story fact month lot right study book eye job word business issue side "
    "kind head house service friend father power hour game line end member law car city community name "
    "president team minute idea kid body information back parent face others level office door health person "
    "art war history party result change morning reason research girl guy moment air teacher force education "
    "foot boy age policy music market sense nation plan college interest death experience effect class control "
    "care field development role effort rate heart drug show leader light voice wife police mind price report "
    "decision son view relationship town road arm difference value building action model season society tax "
    "director position player record paper space ground form event official matter center couple site project "
    "activity star table need court oil situation cost industry figure street image phone data picture practice "
    "piece land product doctor wall patient worker news test movie north love support technology step baby "
    "computer type attention film tree source organization hair window evidence population truth song energy "
    "garden river animal summer stone bridge winter island forest train letter color bread apple glass chair "
    "cloud ocean horse paint farm dinner metal sugar salt cheese flower engine plate coffee"
).split()

SHORT_WORDS = [w for w in WORDS if len(w) <= 4]


def _percentile(xs, q: float) -> float | None:
    return float(np.percentile(np.asarray(xs, dtype=np.float64), q)) if len(xs) else None


def _mean(xs) -> float | None:
    return float(np.mean(np.asarray(xs, dtype=np.float64))) if len(xs) else None


@dataclass
class Prompt:
    """One request's input: text (completions) or system + user messages (chat), with its token counts."""
    text: str  # the whole prompt: prefix + suffix
    prefix: str  # the group's shared system prompt ("" outside the shared-prefix mode)
    suffix: str
    prompt_len: int  # tokens of the whole prompt (the server's tokenizer when it has /tokenize)
    output_len: int
    group: int | None = None


@dataclass
class RequestResult:
    """What one request measured; times in seconds from the benchmark start (perf_counter)."""
    index: int
    ok: bool = False
    error: str = ""
    group: int | None = None
    prompt_len: int = 0
    output_tokens: int = 0  # the server's usage.completion_tokens, else the number of content chunks
    start: float = 0.0
    ttft: float | None = None
    latency: float | None = None  # end-to-end
    itl: list = field(default_factory=list)  # gaps between successive content chunks
    prompt_tokens: int | None = None  # as the server counts them (BOS included)
    prompt_eval: int | None = None  # prompt tokens the server computed
    prompt_cached: int | None = None  # prompt tokens it took from its cache
    text: str = ""

    @property
    def tpot(self) -> float | None:
        if self.ttft is None or self.latency is None or self.output_tokens < 2:
            return None
        return (self.latency - self.ttft) / (self.output_tokens - 1)


@dataclass
class RunConfig:
    base_url: str
    endpoint: str = "/v1/completions"
    model: str | None = None
    num_prompts: int = 16
    input_len: int = 128
    output_len: int = 64
    request_rate: float = math.inf  # requests/s of the Poisson process; inf: all at t=0
    max_concurrency: int | None = None
    shared_prefix_len: int = 0
    num_groups: int = 1
    ignore_eos: bool = True
    temperature: float = 0.0
    seed: int = 0
    timeout: float = 600.0
    api_key: str | None = None
    extra_body: dict = field(default_factory=dict)
    extra_body_fraction: float = 1.0  # share of the requests that get extra_body (a mixed workload)
    label: str = ""


# ---- prompts ---------------------------------------------------------------------------------------------------

class Tokenizer:
    """Counts tokens with the server's POST /tokenize (llama-server and pyrt serve: {"content"} -> {"tokens"},
    special tokens not added), or approximates one token per word when the server has none."""

    def __init__(self, client, base_url: str, headers: dict):
        self.client, self.url, self.headers = client, base_url.rstrip("/") + "/tokenize", headers
        self.exact: bool | None = None

    async def count(self, text: str) -> int:
        if self.exact is not False:
            try:
                r = await self.client.post(self.url, json={"content": text}, headers=self.headers)
                if r.status_code == 200 and isinstance(r.json().get("tokens"), list):
                    self.exact = True
                    return len(r.json()["tokens"])
                err = f"HTTP {r.status_code}"
            except Exception as e:  # noqa: BLE001 - no usable /tokenize: approximate from here on
                err = f"{type(e).__name__}: {e}"
            if self.exact:  # one prompt set never mixes exact and approximate counts
                raise BenchServeError(f"{self.url} answered before and failed now ({err})")
            self.exact = False
        return len(text.split())


async def _fit_words(tok: Tokenizer, rng: random.Random, n_tokens: int, head: str = "") -> tuple[list, int]:
    """Random words whose text (after `head`) is n_tokens tokens, in a few rounds of adding or dropping words;
    returns the words and the token count of head + words as measured. A round changes the word count by the
    token difference divided by the tokens per word measured so far (a vocabulary that splits English words
    into several tokens would otherwise overshoot by more each round), the last rounds by short words one at
    a time."""
    words = [rng.choice(WORDS) for _ in range(n_tokens)]
    base = await tok.count(head) if head else 0

    async def count() -> int:
        return await tok.count(head + " " + " ".join(words)) if head else await tok.count(" ".join(words))

    n = await count()
    for rnd in range(16):
        diff = base + n_tokens - n
        if diff == 0 or not tok.exact:
            break
        per_word = max(1.0, (n - base) / max(1, len(words)))
        k = max(1, int(abs(diff) / per_word)) if rnd < 8 else 1
        if diff > 0:
            pool = WORDS if rnd == 0 else SHORT_WORDS
            words += [rng.choice(pool) for _ in range(k)]
        else:
            del words[max(1, len(words) - k):]
        n = await count()
    return words, n


async def make_prompts(tok: Tokenizer, cfg: RunConfig, salt: str = "") -> list[Prompt]:
    """num_prompts random prompts of input_len tokens; in the shared-prefix mode request i belongs to group
    i % num_groups and its prompt is that group's shared_prefix_len-token prefix plus input_len own tokens.
    The words depend on cfg.seed and salt only."""
    rng = random.Random(f"{cfg.seed}/{salt}")
    prefixes = []
    if cfg.shared_prefix_len > 0:
        for _ in range(cfg.num_groups):
            words, _ = await _fit_words(tok, rng, cfg.shared_prefix_len)
            prefixes.append(" ".join(words))
    out = []
    for i in range(cfg.num_prompts):
        if prefixes:
            g = i % cfg.num_groups
            words, n = await _fit_words(tok, rng, cfg.input_len, head=prefixes[g])
            suffix = " ".join(words)
            out.append(Prompt(prefixes[g] + " " + suffix, prefixes[g], suffix, n, cfg.output_len, g))
        else:
            words, n = await _fit_words(tok, rng, cfg.input_len)
            text = " ".join(words)
            out.append(Prompt(text, "", text, n, cfg.output_len))
    return out


# ---- requests --------------------------------------------------------------------------------------------------

def gets_extra_body(cfg: RunConfig, index: int) -> bool:
    """Whether request `index` carries extra_body: spread evenly, round(n * fraction) of any first n."""
    f = cfg.extra_body_fraction
    return bool(cfg.extra_body) and int((index + 1) * f + 0.5) > int(index * f + 0.5)


def request_body(cfg: RunConfig, p: Prompt, index: int = 0) -> dict:
    """The streaming request for one prompt at cfg.endpoint; ignore_eos is llama-server's and vLLM's field."""
    if cfg.endpoint == "/completion":  # llama-server's own endpoint
        body = {"prompt": p.text, "n_predict": p.output_len, "stream": True, "cache_prompt": True}
    elif cfg.endpoint.endswith("/chat/completions"):
        msgs = ([{"role": "system", "content": p.prefix}] if p.prefix else []) + \
               [{"role": "user", "content": p.suffix}]
        body = {"messages": msgs, "max_tokens": p.output_len, "stream": True,
                "stream_options": {"include_usage": True}}
    else:
        body = {"prompt": p.text, "max_tokens": p.output_len, "stream": True,
                "stream_options": {"include_usage": True}}
    if cfg.model:
        body["model"] = cfg.model
    body["temperature"] = cfg.temperature
    body["seed"] = cfg.seed
    if cfg.ignore_eos:
        body["ignore_eos"] = True
    if gets_extra_body(cfg, index):
        body.update(cfg.extra_body)
    return body


def _chunk_text(obj: dict, endpoint: str) -> str:
    if endpoint == "/completion":
        return obj.get("content") or ""
    choices = obj.get("choices") or []
    if not choices:
        return ""
    c = choices[0]
    if "delta" in c:
        return (c["delta"] or {}).get("content") or ""
    return c.get("text") or ""


def _read_usage(res: RequestResult, obj: dict) -> None:
    """Token counts from an OpenAI usage object and llama.cpp's timings (prompt_n evaluated, cache_n reused)."""
    u = obj.get("usage")
    if isinstance(u, dict):
        if u.get("completion_tokens") is not None:
            res.output_tokens = int(u["completion_tokens"])
        if u.get("prompt_tokens") is not None:
            res.prompt_tokens = int(u["prompt_tokens"])
        d = u.get("prompt_tokens_details")
        if isinstance(d, dict) and d.get("cached_tokens") is not None:
            res.prompt_cached = int(d["cached_tokens"])
            if res.prompt_tokens is not None:
                res.prompt_eval = res.prompt_tokens - res.prompt_cached
    t = obj.get("timings")
    if isinstance(t, dict):  # llama.cpp's counts win: they are what the server computed
        if t.get("prompt_n") is not None:
            res.prompt_eval = int(t["prompt_n"])
        if t.get("cache_n") is not None:
            res.prompt_cached = int(t["cache_n"])
        if res.prompt_tokens is None and res.prompt_eval is not None and res.prompt_cached is not None:
            res.prompt_tokens = res.prompt_eval + res.prompt_cached
        if t.get("predicted_n") is not None and not isinstance(u, dict):
            res.output_tokens = int(t["predicted_n"])


async def send_request(client, cfg: RunConfig, headers: dict, p: Prompt, index: int, t0: float) -> RequestResult:
    """One streaming request; TTFT and ITL from the arrival times of non-empty content chunks."""
    res = RequestResult(index=index, group=p.group, prompt_len=p.prompt_len)
    url = cfg.base_url.rstrip("/") + cfg.endpoint
    start = time.perf_counter()
    res.start = start - t0
    last = end = None
    n_chunks = 0
    text = []
    usage_seen = False
    try:
        async with client.stream("POST", url, json=request_body(cfg, p, index), headers=headers) as r:
            if r.status_code != 200:
                body = (await r.aread()).decode("utf-8", "replace")
                res.error = f"HTTP {r.status_code}: {body[:300]}"
                return res
            async for line in r.aiter_lines():
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                now = time.perf_counter()
                end = now
                if data == "[DONE]":
                    break
                obj = json.loads(data)
                if "error" in obj:
                    res.error = json.dumps(obj["error"])[:300]
                    return res
                piece = _chunk_text(obj, cfg.endpoint)
                if piece:
                    if last is None:
                        res.ttft = now - start
                    else:
                        res.itl.append(now - last)
                    last = now
                    n_chunks += 1
                    text.append(piece)
                if isinstance(obj.get("usage"), dict) or isinstance(obj.get("timings"), dict):
                    usage_seen = usage_seen or isinstance(obj.get("usage"), dict)
                    _read_usage(res, obj)
                if cfg.endpoint == "/completion" and obj.get("stop"):
                    break
            if end is None:
                end = time.perf_counter()
        res.latency = end - start  # the last event of the stream, not the closing of the connection
        if not usage_seen and res.output_tokens == 0:
            res.output_tokens = n_chunks
        res.text = "".join(text)
        res.ok = res.ttft is not None
        if not res.ok:
            res.error = "no content in the stream"
    except Exception as e:  # noqa: BLE001 - a failed request is a result, not a crash of the benchmark
        res.error = f"{type(e).__name__}: {e}"
    return res


def arrival_gaps(n: int, rate: float, seed: int) -> list[float]:
    """Gaps before each of n requests of a Poisson process of `rate` requests/s (exponential gaps, the first
    request at t=0); all zero for an infinite rate."""
    if math.isinf(rate):
        return [0.0] * n
    if rate <= 0:
        raise ValueError(f"request rate must be > 0, got {rate}")
    rng = np.random.default_rng(seed)
    gaps = rng.exponential(1.0 / rate, size=n)
    gaps[0] = 0.0
    return [float(g) for g in gaps]


async def _run_async(cfg: RunConfig, warmup: int, progress=None) -> dict:
    import httpx
    headers = {"Authorization": f"Bearer {cfg.api_key}"} if cfg.api_key else {}
    n_conn = max(cfg.num_prompts if cfg.max_concurrency is None else cfg.max_concurrency, 1) + 4
    limits = httpx.Limits(max_connections=n_conn, max_keepalive_connections=n_conn)
    async with httpx.AsyncClient(timeout=httpx.Timeout(cfg.timeout), limits=limits) as client:
        tok = Tokenizer(client, cfg.base_url, headers)
        prompts = await make_prompts(tok, cfg)
        for w in range(warmup):  # its own random words: shares no prefix with the measured prompts
            wcfg = RunConfig(**{**asdict(cfg), "num_prompts": 1, "shared_prefix_len": 0,
                                "output_len": min(cfg.output_len, 8)})
            wp = (await make_prompts(tok, wcfg, salt=f"warmup{w}"))[0]
            r = await send_request(client, wcfg, headers, wp, -1, time.perf_counter())
            if not r.ok:
                raise BenchServeError(f"warm-up request to {cfg.base_url}{cfg.endpoint} failed: {r.error}")
        gaps = arrival_gaps(cfg.num_prompts, cfg.request_rate, cfg.seed)
        sem = asyncio.Semaphore(cfg.max_concurrency) if cfg.max_concurrency else None
        in_flight = 0
        peak = 0

        async def one(i: int, t0: float) -> RequestResult:
            nonlocal in_flight, peak
            if sem is not None:
                await sem.acquire()
            in_flight += 1
            peak = max(peak, in_flight)
            try:
                return await send_request(client, cfg, headers, prompts[i], i, t0)
            finally:
                in_flight -= 1
                if sem is not None:
                    sem.release()

        t0 = time.perf_counter()
        tasks = []
        for i, g in enumerate(gaps):
            if g > 0:
                await asyncio.sleep(g)
            tasks.append(asyncio.create_task(one(i, t0)))
        results = await asyncio.gather(*tasks)
        duration = time.perf_counter() - t0
    if progress:
        progress(f"{cfg.label or cfg.base_url}: {describe(cfg)}: {sum(r.ok for r in results)}/{len(results)} ok "
                 f"in {duration:.2f} s")
    try:
        load = round(os.getloadavg()[0], 2)  # the machine's 1-minute load at the end of the run
    except OSError:
        load = None
    return {"config": _config_dict(cfg), "tokenizer": "server /tokenize" if tok.exact else "~1 token per word",
            "load_avg_1m": load,
            "peak_concurrency": peak, "metrics": compute_metrics(results, duration),
            "requests": [_request_dict(r) for r in results]}


def _config_dict(cfg: RunConfig) -> dict:
    d = asdict(cfg)
    d.pop("api_key", None)
    d["request_rate"] = "inf" if math.isinf(cfg.request_rate) else cfg.request_rate
    return d


def _request_dict(r: RequestResult) -> dict:
    d = asdict(r)
    d["tpot"] = r.tpot
    d.pop("text", None)
    return d


def compute_metrics(results: list[RequestResult], duration: float) -> dict:
    """vLLM benchmark_serving's metrics over the successful requests: throughputs over the wall time of the
    whole run; TTFT, TPOT (per request: (latency - TTFT) / (output tokens - 1)), ITL (every gap between
    content chunks, all requests pooled) and end-to-end latency as mean / median / p99, in ms."""
    ok = [r for r in results if r.ok]
    n_in = sum(r.prompt_len for r in ok)
    n_out = sum(r.output_tokens for r in ok)
    m = {"completed": len(ok), "failed": len(results) - len(ok), "duration_s": duration,
         "total_input_tokens": n_in, "total_output_tokens": n_out,
         "request_throughput": len(ok) / duration if duration > 0 else None,
         "output_throughput": n_out / duration if duration > 0 else None,
         "total_token_throughput": (n_in + n_out) / duration if duration > 0 else None}
    series = {"ttft": [r.ttft for r in ok], "tpot": [r.tpot for r in ok if r.tpot is not None],
              "itl": [x for r in ok for x in r.itl], "e2el": [r.latency for r in ok]}
    for k, xs in series.items():
        ms = [1000.0 * x for x in xs]
        m[f"mean_{k}_ms"], m[f"median_{k}_ms"], m[f"p99_{k}_ms"] = _mean(ms), _percentile(ms, 50), \
            _percentile(ms, 99)
    ev = [r.prompt_eval for r in ok if r.prompt_eval is not None]
    ca = [r.prompt_cached for r in ok if r.prompt_cached is not None]
    m["prompt_tokens_evaluated"] = sum(ev) if len(ev) == len(ok) and ok else None
    m["prompt_tokens_cached"] = sum(ca) if len(ca) == len(ok) and ok else None
    m["errors"] = sorted({r.error for r in results if not r.ok})[:5]
    return m


def describe(cfg: RunConfig) -> str:
    s = f"conc {cfg.max_concurrency or 'inf'}, rate {cfg.request_rate}, {cfg.num_prompts} x ({cfg.input_len}"
    if cfg.shared_prefix_len:
        s += f" + {cfg.shared_prefix_len} shared in {cfg.num_groups} groups"
    return s + f" -> {cfg.output_len})"


def run_benchmark(cfg: RunConfig, warmup: int = 1, progress=None) -> dict:
    """One load run against cfg.base_url; returns config, metrics and per-request records (JSON-ready)."""
    if cfg.endpoint not in ENDPOINTS:
        raise ValueError(f"endpoint must be one of {', '.join(ENDPOINTS)}, got {cfg.endpoint}")
    if cfg.shared_prefix_len < 0 or cfg.num_groups < 1 or cfg.num_prompts < 1 or cfg.input_len < 1 \
            or cfg.output_len < 1:
        raise ValueError("num_prompts, input_len, output_len, num_groups must be >= 1, shared_prefix_len >= 0")
    if cfg.max_concurrency is not None and cfg.max_concurrency < 1:
        raise ValueError(f"max concurrency must be >= 1, got {cfg.max_concurrency}")
    return asyncio.run(_run_async(cfg, warmup, progress))


def load_points(rates: list[float], concurrencies: list[int | None]) -> list[tuple[float, int | None]]:
    """Every (request rate, max concurrency) pair, concurrency-major."""
    return [(r, c) for c in concurrencies for r in rates]


def bench_serve(servers: list[RunConfig], points: list[tuple[float, int | None]], warmup: int = 1,
                progress=None) -> dict:
    """Runs every load point against each server in turn (one server under load at a time: for each point the
    servers take turns, so slow drift of the machine hits both alike); returns the JSON-ready document.
    Load point k uses seed + k: its prompts are new to a server that kept the earlier points' prompts cached."""
    doc = {"facts": client_facts(), "results": []}
    for cfg in servers:
        doc["results"].append({"label": cfg.label or cfg.base_url, "base_url": cfg.base_url,
                               "endpoint": cfg.endpoint, "server": server_facts(cfg.base_url, cfg.api_key),
                               "runs": []})
    for k, (rate, conc) in enumerate(points):
        for cfg, res in zip(servers, doc["results"]):
            run = run_benchmark(RunConfig(**{**asdict(cfg), "request_rate": rate, "max_concurrency": conc,
                                             "seed": cfg.seed + k}), warmup=warmup, progress=progress)
            res["runs"].append(run)
    return doc


# ---- server facts ----------------------------------------------------------------------------------------------

def server_facts(base_url: str, api_key: str | None = None, timeout: float = 10.0) -> dict:
    """What the server says about itself: /v1/models ids, llama-server's /props (build, slots, context)."""
    import httpx
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    out = {}
    with httpx.Client(timeout=timeout) as c:
        try:
            r = c.get(base_url.rstrip("/") + "/v1/models", headers=headers)
            if r.status_code == 200:
                out["models"] = ", ".join(m.get("id", "?") for m in r.json().get("data", []))
        except Exception:  # noqa: BLE001 - facts are best effort
            pass
        try:
            r = c.get(base_url.rstrip("/") + "/props", headers=headers)
            if r.status_code == 200:
                p = r.json()
                for k in ("build_info", "total_slots", "model_path"):
                    if p.get(k) is not None:
                        out[k] = p[k]
                n_ctx = (p.get("default_generation_settings") or {}).get("n_ctx")
                if n_ctx is not None:
                    out["n_ctx"] = n_ctx
        except Exception:  # noqa: BLE001
            pass
    return out


def client_facts() -> dict:
    """Machine and versions of the measuring side (the servers run on the same machine here)."""
    import httpx

    from .. import __version__
    info = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                k, _, v = line.partition(":")
                k = k.strip()
                if k in ("model name", "cpu family") and k not in info:
                    info[k] = v.strip()
    except OSError:
        pass
    cpu = info.get("model name") or platform.processor() or platform.machine()
    if "cpu family" in info:
        cpu += f" (family {info['cpu family']})"
    try:
        load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        load = "?"
    from .facts import git_commit
    return {"cpu": cpu, "cores": os.cpu_count(), "load_avg": load, "pyrt": __version__, "commit": git_commit(),
            "python": platform.python_version(), "httpx": httpx.__version__}


# ---- tables ----------------------------------------------------------------------------------------------------

def _f(v, fmt: str, width: int) -> str:
    return format(v, fmt).rjust(width) if v is not None else "n/a".rjust(width)


def _mode(c: dict) -> str:
    rate = c["request_rate"]
    s = f"c={c['max_concurrency']}" if c["max_concurrency"] else f"r={rate}"
    if c["max_concurrency"] and rate != "inf":
        s += f" r={rate}"
    if c["shared_prefix_len"]:
        s += f" sp{c['shared_prefix_len']}x{c['num_groups']}"
    return s


def runs_table_md(runs: list[dict]) -> str:
    """One row per run: counts, mean prompt and output tokens, throughputs, the most requests in flight, the
    prompt tokens the server evaluated / reused, and the machine's 1-minute load average after the run."""
    lines = ["| load              | reqs |  ok | in len | out len |  dur s |  req/s | out tok/s | tot tok/s | "
             "peak conc | prompt eval | prompt cached | load 1m |",
             "|-------------------|------|-----|--------|---------|--------|--------|-----------|-----------|"
             "-----------|-------------|---------------|---------|"]
    for run in runs:
        c, m = run["config"], run["metrics"]
        n_in = m["total_input_tokens"] / m["completed"] if m["completed"] else None
        n_out = m["total_output_tokens"] / m["completed"] if m["completed"] else None
        lines.append(f"| {_mode(c):<17} | {c['num_prompts']:4d} | {m['completed']:3d} | {_f(n_in, '6.1f', 6)} | "
                     f"{_f(n_out, '7.1f', 7)} | {m['duration_s']:6.2f} | {_f(m['request_throughput'], '6.3f', 6)} | "
                     f"{_f(m['output_throughput'], '9.2f', 9)} | {_f(m['total_token_throughput'], '9.2f', 9)} | "
                     f"{run['peak_concurrency']:9d} | {_f(m['prompt_tokens_evaluated'], 'd', 11)} | "
                     f"{_f(m['prompt_tokens_cached'], 'd', 13)} | {_f(run.get('load_avg_1m'), '7.2f', 7)} |")
    return "\n".join(lines)


def latency_table_md(runs: list[dict]) -> str:
    """One row per run: TTFT, TPOT, ITL and end-to-end latency as mean / median / p99 in ms."""
    head = "| load              |"
    sep = "|-------------------|"
    for k in ("TTFT", "TPOT", "ITL", "E2EL"):
        for s in ("mean", "med", "p99"):
            head += f" {k + ' ' + s:>10} |"
            sep += "-" * 12 + "|"
    lines = [head, sep]
    for run in runs:
        m = run["metrics"]
        s = f"| {_mode(run['config']):<17} |"
        for k in ("ttft", "tpot", "itl", "e2el"):
            for p in ("mean", "median", "p99"):
                s += f" {_f(m[f'{p}_{k}_ms'], '10.1f', 10)} |"
        lines.append(s)
    return "\n".join(lines)


def _ratio(a, b) -> str:
    return f"{a / b:8.3f}" if a is not None and b not in (None, 0) else "     n/a"


def compare_table_md(a: dict, b: dict) -> str:
    """Per load point of two results (same workloads): aggregate generated tok/s, median TTFT and prompt tokens
    evaluated of both servers and a/b ratios (tok/s ratio > 1 and TTFT ratio < 1: a is better)."""
    la, lb = a["label"], b["label"]
    w = max(len(la), len(lb), 6)
    lines = [f"| load              | {'out tok/s ' + la:>{w + 10}} | {'out tok/s ' + lb:>{w + 10}} |    ratio | "
             f"{'med TTFT ms ' + la:>{w + 12}} | {'med TTFT ms ' + lb:>{w + 12}} |    ratio | "
             f"{'prompt eval ' + la:>{w + 12}} | {'prompt eval ' + lb:>{w + 12}} |",
             f"|-------------------|{'-' * (w + 12)}|{'-' * (w + 12)}|----------|{'-' * (w + 14)}|"
             f"{'-' * (w + 14)}|----------|{'-' * (w + 14)}|{'-' * (w + 14)}|"]
    by_b = {_mode(r["config"]): r for r in b["runs"]}
    for ra in a["runs"]:
        key = _mode(ra["config"])
        rb = by_b.get(key)
        if rb is None:
            continue
        ma, mb = ra["metrics"], rb["metrics"]
        lines.append(f"| {key:<17} | {_f(ma['output_throughput'], '.2f', w + 10)} | "
                     f"{_f(mb['output_throughput'], '.2f', w + 10)} | "
                     f"{_ratio(ma['output_throughput'], mb['output_throughput'])} | "
                     f"{_f(ma['median_ttft_ms'], '.1f', w + 12)} | {_f(mb['median_ttft_ms'], '.1f', w + 12)} | "
                     f"{_ratio(ma['median_ttft_ms'], mb['median_ttft_ms'])} | "
                     f"{_f(ma['prompt_tokens_evaluated'], 'd', w + 12)} | "
                     f"{_f(mb['prompt_tokens_evaluated'], 'd', w + 12)} |")
    return "\n".join(lines)


def document_md(doc: dict) -> str:
    """facts lines, then per server its facts, throughput and latency tables; with two servers the ratios."""
    out = [f"{k}: {v}" for k, v in doc["facts"].items() if v is not None]
    for res in doc["results"]:
        out += ["", f"{res['label']}: {res['base_url']}{res['endpoint']}"]
        out += [f"  {k}: {v}" for k, v in res.get("server", {}).items()]
        out += ["", runs_table_md(res["runs"]), "", latency_table_md(res["runs"])]
        errs = sorted({e for r in res["runs"] for e in r["metrics"]["errors"]})
        if errs:
            out += ["", "errors: " + "; ".join(errs)]
    if len(doc["results"]) == 2:
        a, b = doc["results"]
        out += ["", f"{a['label']} / {b['label']} (out tok/s ratio > 1 and TTFT ratio < 1: {a['label']} better):", "",
                compare_table_md(a, b)]
    return "\n".join(out) + "\n"
