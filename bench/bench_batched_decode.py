"""Batched decode scaling: tokens/s of one Context.decode holding the next token of N sequences
(N = 1, 2, 4, 8) against N = 1, on the default model (or -m FILE).

    python bench/bench_batched_decode.py [-m FILE] [-t 2] [--depth 128] [--steps 32]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from pyrt.default_model import default_model_path
from pyrt.runtime.context import Batch
from pyrt.runtime.llm import LLM


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("-m", "--model", default=None)
    ap.add_argument("-t", "--threads", type=int, default=2)
    ap.add_argument("--depth", type=int, default=128, help="tokens already in each sequence")
    ap.add_argument("--steps", type=int, default=32)
    ap.add_argument("--n", default="1,2,4,8")
    ap.add_argument("--reps", type=int, default=3, help="rounds over all N; the fastest round counts (shared CPUs)")
    a = ap.parse_args()
    ns = [int(x) for x in a.n.split(",")]
    n_max = max(ns)
    llm = LLM(a.model or default_model_path(), n_ctx=n_max * (a.depth + a.steps + 8), n_seq_max=n_max,
              n_threads=a.threads)
    ctx = llm.ctx
    rng = np.random.default_rng(0)
    base = None
    print(f"model {llm.file.path}, threads {llm.n_threads}, depth {a.depth}, {a.steps} steps")
    best = {n: float("inf") for n in ns}
    for _ in range(a.reps):
        for n in ns:
            best[n] = min(best[n], _time_steps(ctx, rng, n, a.depth, a.steps))
    print(f"{'N':>3} {'ms/step':>9} {'tok/s':>9} {'vs N=1':>7}")
    for n in ns:
        dt = best[n]
        tps = n / dt
        base = base or tps
        print(f"{n:>3} {dt * 1000:9.2f} {tps:9.1f} {tps / base:7.2f}")


def _time_steps(ctx, rng, n, depth, steps) -> float:
    """Seconds per decode step of n sequences at the given depth."""
    ctx.clear()
    for s in range(n):
        ctx.decode(Batch.from_tokens(rng.integers(10, 1000, depth).tolist(), 0, s))
    seq = np.arange(n)
    tok = rng.integers(10, 1000, n)
    ctx.decode(Batch(tok, np.full(n, depth), seq, np.ones(n, bool)))  # warm-up step
    t0 = time.perf_counter()
    for k in range(steps):
        ctx.decode(Batch(tok, np.full(n, depth + 1 + k), seq, np.ones(n, bool)))
    return (time.perf_counter() - t0) / steps


if __name__ == "__main__":
    main()
