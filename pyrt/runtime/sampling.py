"""Token sampling: repetition penalty, top-k, top-p, min-p, temperature; greedy when temperature <= 0.

The chain order is llama.cpp's common sampler order (penalties, top_k, top_p, min_p, temp, dist).
Seeded with numpy's PCG64, so a seed reproduces a run exactly. Imports numpy and pyrt.errors only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import InvalidArgumentError


@dataclass
class SamplingParams:
    temperature: float = 0.8
    top_k: int = 40
    top_p: float = 0.95
    min_p: float = 0.05
    repeat_penalty: float = 1.0
    repeat_last_n: int = 64
    seed: int | None = None

    def validate(self) -> None:
        for name in ("temperature", "top_p", "min_p", "repeat_penalty"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)):
                raise InvalidArgumentError(f"{name} must be a number, got {type(v).__name__}")
            if not np.isfinite(v):
                raise InvalidArgumentError(f"{name} must be a finite number, got {v}")
        for name in ("top_k", "repeat_last_n"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
                raise InvalidArgumentError(f"{name} must be an integer, got {type(v).__name__}")
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, (int, np.integer))
                                      or not -1 <= self.seed < 2**64):
            raise InvalidArgumentError(f"seed must be None, -1 (random) or an integer in [0, 2^64), got {self.seed!r}")
        if not np.isfinite(self.temperature):
            raise InvalidArgumentError("temperature must be a finite number")
        if self.top_k < 0:
            raise InvalidArgumentError(f"top_k must be >= 0 (0 = disabled), got {self.top_k}")
        if not 0.0 <= self.top_p <= 1.0:
            raise InvalidArgumentError(f"top_p must be in [0, 1], got {self.top_p}")
        if not 0.0 <= self.min_p <= 1.0:
            raise InvalidArgumentError(f"min_p must be in [0, 1], got {self.min_p}")
        if not self.repeat_penalty > 0.0:
            raise InvalidArgumentError(f"repeat_penalty must be > 0, got {self.repeat_penalty}")
        if self.repeat_last_n < -1:
            raise InvalidArgumentError(f"repeat_last_n must be >= -1, got {self.repeat_last_n}")


class Sampler:
    def __init__(self, params: SamplingParams, n_ctx: int):
        params.validate()
        self.p = params
        self.n_ctx = n_ctx
        seed = params.seed if params.seed is not None and params.seed >= 0 else None
        self.rng = np.random.Generator(np.random.PCG64(seed))

    def apply_penalty(self, logits: np.ndarray, history: list[int]) -> np.ndarray:
        p = self.p
        n = self.n_ctx if p.repeat_last_n == -1 else p.repeat_last_n
        if p.repeat_penalty == 1.0 or n == 0 or not history:
            return logits
        ids = np.unique(np.asarray(history[-n:], dtype=np.int64))
        ids = ids[(ids >= 0) & (ids < logits.shape[0])]
        logits = logits.copy()
        vals = logits[ids]
        logits[ids] = np.where(vals > 0, vals / p.repeat_penalty, vals * p.repeat_penalty)
        return logits

    def sample(self, logits: np.ndarray, history: list[int] = ()) -> int:
        """logits: [n_vocab] f32. Returns the chosen token id."""
        p = self.p
        logits = self.apply_penalty(np.asarray(logits, dtype=np.float32), list(history))
        if p.temperature <= 0.0:
            return int(np.argmax(logits))
        ids = np.arange(logits.shape[0])
        vals = logits.astype(np.float64)
        if 0 < p.top_k < vals.shape[0]:
            keep = np.argpartition(-vals, p.top_k - 1)[:p.top_k]
            ids, vals = ids[keep], vals[keep]
        order = np.argsort(-vals, kind="stable")
        ids, vals = ids[order], vals[order]
        if p.top_p < 1.0:
            probs = _softmax(vals)
            cum = np.cumsum(probs)
            k = int(np.searchsorted(cum, p.top_p) + 1)  # keep up to and including the crossing token
            ids, vals = ids[:max(k, 1)], vals[:max(k, 1)]
        if p.min_p > 0.0:
            probs = _softmax(vals)
            keep = probs >= p.min_p * probs[0]
            keep[0] = True
            ids, vals = ids[keep], vals[keep]
        probs = _softmax(vals / p.temperature)
        return int(ids[self.rng.choice(probs.shape[0], p=probs)])


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max())
    return e / e.sum()
