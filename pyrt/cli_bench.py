"""`pyrt bench sweep | run | membw | serve`: argument parsing and printing for the benchmarks in pyrt.bench.

Thin: the work lives in pyrt.bench (a library user gets the same sweep, runs and tables); this module
maps flags to calls, prints results on stdout and progress on stderr.
"""

from __future__ import annotations

import argparse
import sys

from .errors import InvalidArgumentError
from .formats.cache_types import LLAMA_CPP_CACHE_TYPES

CACHE_TYPES = list(LLAMA_CPP_CACHE_TYPES)


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _common(p: argparse.ArgumentParser, ctx_default: int) -> None:
    p.add_argument("-m", "--model", default=None, help="GGUF file (default: Gemma 3 270M from the [model] extra)")
    p.add_argument("-c", "--ctx-size", type=int, default=ctx_default, help=f"context size (default: {ctx_default})")
    p.add_argument("-b", "--batch-size", type=int, default=2048, help="logical batch size (default: 2048)")
    p.add_argument("-ub", "--ubatch-size", type=int, default=512, help="physical batch size (default: 512)")
    p.add_argument("-t", "--threads", type=int, default=None, help="threads for both engines (default: all cores)")
    p.add_argument("-ctk", "--cache-type-k", default="f16", choices=CACHE_TYPES, help="K cache type (default: f16)")
    p.add_argument("-ctv", "--cache-type-v", default=None, choices=CACHE_TYPES, help="V cache type (default: -ctk)")
    p.add_argument("-fa", "--flash-attn", nargs="?", const="on", default="on", choices=["on", "off", "auto"],
                   help="flash attention for llama.cpp (default: on); pyrt always uses its flash kernel")
    p.add_argument("-mla", "--mla-use", type=int, default=None,
                   help="MLA mode (DeepSeek-V2/V3 files only; an error for other architectures)")
    p.add_argument("-o", "--output", default="md", choices=["md", "jsonl", "csv"], help="output format (default: md)")
    p.add_argument("--compare", default=None, choices=["llama.cpp"],
                   help="run llama.cpp (llama-cpp-python) on the same file beside pyrt, interleaved")
    p.add_argument("--membw", type=float, default=None,
                   help="memory read bandwidth in GB/s for the roofline (default: measure; 0 = skip)")
    p.add_argument("--seed", type=int, default=1234, help="seed of the random tokens (default: 1234)")
    p.add_argument("--no-warmup", action="store_true", help="skip the warm-up decodes (compile then lands in row 1)")
    from .cli import add_device_args, add_mmap_args
    add_mmap_args(p, both="pyrt (and llama.cpp, which follows what pyrt did): ")
    add_device_args(p)


