"""Per-slot sampling: a sequence's logits row becomes its next token, under its grammar's mask, with logprobs.

A request with a grammar (`GenerationParams.constraint`) samples under its mask, computed in a thread pool
while the forward pass runs; only that sequence's logits row is masked. The engine thread owns one
`Sampling` and hands it the rows of the sequences that sample after a decode.
Imports numpy, pyrt.engine.requests and pyrt.errors.
"""

from __future__ import annotations

import concurrent.futures
import time
from typing import NamedTuple

import numpy as np

from ..errors import PyrtError
from .requests import FINISH_ERROR, FINISH_STOP, GenerationParams, TokenInfo


class End(NamedTuple):
    """The request ends instead of taking a token: its finish reason, and the error of FINISH_ERROR."""

    reason: str
    error: Exception | None = None


class Sampling:
    """The next token of each request running in a slot: its grammar's mask, its sampler, its logprobs.
    Used by the engine thread only."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        # grammar masks of the next tokens are computed here while the forward pass runs (llguidance
        # releases the GIL); started on the first constrained request
        self._mask_pool: concurrent.futures.ThreadPoolExecutor | None = None
        self.t_mask = 0.0             # seconds the engine thread waited for masks and masked logits
        self.n_masked = 0

    def shutdown(self) -> None:
        if self._mask_pool is not None:
            self._mask_pool.shutdown(wait=True)
            self._mask_pool = None

    def start_masks(self, entries) -> list:
        """Computes, in the mask pool, the grammar mask of every constrained sequence that samples after
        this decode: the masks depend only on the tokens accepted so far, so they overlap the forward pass."""
        if not any(last and s.act is not None and s.act.constraint is not None for s, toks, last in entries):
            return []
        if self._mask_pool is None:
            self._mask_pool = concurrent.futures.ThreadPoolExecutor(max_workers=2, thread_name_prefix="pyrt-mask")
        futs = []
        for s, toks, last in entries:
            a = s.act
            if last and a is not None and a.constraint is not None and not a.constraint.is_stopped():
                a.mask_future = self._mask_pool.submit(a.constraint.fill_mask)
                futs.append(a.mask_future)
        return futs

    def constrain(self, a, logits: np.ndarray) -> np.ndarray | None:
        """The sequence's logits under its grammar's mask (a copy), or None when the grammar is complete and
        allows nothing more. The mask is the one `start_masks` computed (or is computed now)."""
        c = a.constraint
        t0 = time.perf_counter()
        if a.mask_future is not None:  # the matcher is not touched while the pool computes its mask
            f, a.mask_future = a.mask_future, None
            f.result()  # the mask computed during the forward pass (or its GrammarError)
        if c.is_stopped():
            return None
        if a.params.ignore_eos:
            c.forbid(self.tokenizer.eog_ids)
        out = c.mask_logits(np.array(logits, dtype=np.float32))
        self.t_mask += time.perf_counter() - t0
        self.n_masked += 1
        return out

    def next_token(self, a, logits: np.ndarray) -> TokenInfo | End:
        """The request's next token (accepted by its grammar), or its `End`: the grammar allows nothing more
        or fails, or the token ends generation."""
        p = a.params
        c = a.constraint
        if c is not None:
            try:
                logits = self.constrain(a, logits)
            except PyrtError as e:
                return End(FINISH_ERROR, e)
            if logits is None:
                return End(FINISH_STOP)
        tok = a.sampler.sample(logits, a.history)
        if not p.ignore_eos and self.tokenizer.is_eog(tok):
            return End(FINISH_STOP)
        if c is not None:
            try:
                c.accept(tok)
            except PyrtError as e:
                return End(FINISH_ERROR, e)
        return token_info(tok, logits, p)


def token_info(tok: int, logits: np.ndarray, p: GenerationParams) -> TokenInfo:
    """The token with its log-probability and its p.n_probs most likely alternatives, as far as p asks."""
    info = TokenInfo(tok)
    if p.logprobs or p.n_probs > 0:
        lp = log_softmax(logits)
        info.logprob = float(lp[tok])
        if p.n_probs > 0:
            k = min(p.n_probs, lp.shape[0])
            top = np.argpartition(-lp, k - 1)[:k]
            top = top[np.argsort(-lp[top], kind="stable")]
            # under a grammar, the tokens it forbids (log-probability -inf) are no alternatives
            info.top = [(int(t), float(lp[t])) for t in top if np.isfinite(lp[t])]
    return info


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    m = x.max()
    return x - (m + np.log(np.exp(x - m).sum()))
