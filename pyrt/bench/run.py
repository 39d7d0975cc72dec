"""llama-bench-style tests: ppN (one prompt of N random tokens into an empty cache, in n_batch chunks),
tgN (N single-token decodes from an empty cache) and tgN@ppP (llama-bench's -gp: N single-token decodes after a
prompt of P tokens, only the decodes timed), repeated, engines interleaved per repetition.

Compile/warm-up happened when the engines were opened and is never inside these timings.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass, field

import numpy as np

from ..errors import InvalidArgumentError
from .sweep import decode_chunked


@dataclass
class RunResult:
    engine: str
    test: str            # "pp512", "tg128", "tg32@pp8192"
    n_prompt: int        # the prompt's tokens (for tgN@ppP: P, the depth the timed decodes start at)
    n_gen: int
    samples_ts: list[float] = field(default_factory=list)  # tokens/s of each repetition
    gbps: float | None = None    # tg: bytes read per token * mean speed
    gflops: float | None = None  # pp: flops / mean time

    @property
    def avg_ts(self) -> float:
        return statistics.mean(self.samples_ts)

    @property
    def stddev_ts(self) -> float:
        return statistics.stdev(self.samples_ts) if len(self.samples_ts) > 1 else 0.0

    def to_dict(self) -> dict:
        d = asdict(self)
        d.update(avg_ts=self.avg_ts, stddev_ts=self.stddev_ts)
        return d


def _pp(e, toks) -> float:
    e.clear()
    t0 = time.perf_counter()
    decode_chunked(e, toks, 0)
    return time.perf_counter() - t0


def _tg(e, toks, depth: int = 0) -> float:
    """Single-token decodes of toks from position depth (an empty cache for 0, else the cells past depth removed)."""
    if depth:
        e.seq_rm(depth)
    else:
        e.clear()
    t0 = time.perf_counter()
    for i, t in enumerate(toks):
        e.decode([t], depth + i, logits_last=True)
    return time.perf_counter() - t0


def cells_needed(n_prompt: int, n_gen: int, gp=()) -> int:
    """The cache cells the tests take: the largest of the prompt, the generation and every -gp pair's sum."""
    return max([n_prompt, n_gen] + [p + g for p, g in gp])


def run_tests(engines: list, n_prompt: int = 512, n_gen: int = 128, reps: int = 5, seed: int = 1234,
              costs=None, progress=None, gp=()) -> list[RunResult]:
    """pp{n_prompt} and tg{n_gen} (either may be 0 to skip), then tg{g}@pp{p} for each (p, g) of gp, on every
    engine; results in (test, engine) order.

    A gp test fills each engine's cache with its p prompt tokens once (untimed); each repetition removes the
    cells past p and times g single-token decodes from position p, the engines taking turns as in the other
    tests. The decodes see the same depth as llama-bench's -gp, which prompts again before every repetition.
    """
    if reps <= 0:
        raise InvalidArgumentError(f"repetitions must be positive, got {reps}")
    gp = [(int(p), int(g)) for p, g in gp]
    if any(p < 0 or g <= 0 for p, g in gp):
        raise InvalidArgumentError(f"-gp pairs need a prompt >= 0 and generated tokens > 0, got {gp}")
    if n_prompt < 0 or n_gen < 0 or (n_prompt == 0 and n_gen == 0 and not gp):
        raise InvalidArgumentError("need -p > 0, -n > 0 or -gp")
    need = cells_needed(n_prompt, n_gen, gp)
    for e in engines:
        if need > e.n_ctx:
            raise InvalidArgumentError(f"{e.name}: the tests need {need} cells, n_ctx = {e.n_ctx}")
    n_vocab = min(e.n_vocab for e in engines)
    rng = np.random.default_rng(seed)
    tests = ([("pp", n_prompt)] if n_prompt else []) + ([("tg", n_gen)] if n_gen else [])
    res = {(kind, e.name): RunResult(e.name, f"{kind}{n}", n if kind == "pp" else 0, n if kind == "tg" else 0)
           for kind, n in tests for e in engines}
    for r in range(reps):
        for kind, n in tests:
            toks = rng.integers(0, n_vocab, n).tolist()
            order = engines if r % 2 == 0 else engines[::-1]
            for e in order:
                dt = _pp(e, toks) if kind == "pp" else _tg(e, toks)
                res[(kind, e.name)].samples_ts.append(n / dt)
        if progress:
            progress(f"run: rep {r + 1}/{reps}: " + ", ".join(
                f"{e.name} {kind}{n} {res[(kind, e.name)].samples_ts[-1]:.2f} t/s" for kind, n in tests
                for e in engines))
    out = [res[(kind, e.name)] for kind, _ in tests for e in engines]
    for p, g in gp:
        runs = {e.name: RunResult(e.name, f"tg{g}@pp{p}", p, g) for e in engines}
        for e in engines:
            e.clear()
            decode_chunked(e, rng.integers(0, n_vocab, p).tolist(), 0)
        for r in range(reps):
            toks = rng.integers(0, n_vocab, g).tolist()
            for e in (engines if r % 2 == 0 else engines[::-1]):
                runs[e.name].samples_ts.append(g / _tg(e, toks, p))
            if progress:
                progress(f"run: tg{g}@pp{p} rep {r + 1}/{reps}: " + ", ".join(
                    f"{e.name} {runs[e.name].samples_ts[-1]:.2f} t/s" for e in engines))
        out += [runs[e.name] for e in engines]
    for e in engines:
        e.clear()
    if costs is not None:
        for x in out:
            if x.n_gen:
                x.gbps = costs.tg_bytes(x.n_prompt, x.n_gen) / x.n_gen * x.avg_ts / 1e9  # tgN: n_prompt 0
            else:
                x.gflops = costs.pp_flops(0, x.n_prompt, 1) * x.avg_ts / x.n_prompt / 1e9
    return out