def add_bench_parser(sub) -> None:
    """Adds `bench` with its sweep/run/membw/serve subcommands to pyrt's subparsers."""
    b = sub.add_parser("bench", help="benchmarks: sweep-bench, llama-bench-style runs, memory bandwidth, server load",
                       allow_abbrev=False)
    bs = b.add_subparsers(dest="bench_command", metavar="BENCH")
    s = bs.add_parser("sweep", help="PP/TG speed against the tokens already in the cache (sweep-bench)",
                      allow_abbrev=False)
    _common(s, ctx_default=4096)
    s.add_argument("-n", "--n-predict", type=int, default=-1, help="TG tokens per row (default: ubatch/4)")
    s.add_argument("--sweep-memory", "--memory", action="store_true", dest="memory",
                   help="add the peak RSS (RSS HWM, MiB) column")
    s.add_argument("--tg-rounds", type=int, default=1,
                   help="decode each row's TG tokens in this many chunks, the engines taking turns (default: 1, "
                        "sweep-bench's order: each engine's whole TG run)")
    s.add_argument("--plot", default=None, metavar="FILE.png", help="plot S_PP and S_TG against N_KV (matplotlib)")
    s.add_argument("--jsonl", default=None, metavar="FILE", help="also write the jsonl records to FILE")
    r = bs.add_parser("run", help="llama-bench's pp/tg tests with repetitions", allow_abbrev=False)
    _common(r, ctx_default=0)
    r.add_argument("-p", "--n-prompt", type=int, default=512, help="prompt tokens (default: 512, 0 = skip)")
    r.add_argument("-n", "--n-gen", type=int, default=128, help="generated tokens (default: 128, 0 = skip)")
    r.add_argument("-gp", "--gen-after-prompt", action="append", default=[], type=_pair, metavar="PP,TG",
                   help="llama-bench's -gp: the speed of TG single-token decodes after a prompt of PP tokens "
                        "(test tgTG@ppPP; the prompt is decoded once, untimed; repeatable; -p 0 -n 0 for only these)")
    r.add_argument("-r", "--repetitions", type=int, default=5, help="repetitions (default: 5)")
    _serve_parser(bs)
    m = bs.add_parser("membw", help="memory read bandwidth with a Numba kernel", allow_abbrev=False)
    m.add_argument("-t", "--threads", type=int, default=2, help="threads (default: 2)")
    m.add_argument("--size", type=int, default=None, help="buffer MiB (default: 4x the last-level cache, "
                   "at least 512)")
    m.add_argument("-r", "--repetitions", type=int, default=5, help="best of this many passes (default: 5)")


def _pair(text: str) -> tuple[int, int]:
    parts = text.split(",")
    if len(parts) != 2 or not all(x.strip().isdigit() for x in parts):
        raise argparse.ArgumentTypeError(f"expected two counts PP,TG, got '{text}'")
    return int(parts[0]), int(parts[1])


def _floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x.strip()]


def _concurrencies(text: str | None) -> list[int | None]:
    return [None] if text is None else [int(x) for x in text.split(",") if x.strip()]


def _serve_parser(bs) -> None:
    v = bs.add_parser("serve", help="load benchmark of an OpenAI-compatible server (pyrt serve, llama-server): "
                      "TTFT, TPOT, ITL, latency, throughput", allow_abbrev=False)
    v.add_argument("--base-url", default="http://127.0.0.1:8080", help="server (default: http://127.0.0.1:8080)")
    v.add_argument("--endpoint", default="/v1/completions", choices=["/v1/completions", "/v1/chat/completions",
                                                                    "/completion"],
                   help="streaming endpoint (default: /v1/completions; /completion is llama-server's own)")
    v.add_argument("--model", default=None, help="model name sent in the requests (default: none)")
    v.add_argument("--label", default=None, help="name of the server in the tables (default: the URL)")
    v.add_argument("--compare", default=None, metavar="URL2",
                   help="also measure this server, the two taking turns per load point, and print the ratios")
    v.add_argument("--compare-label", default=None, help="name of the --compare server (default: its URL)")
    v.add_argument("--merge", nargs=2, default=None, metavar=("A.json", "B.json"),
                   help="no run: print the tables and A/B ratios of two saved --json results")
    v.add_argument("-n", "--num-prompts", type=int, default=16, help="requests per load point (default: 16)")
    v.add_argument("--input-len", type=int, default=128, help="prompt tokens per request (default: 128)")
    v.add_argument("--output-len", type=int, default=64, help="max_tokens per request (default: 64)")
    v.add_argument("--request-rate", default="inf",
                   help="Poisson arrival rates in requests/s, comma-separated (default: inf = all at once)")
    v.add_argument("--max-concurrency", default=None,
                   help="caps on requests in flight, comma-separated: one load point each (default: no cap)")
    v.add_argument("--shared-prefix-len", type=int, default=0,
                   help="tokens of a system prompt shared within each group (default: 0, off)")
    v.add_argument("--num-groups", type=int, default=1, help="groups sharing a prefix; request i is in group "
                   "i %% G (default: 1)")
    v.add_argument("--ignore-eos", action="store_true", help="ask for exactly --output-len tokens (ignore_eos)")
    v.add_argument("--temperature", type=float, default=0.0, help="sampling temperature (default: 0, greedy)")
    v.add_argument("--seed", type=int, default=0, help="seed of prompts, arrivals and sampling (default: 0)")
    v.add_argument("--warmup", type=int, default=1, help="short requests before each load point (default: 1)")
    v.add_argument("--extra-body", default=None, metavar="JSON", help="fields merged into every request body")
    v.add_argument("--extra-body-fraction", type=float, default=1.0, metavar="F",
                   help="share of the requests that get --extra-body, spread evenly (default: 1; e.g. 0.5 with a "
                        "response_format gives a mixed constrained/unconstrained workload)")
    v.add_argument("--api-key", default=None, help="Bearer token (default: $OPENAI_API_KEY if set)")
    v.add_argument("--timeout", type=float, default=600.0, help="per-request timeout in seconds (default: 600)")
    v.add_argument("--json", default=None, metavar="FILE", help="also write the results (every request) as JSON")


