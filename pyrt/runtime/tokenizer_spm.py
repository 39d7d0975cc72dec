"""SentencePiece-style merging (llama.cpp's llm_tokenizer_spm) for pyrt.runtime.tokenizer.

Owns only the merge loop over one escaped text fragment; vocabulary handling, byte fallback and
special tokens stay in tokenizer.py. Imports only the standard library.
"""

from __future__ import annotations

import heapq


def spm_merge(text: str, token_to_id: dict[str, int], scores: list[float]) -> list[str]:
    """Split `text` (spaces already escaped to U+2581) into symbols by repeatedly merging the
    adjacent pair whose concatenation is the best-scoring token (leftmost on ties).

    Returns the final symbols in order; every merged symbol is a token, single code points may not be.
    """
    n = len(text)
    if n == 0:
        return []
    start = list(range(n))  # symbol i = text[start[i]:start[i] + ncp[i]]
    ncp = [1] * n
    # byte lengths: llama.cpp recognises stale queue entries by the byte size of the pair
    nb = [1] * n if text.isascii() else [len(c.encode("utf-8", "surrogatepass")) for c in text]
    nxt = list(range(1, n + 1))
    nxt[-1] = -1
    prv = list(range(-1, n - 1))
    heap: list = []
    for i in range(1, n):
        tid = token_to_id.get(text[i - 1:i + 1])
        if tid is not None:
            heap.append((-scores[tid], i - 1, i, nb[i - 1] + nb[i]))  # max score, then leftmost
    heapq.heapify(heap)
    push, pop = heapq.heappush, heapq.heappop
    while heap:
        _, lt, rt, size = pop(heap)
        if nb[lt] == 0 or nb[rt] == 0 or nb[lt] + nb[rt] != size:
            continue  # stale: one side was merged since this pair was queued
        nb[lt] += nb[rt]
        ncp[lt] += ncp[rt]
        nb[rt] = 0
        nn = nxt[rt]
        nxt[lt] = nn
        if nn >= 0:
            prv[nn] = lt
        p = prv[lt]
        if p >= 0:
            tid = token_to_id.get(text[start[p]:start[lt] + ncp[lt]])
            if tid is not None:
                push(heap, (-scores[tid], p, lt, nb[p] + nb[lt]))
        if nn >= 0:
            tid = token_to_id.get(text[start[lt]:start[nn] + ncp[nn]])
            if tid is not None:
                push(heap, (-scores[tid], lt, nn, nb[lt] + nb[nn]))
    out = []
    i = 0
    while i != -1:
        out.append(text[start[i]:start[i] + ncp[i]])
        i = nxt[i]
    return out
