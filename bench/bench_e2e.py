"""pp/tg throughput of pyrt and llama.cpp (llama-cpp-python) on the same GGUF, side by side.

llama-bench's vocabulary: ppN = one prompt batch of N random tokens into an empty cache,
tgN = N single-token decodes from an empty cache. Both engines run in this process with the same
thread count, context and KV type, with repetitions interleaved so machine drift hits both.
Also reports pyrt's RSS after load and after generating 256 tokens (weights stay mmapped).

    python bench/bench_e2e.py -m models/bench-llama-q4_0.gguf -t 2 -p 512 -n 128 -r 3
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import time

import numpy as np


def rss_mib(field: str = "VmRSS") -> float:
    """Resident MiB of this process; RssFile = mapped file pages (weights), RssAnon = heap (runtime, KV)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def rss_line() -> str:
    return (f"RSS {rss_mib():.1f} MiB (file-backed {rss_mib('RssFile'):.1f}, "
            f"anonymous {rss_mib('RssAnon'):.1f})")


class PyrtEngine:
    name = "pyrt"

    def __init__(self, path, n_ctx, n_threads, type_k, n_ubatch):
        import pyrt
        t0 = time.perf_counter()
        self.llm = pyrt.load(path, n_ctx=n_ctx, n_batch=max(n_ubatch, 512), n_ubatch=n_ubatch,
                             n_threads=n_threads, type_k=type_k, type_v=type_k, warmup=False)
        self.t_load = time.perf_counter() - t0
        t0 = time.perf_counter()
        self.llm.warmup()
        self.t_compile = time.perf_counter() - t0
        self.n_vocab = self.llm.n_vocab
        self.Batch = pyrt.Batch

    def pp(self, toks):
        ctx = self.llm.ctx
        ctx.clear()
        t0 = time.perf_counter()
        for s in range(0, len(toks), ctx.n_batch):
            chunk = toks[s:s + ctx.n_batch]
            last = s + len(chunk) == len(toks)
            ctx.decode(self.Batch.from_tokens(chunk, pos0=s, logits="last" if last else "none"))
        return time.perf_counter() - t0

    def tg(self, toks):
        ctx = self.llm.ctx
        ctx.clear()
        t0 = time.perf_counter()
        for i, t in enumerate(toks):
            ctx.decode(self.Batch.from_tokens([t], pos0=i))
        return time.perf_counter() - t0


class LlamaCppEngine:
    name = "llama.cpp"

    def __init__(self, path, n_ctx, n_threads, type_k, n_ubatch):
        import llama_cpp as L
        self.L = L
        types = {"f32": 0, "f16": 1, "bf16": 30, "q8_0": 8}
        t0 = time.perf_counter()
        self.llm = L.Llama(model_path=path, n_ctx=n_ctx, n_batch=max(n_ubatch, 512), n_ubatch=n_ubatch,
                           n_threads=n_threads, n_threads_batch=n_threads, type_k=types[type_k],
                           type_v=types[type_k], verbose=False)
        self.t_load = time.perf_counter() - t0
        self.ctx = self.llm._ctx.ctx
        self.n_batch = max(n_ubatch, 512)
        t0 = time.perf_counter()
        self._decode([1], 0)  # warm-up, as llama-bench does
        self.t_compile = time.perf_counter() - t0
        self.n_vocab = self.llm.n_vocab()

    def _clear(self):
        self.L.llama_memory_clear(self.L.llama_get_memory(self.ctx), True)

    def _decode(self, toks, pos0):
        arr = (self.L.llama_token * len(toks))(*toks)
        rc = self.L.llama_decode(self.ctx, self.L.llama_batch_get_one(arr, len(toks)))
        if rc != 0:
            raise RuntimeError(f"llama_decode returned {rc}")
        self.L.llama_synchronize(self.ctx)

    def pp(self, toks):
        self._clear()
        t0 = time.perf_counter()
        for s in range(0, len(toks), self.n_batch):
            self._decode(toks[s:s + self.n_batch], s)
        return time.perf_counter() - t0

    def tg(self, toks):
        self._clear()
        t0 = time.perf_counter()
        for i, t in enumerate(toks):
            self._decode([t], i)
        return time.perf_counter() - t0