def _cmd_serve(a) -> int:
    import json
    import os

    from .bench import serve

    if a.merge:
        docs = []
        for path in a.merge:
            with open(path) as fh:
                docs.append(json.load(fh))
        doc = {"facts": docs[0]["facts"], "results": [docs[0]["results"][0], docs[1]["results"][0]]}
        sys.stdout.write(serve.document_md(doc))
        return 0
    try:
        rates = _floats(a.request_rate)
        concs = _concurrencies(a.max_concurrency)
        extra = json.loads(a.extra_body) if a.extra_body else {}
    except ValueError as e:
        raise InvalidArgumentError(f"pyrt bench serve: {e}") from None
    if not isinstance(extra, dict):
        raise InvalidArgumentError("pyrt bench serve: --extra-body must be a JSON object")
    if not 0.0 <= a.extra_body_fraction <= 1.0:
        raise InvalidArgumentError("pyrt bench serve: --extra-body-fraction must be in [0, 1]")
    if any(r <= 0 for r in rates) or any(c is not None and c < 1 for c in concs):
        raise InvalidArgumentError("pyrt bench serve: rates must be > 0 and concurrencies >= 1")
    if min(a.num_prompts, a.input_len, a.output_len, a.num_groups) < 1 or a.shared_prefix_len < 0:
        raise InvalidArgumentError("pyrt bench serve: --num-prompts, --input-len, --output-len, --num-groups "
                                   "must be >= 1 and --shared-prefix-len >= 0")
    base = dict(endpoint=a.endpoint, model=a.model, num_prompts=a.num_prompts, input_len=a.input_len,
                output_len=a.output_len, shared_prefix_len=a.shared_prefix_len, num_groups=a.num_groups,
                ignore_eos=a.ignore_eos, temperature=a.temperature, seed=a.seed, timeout=a.timeout,
                api_key=a.api_key or os.environ.get("OPENAI_API_KEY"), extra_body=extra,
                extra_body_fraction=a.extra_body_fraction)
    servers = [serve.RunConfig(base_url=a.base_url, label=a.label or a.base_url, **base)]
    if a.compare:
        servers.append(serve.RunConfig(base_url=a.compare, label=a.compare_label or a.compare, **base))
    doc = serve.bench_serve(servers, serve.load_points(rates, concs), warmup=a.warmup, progress=_log)
    sys.stdout.write(serve.document_md(doc))
    if a.json:
        with open(a.json, "w") as fh:
            json.dump(doc, fh, indent=1)
    return 0


def _model_path(a) -> str:
    if a.model:
        return a.model
    from .default_model import default_model_path
    return default_model_path()


