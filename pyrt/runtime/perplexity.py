"""Perplexity of a text, by llama-perplexity's method (tools/perplexity/perplexity.cpp in llama.cpp).

The text is tokenized once (BOS added as the vocabulary says), cut into chunks of n_ctx tokens; each
chunk is evaluated from an empty cache with BOS as its first token, and only the second half is scored.
Uses the context and tokenizer of an `LLM`; imports nothing above the runtime layer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from ..errors import ContextOverflowError, InvalidArgumentError, UnsupportedError
from .context import Batch


@dataclass
class PerplexityResult:
    ppl: float                # exp(mean negative log-likelihood)
    ppl_err: float            # llama.cpp's uncertainty: ppl * sqrt(var(nll) / (count - 1))
    n_ctx: int
    n_chunks: int
    n_tokens: int             # tokens of the whole text (BOS included)
    count: int                # scored tokens
    nll: float                # sum of -log p
    nll2: float               # sum of (-log p)^2
    running: list[float] = field(default_factory=list)  # ppl after each chunk ([i] values)


def token_nll(logits: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """-log softmax(row)[target] per row, float64 [n]; logits [n, n_vocab] f32, targets [n] int.

    As llama.cpp: max and exp in f32, the sum of exponentials in double.
    """
    logits = np.asarray(logits, dtype=np.float32)
    mx = logits.max(axis=1)                                              # [n] f32
    se = np.exp(logits - mx[:, None]).sum(axis=1, dtype=np.float64)     # [n] f64
    tl = logits[np.arange(logits.shape[0]), np.asarray(targets, dtype=np.int64)]
    return -((tl - mx).astype(np.float64) - np.log(se))


def final_estimate(nll: float, nll2: float, count: int) -> tuple[float, float]:
    """(ppl, uncertainty) from the sums of -log p and its square over `count` tokens, as llama.cpp."""
    if count < 2:
        raise InvalidArgumentError("perplexity needs at least two scored tokens")
    mean = nll / count
    var = nll2 / count - mean * mean
    ppl = math.exp(mean)
    err = math.sqrt(var / (count - 1)) * ppl if var > 0 else float("nan")
    return ppl, err


def perplexity(llm, text: str, n_ctx: int | None = None, n_chunks: int = -1, n_batch: int | None = None,
               callback: Callable[[int, float], None] | None = None) -> PerplexityResult:
    """Perplexity of `text` with chunks of n_ctx tokens (default: the LLM's n_ctx).

    n_chunks < 0 scores every whole chunk; `callback(i, running_ppl)` is called after chunk i (1-based).
    The cache is cleared (the LLM forgets its conversation).
    """
    tok = llm.tokenizer
    if tok.add_eos:
        raise UnsupportedError("perplexity: vocabularies that append EOS are not supported (as llama.cpp)")
    ctx = llm.ctx
    n_ctx = int(n_ctx or ctx.n_ctx)
    if n_ctx < 4:
        raise InvalidArgumentError(f"perplexity: n_ctx must be at least 4, got {n_ctx}")
    if n_ctx > ctx.n_ctx:
        raise ContextOverflowError(f"perplexity: chunks of {n_ctx} tokens do not fit n_ctx = {ctx.n_ctx}")
    n_batch = min(int(n_batch or n_ctx), ctx.n_batch, n_ctx)
    if n_batch <= 0:
        raise InvalidArgumentError(f"perplexity: n_batch must be positive, got {n_batch}")
    tokens = tok.tokenize(text, add_special=True, parse_special=False)
    if len(tokens) < 2 * n_ctx:
        raise InvalidArgumentError(
            f"perplexity: you need at least {2 * n_ctx} tokens to evaluate perplexity with a context of "
            f"{n_ctx}; the text tokenizes to only {len(tokens)} tokens")
    n_chunk_max = len(tokens) // n_ctx
    n_chunk = n_chunk_max if n_chunks < 0 else min(int(n_chunks), n_chunk_max)
    if n_chunk <= 0:
        raise InvalidArgumentError("perplexity: no chunks to evaluate")
    first = n_ctx // 2
    add_bos = tok.add_bos and tok.bos_id is not None
    want = np.zeros(n_ctx, dtype=bool)
    want[first:] = True  # llama.cpp asks for logits from `first` on; the last row is unused
    nll = nll2 = 0.0
    count = 0
    running: list[float] = []
    for i in range(n_chunk):
        chunk = np.array(tokens[i * n_ctx:(i + 1) * n_ctx], dtype=np.int64)  # [n_ctx]
        inp = chunk.copy()
        if add_bos:
            inp[0] = tok.bos_id
        llm.reset()
        rows = []
        for s in range(0, n_ctx, n_batch):
            e = min(n_ctx, s + n_batch)
            b = Batch(inp[s:e], np.arange(s, e, dtype=np.int64), np.zeros(e - s, dtype=np.int64), want[s:e].copy())
            out = ctx.decode(b)
            if out.shape[0]:
                rows.append(out)
        logits = rows[0] if len(rows) == 1 else np.concatenate(rows)  # [n_ctx - first, n_vocab] f32
        v = token_nll(logits[:n_ctx - 1 - first], chunk[first + 1:])
        nll += float(v.sum())
        nll2 += float((v * v).sum())
        count += n_ctx - first - 1
        running.append(math.exp(nll / count))
        if callback is not None:
            callback(i + 1, running[-1])
    llm.reset()
    ppl, err = final_estimate(nll, nll2, count)
    return PerplexityResult(ppl, err, n_ctx, n_chunk, len(tokens), count, nll, nll2, running)