def machine_facts() -> str:
    cpu = platform.processor() or "?"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                cwd=os.path.dirname(os.path.abspath(__file__))).stdout.strip()
    except OSError:
        commit = "?"
    return f"cpu: {cpu}, cores: {os.cpu_count()}, python {platform.python_version()}, pyrt commit {commit}"


def main(argv=None):
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

    n_ctx = max(a.n_prompt, a.n_gen, a.rss_tokens) + 16
    print(machine_facts())
    print(f"model: {a.model} ({os.path.getsize(a.model) / 2**20:.1f} MiB), threads: {a.threads}, "
          f"n_ctx: {n_ctx}, n_ubatch: {a.ubatch_size}, KV: {a.cache_type}")
    import pyrt.runtime.llm  # noqa: F401  (numpy, numba, llvmlite: the runtime's own footprint)
    print(f"pyrt: imported: {rss_line()}")
    engines = [PyrtEngine(a.model, n_ctx, a.threads, a.cache_type, a.ubatch_size)]
    py = engines[0]
    print(f"pyrt: load {py.t_load * 1000:.0f} ms, compile/warm-up {py.t_compile * 1000:.0f} ms; "
          f"after load + warm-up: {rss_line()}")
    if a.rss_tokens:
        rng = np.random.default_rng(1)
        py.tg(rng.integers(0, py.n_vocab, a.rss_tokens).tolist())
        print(f"pyrt: after {a.rss_tokens} generated tokens: {rss_line()}")
    if not a.no_llama_cpp:
        try:
            engines.append(LlamaCppEngine(a.model, n_ctx, a.threads, a.cache_type, a.ubatch_size))
            print(f"llama.cpp: load {engines[1].t_load * 1000:.0f} ms, warm-up {engines[1].t_compile * 1000:.0f} ms")
        except ImportError:
            print("llama.cpp: llama-cpp-python is not installed (pip install -e '.[compare]'); pyrt only")

    rng = np.random.default_rng(0)
    results = {e.name: {"pp": [], "tg": []} for e in engines}
    for r in range(a.repetitions):
        ptoks = rng.integers(0, engines[0].n_vocab, a.n_prompt).tolist()
        gtoks = rng.integers(0, engines[0].n_vocab, a.n_gen).tolist()
        for e in engines:
            results[e.name]["pp"].append(a.n_prompt / e.pp(ptoks))
            results[e.name]["tg"].append(a.n_gen / e.tg(gtoks))
        print(f"  rep {r + 1}/{a.repetitions}: " + ", ".join(
            f"{e.name} pp {results[e.name]['pp'][-1]:.2f} tg {results[e.name]['tg'][-1]:.2f}" for e in engines),
            file=sys.stderr)

    def fmt(v):
        m = statistics.mean(v)
        s = statistics.stdev(v) if len(v) > 1 else 0.0
        return m, f"{m:8.2f} ± {s:5.2f}"

    print()
    print(f"| test    | {'pyrt t/s':>16} | {'llama.cpp t/s':>16} | ratio |")
    print("|---------|------------------|------------------|-------|")
    for test, n in (("pp", a.n_prompt), ("tg", a.n_gen)):
        mp, sp = fmt(results["pyrt"][test])
        if "llama.cpp" in results:
            ml, sl = fmt(results["llama.cpp"][test])
            print(f"| {test}{n:<5} | {sp:>16} | {sl:>16} | {mp / ml:5.2f} |")
        else:
            print(f"| {test}{n:<5} | {sp:>16} | {'-':>16} |   -   |")


if __name__ == "__main__":
    main()
