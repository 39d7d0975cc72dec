"""pp/tg throughput of pyrt and llama.cpp (llama-cpp-python) on the same GGUF, side by side: a thin wrapper
over pyrt.bench (the same as `pyrt bench run --compare llama.cpp`) that also reports pyrt's resident memory
after load + warm-up and after generating --rss-tokens tokens (weights stay mmapped: file-backed pages).

    python bench/bench_e2e.py -m models/bench-llama-q4_0.gguf -t 2 -p 512 -n 128 -r 3
"""

from __future__ import annotations

import argparse
import sys

import numpy as np


def _rss(field: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def rss_line() -> str:
    return (f"RSS {_rss('VmRSS'):.1f} MiB (file-backed {_rss('RssFile'):.1f}, anonymous {_rss('RssAnon'):.1f})")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-m", "--model", required=True)
    ap.add_argument("-t", "--threads", type=int, default=2)
    ap.add_argument("-p", "--n-prompt", type=int, default=512)
    ap.add_argument("-n", "--n-gen", type=int, default=128)
    ap.add_argument("-r", "--repetitions", type=int, default=3)
    ap.add_argument("-ub", "--ubatch-size", type=int, default=512)
    ap.add_argument("-ctk", "--cache-type", default="f16")
    ap.add_argument("--no-llama-cpp", action="store_true")
    ap.add_argument("--rss-tokens", type=int, default=256, help="tokens generated for the RSS check (0: skip)")
    a = ap.parse_args(argv)

    from pyrt.bench import report
    from pyrt.bench.engines import open_engines
    from pyrt.bench.facts import machine_facts, model_facts
    from pyrt.bench.roofline import ModelCosts
    from pyrt.bench.run import run_tests

    n_ctx = max(a.n_prompt, a.n_gen, a.rss_tokens) + 16
    log = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    engines = open_engines(a.model, compare=None if a.no_llama_cpp else "llama.cpp", n_ctx=n_ctx,
                           n_batch=max(512, a.ubatch_size), n_ubatch=a.ubatch_size, n_threads=a.threads,
                           type_k=a.cache_type, type_v=a.cache_type, log=log)
    py = engines[0]
    print(f"pyrt: after load + warm-up (both engines): {rss_line()}")
    if a.rss_tokens:
        toks = np.random.default_rng(1).integers(0, py.n_vocab, a.rss_tokens).tolist()
        py.clear()
        for i, t in enumerate(toks):
            py.decode([t], i)
        py.clear()
        print(f"pyrt: after {a.rss_tokens} generated tokens: {rss_line()}")
    res = run_tests(engines, a.n_prompt, a.n_gen, a.repetitions, costs=ModelCosts.from_llm(py.llm), progress=log)
    facts = machine_facts(py.n_threads)
    facts["model"] = a.model
    facts["kv"] = a.cache_type
    sys.stdout.write(report.run_md(res, facts, model_facts(a.model), py.n_threads,
                                   times={e.name: (e.t_load, e.t_compile) for e in engines}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