def _open(a, n_ctx: int):
    from .bench.engines import open_engines
    from .cli import device_of_args, mmap_of_args
    if a.flash_attn == "off":
        _log("pyrt: -fa off: pyrt always uses its flash-attention kernel; the setting applies to llama.cpp only")
    engines = open_engines(_model_path(a), compare=a.compare, n_ctx=n_ctx, n_batch=a.batch_size,
                        n_ubatch=a.ubatch_size, n_threads=a.threads, type_k=a.cache_type_k,
                        type_v=a.cache_type_v or a.cache_type_k, flash_attn=a.flash_attn != "off", mla=a.mla_use,
                        warmup=not a.no_warmup, log=lambda m: _log(f"pyrt: {m}"), use_mmap=mmap_of_args(a),
                        device=device_of_args(a))
    _log(f"pyrt: {engines[0].llm.file.buffer_report()}")
    return engines


def _facts(a, engines) -> dict:
    from .bench.facts import machine_facts, model_facts
    py = engines[0]
    facts = machine_facts(py.n_threads)
    mf = model_facts(_model_path(a))
    facts["model"] = f"{_model_path(a)} ({mf['arch']}, {mf['file_type']}, {mf['size_mib']:.2f} MiB, " \
                     f"{mf['n_params'] / 1e6:.2f} M params)"
    facts["kv"] = f"K {a.cache_type_k}, V {a.cache_type_v or a.cache_type_k}"
    facts["flash_attn"] = ", ".join(f"{e.name} {e.flash_attn}" for e in engines)
    for e in engines[1:]:
        facts["llama_cpp_extra_bufts"] = "on" if e.extra_bufts else f"off ({e.why_no_extra_bufts or 'asked'})"
    if py.device != "cpu":
        facts["pyrt_device"] = py.llm.ctx.backend.describe()
    f = py.llm.file
    if f._data is not None:
        from .io.mapping import huge_page_share
        hp = huge_page_share(f._data)
        if hp is None:
            facts["pyrt_weights"] = "mmap" if f.use_mmap else "read into anonymous memory"
        elif f.use_mmap:  # after the runs: how pyrt's decode saw the weights
            # of the mapped bytes: a range of small folios maps only its touched pages, so the share of the
            # file in 2 MiB pages is the second number, not the percentage
            facts["pyrt_weights"] = (f"mmap, {hp[0]:.0f} MiB mapped, {100 * hp[1]:.0f}% of it in 2 MiB pages "
                                     f"({hp[0] * hp[1]:.0f} of the file's {f.file_size / 2**20:.0f} MiB)")
        else:
            share = min(1.0, hp[0] * hp[1] * 2**20 / f.file_size)
            facts["pyrt_weights"] = f"read into anonymous memory, {100 * share:.0f}% in 2 MiB pages"
        facts["pyrt_weights"] += f"; {f.load_choice}"
    return facts


def _membw(a, threads: int) -> float | None:
    if a.membw is not None:
        return a.membw if a.membw > 0 else None
    from .bench.membw import measure_membw
    from .bench.membw import default_size_mib
    _log(f"pyrt: measuring memory read bandwidth ({default_size_mib()} MiB, best of 5)")
    return measure_membw(None, threads, 5)


