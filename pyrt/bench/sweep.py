"""sweep-bench (ik_llama.cpp's llama-sweep-bench semantics) over one or more engines, interleaved per row.

For n_kv = 0, ubatch, 2*ubatch, ... while a ubatch still fits the context: remove positions >= n_kv,
time TG single-token decodes at n_kv, n_kv+1, ... (logits each), remove them again, then time one PP
chunk of `ubatch` random tokens at n_kv.. (logits on the last) that stays in the cache. Each row runs
every engine back to back (alternating which goes first) so machine drift hits all of them. With
tg_rounds > 1 the TG tokens of a row are decoded in that many chunks, the engines taking turns chunk by
chunk (alternating who starts), before the PP chunks: on a machine whose memory bandwidth drifts over
seconds (a shared VM), each engine's TG time then spans the same stretch of time.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import numpy as np

from ..errors import InvalidArgumentError
from .facts import rss_hwm_mib


@dataclass
class SweepRow:
    engine: str
    pp: int
    tg: int
    n_kv: int
    t_pp: float     # seconds for the PP chunk
    speed_pp: float  # pp / t_pp, tokens/s
    t_tg: float     # seconds for the tg decodes
    speed_tg: float  # tg / t_tg, tokens/s
    rss_hwm_mib: float | None = None  # peak RSS of the process after this row
    tg_gbps: float | None = None      # bytes read per generated token * speed_tg, GB/s
    tg_bw_frac: float | None = None   # tg_gbps / measured memory bandwidth
    pp_gflops: float | None = None    # prompt flops / t_pp, GFLOP/s

    def to_dict(self) -> dict:
        return asdict(self)


def sweep_steps(n_ctx: int, n_ubatch: int, n_tg: int) -> list[int]:
    """The N_KV values of the rows: 0, ubatch, ... while both the TG run and the PP chunk fit n_ctx."""
    return [n_kv for n_kv in range(0, n_ctx, n_ubatch) if n_kv + max(n_ubatch, n_tg) <= n_ctx]


def decode_chunked(e, toks: list[int], pos0: int) -> None:
    for s in range(0, len(toks), e.n_batch):
        chunk = toks[s:s + e.n_batch]
        e.decode(chunk, pos0 + s, logits_last=s + len(chunk) == len(toks))


def _tg_turns(engines: list, toks: list[int], n_kv: int, rounds: int) -> dict[str, float]:
    """TG decodes of toks at n_kv.. on every engine, in `rounds` chunks the engines take turns on
    (alternating who starts); returns each engine's summed TG seconds."""
    for e in engines:
        e.seq_rm(n_kv)
    t = {e.name: 0.0 for e in engines}
    bounds = np.linspace(0, len(toks), min(rounds, len(toks)) + 1).astype(int)
    for c, (a, b) in enumerate(zip(bounds[:-1], bounds[1:])):
        for e in (engines if c % 2 == 0 else engines[::-1]):
            t0 = time.perf_counter()
            for j in range(a, b):
                e.decode([toks[j]], n_kv + j, logits_last=True)
            t[e.name] += time.perf_counter() - t0
    return t


def sweep(engines: list, n_tg: int = 0, n_kv_max: int | None = None, seed: int = 1234, memory: bool = False,
          costs=None, membw_gbps: float | None = None, progress=None, tg_rounds: int = 1) -> dict[str, list[SweepRow]]:
    """Runs the sweep on every engine; returns {engine name: rows}. All engines must share n_ctx/n_ubatch.

    n_tg <= 0: ubatch/4 (sweep-bench's default). costs: a ModelCosts for the roofline columns.
    progress(str): called after each row. tg_rounds: TG chunks per row that the engines take turns on
    (1: each engine's whole TG run, then its PP chunk, as sweep-bench).
    """
    if not engines:
        raise InvalidArgumentError("sweep: no engines")
    if int(tg_rounds) < 1:
        raise InvalidArgumentError(f"sweep: tg_rounds must be >= 1, got {tg_rounds}")
    e0 = engines[0]
    n_ubatch = e0.n_ubatch
    n_ctx = min(e.n_ctx for e in engines) if n_kv_max is None else int(n_kv_max)
    if n_ctx > min(e.n_ctx for e in engines):
        raise InvalidArgumentError(f"sweep: n_kv_max {n_ctx} exceeds an engine's context")
    if any(e.n_ubatch != n_ubatch for e in engines):
        raise InvalidArgumentError("sweep: the engines have different n_ubatch: "
                                   + ", ".join(f"{e.name} {e.n_ubatch}" for e in engines))
    pp = n_ubatch
    tg = n_tg if n_tg > 0 else max(1, n_ubatch // 4)
    steps = sweep_steps(n_ctx, n_ubatch, tg)
    if not steps:
        raise InvalidArgumentError(f"sweep: n_ctx = {n_ctx} is too small for one row of pp = {pp}, tg = {tg}")
    n_vocab = min(e.n_vocab for e in engines)
    rng = np.random.default_rng(seed)
    for e in engines:
        e.clear()
    out: dict[str, list[SweepRow]] = {e.name: [] for e in engines}
    for i, n_kv in enumerate(steps):
        tg_toks = rng.integers(0, n_vocab, tg).tolist()
        pp_toks = rng.integers(0, n_vocab, pp).tolist()
        order = engines if i % 2 == 0 else engines[::-1]
        t_tgs = _tg_turns(order, tg_toks, n_kv, int(tg_rounds)) if tg_rounds > 1 else None
        for e in order:
            t_tg = t_tgs[e.name] if t_tgs is not None else _tg_turns([e], tg_toks, n_kv, 1)[e.name]
            e.seq_rm(n_kv)
            t0 = time.perf_counter()
            decode_chunked(e, pp_toks, n_kv)
            t_pp = time.perf_counter() - t0
            row = SweepRow(e.name, pp, tg, n_kv, t_pp, pp / t_pp, t_tg, tg / t_tg)
            if memory:
                row.rss_hwm_mib = rss_hwm_mib()
            if costs is not None:
                row.tg_gbps = costs.tg_bytes(n_kv, tg) / t_tg / 1e9
                row.pp_gflops = costs.pp_flops(n_kv, pp, 1) / t_pp / 1e9
                if membw_gbps:
                    row.tg_bw_frac = row.tg_gbps / membw_gbps
            out[e.name].append(row)
        if progress:
            progress(f"sweep: N_KV {n_kv:6d} ({i + 1}/{len(steps)}): " + ", ".join(
                f"{e.name} S_PP {out[e.name][-1].speed_pp:8.2f} S_TG {out[e.name][-1].speed_tg:7.2f}"
                for e in engines))
    return out