def _cmd_sweep(a) -> int:
    from .bench import report
    from .bench.roofline import ModelCosts
    from .bench.sweep import sweep

    if a.tg_rounds < 1:  # before loading anything
        raise InvalidArgumentError(f"--tg-rounds must be >= 1, got {a.tg_rounds}")
    engines = _open(a, a.ctx_size)
    py = engines[0]
    for e in engines:
        _log(f"{e.name}: load {e.t_load * 1000:.0f} ms, compile/warm-up {e.t_compile * 1000:.0f} ms")
    costs = ModelCosts.from_llm(py.llm)
    results = sweep(engines, n_tg=a.n_predict, seed=a.seed, memory=a.memory, costs=costs, progress=_log,
                    tg_rounds=a.tg_rounds)
    bw = _membw(a, py.n_threads)  # after the sweep: its buffer must not raise the RSS high-water mark
    if bw:
        for rows in results.values():
            for r in rows:
                r.tg_bw_frac = r.tg_gbps / bw
    facts = _facts(a, engines)
    facts["membw_gbps"] = round(bw, 2) if bw else None
    params = {"n_kv_max": py.n_ctx, "n_batch": py.n_batch, "n_ubatch": py.n_ubatch, "flash_attn": py.flash_attn,
              "n_threads": py.n_threads}
    times = {e.name: (e.t_load, e.t_compile) for e in engines}
    if a.output == "md":
        text = report.sweep_md(results, params, facts, memory=a.memory, times=times)
    elif a.output == "jsonl":
        text = report.sweep_jsonl(results, params, facts)
    else:
        text = report.sweep_csv(results, params, facts)
    sys.stdout.write(text)
    sys.stdout.flush()
    if a.jsonl:
        with open(a.jsonl, "w") as fh:
            fh.write(report.sweep_jsonl(results, params, facts))
    if a.plot:
        from .bench.plot import plot_sweep
        title = f"{facts['model'].split(' (')[0].rsplit('/', 1)[-1]}, {py.n_threads} threads, ub {py.n_ubatch}, " \
                f"KV {a.cache_type_k}"
        plot_sweep(results, a.plot, title)
        _log(f"pyrt: plot written to {a.plot}")
    return 0


def _cmd_run(a) -> int:
    from .bench import report
    from .bench.roofline import ModelCosts
    from .bench.run import cells_needed, run_tests

    n_ctx = a.ctx_size if a.ctx_size > 0 else max(cells_needed(a.n_prompt, a.n_gen, a.gen_after_prompt), 1)
    engines = _open(a, n_ctx)
    py = engines[0]
    times = {e.name: (e.t_load, e.t_compile) for e in engines}
    for e in engines:
        _log(f"{e.name}: load {e.t_load * 1000:.0f} ms, compile/warm-up {e.t_compile * 1000:.0f} ms")
    costs = ModelCosts.from_llm(py.llm)
    results = run_tests(engines, a.n_prompt, a.n_gen, a.repetitions, seed=a.seed, costs=costs, progress=_log,
                        gp=a.gen_after_prompt)
    facts = _facts(a, engines)
    bw = _membw(a, py.n_threads)
    facts["membw_gbps"] = round(bw, 2) if bw else None
    if a.output == "md":
        from .bench.facts import model_facts
        text = report.run_md(results, facts, model_facts(_model_path(a)), py.n_threads, times=times)
        if bw:
            text += "".join(f"{r.engine} {r.test}: {r.gbps:.2f} GB/s = {100 * r.gbps / bw:.1f}% of membw\n"
                            for r in results if r.gbps is not None)
    elif a.output == "jsonl":
        text = report.run_jsonl(results, {**facts, "load_compile_s": {k: list(v) for k, v in times.items()}})
    else:
        text = report.run_csv(results, facts)
    sys.stdout.write(text)
    return 0


def _cmd_membw(a) -> int:
    from .bench.membw import measure_membw
    from .bench.membw import default_size_mib, llc_mib
    size = a.size or default_size_mib()
    gbps = measure_membw(size, a.threads, a.repetitions)
    llc = llc_mib()
    print(f"membw: {gbps:.2f} GB/s read ({size} MiB buffer, {a.threads} threads, best of {a.repetitions}; "
          f"last-level cache {f'{llc:.0f} MiB' if llc else 'unknown'})")
    return 0


def cmd_bench(a: argparse.Namespace) -> int:
    if a.bench_command is None:
        raise InvalidArgumentError("pyrt bench: choose sweep, run, membw or serve (pyrt bench -h)")
    if a.bench_command == "membw":
        return _cmd_membw(a)
    if a.bench_command == "serve":
        return _cmd_serve(a)
    return _cmd_sweep(a) if a.bench_command == "sweep" else _cmd_run(a)
