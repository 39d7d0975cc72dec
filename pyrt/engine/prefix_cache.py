"""Host-RAM cache of evicted prefixes: sequence states (pyrt's state format, `Context.save_state`) kept
in least-recently-used order within a byte budget, found again by longest common token prefix.

Imports numpy only; the engine saves and restores through the context.
"""

from __future__ import annotations

import collections

import numpy as np


def _lcp(a: np.ndarray, b: np.ndarray) -> int:
    n = min(a.shape[0], b.shape[0])
    d = np.flatnonzero(a[:n] != b[:n])
    return int(d[0]) if d.shape[0] else n


class HostPrefixCache:
    def __init__(self, max_bytes: int):
        self.max_bytes = int(max_bytes)
        self.entries: collections.OrderedDict[int, tuple[np.ndarray, bytes]] = collections.OrderedDict()
        self.n_bytes = 0
        self._next = 0

    def __len__(self) -> int:
        return len(self.entries)

    def covers(self, tokens: list[int]) -> bool:
        """Whether an entry already holds these tokens (or a continuation of them)."""
        t = np.asarray(tokens, np.int64)
        return any(e.shape[0] >= t.shape[0] and _lcp(e, t) == t.shape[0] for e, _ in self.entries.values())

    def put(self, tokens: list[int], data: bytes) -> bool:
        if len(data) > self.max_bytes or self.covers(tokens):
            return False
        t = np.asarray(tokens, np.int64)
        for k in [k for k, (e, _) in self.entries.items() if e.shape[0] <= t.shape[0] and _lcp(e, t) == e.shape[0]]:
            self._drop(k)  # the new entry continues these
        while self.entries and self.n_bytes + len(data) > self.max_bytes:
            self._drop(next(iter(self.entries)))
        self.entries[self._next] = (t, data)
        self._next += 1
        self.n_bytes += len(data)
        return True

    def _drop(self, key: int) -> None:
        _, data = self.entries.pop(key)
        self.n_bytes -= len(data)

    def best(self, prompt: list[int]) -> tuple[int, int]:
        """(key, common prefix length) of the entry sharing the longest prefix with prompt; (-1, 0) if none."""
        p = np.asarray(prompt, np.int64)
        best, n_best = -1, 0
        for k, (e, _) in self.entries.items():
            n = _lcp(e, p)
            if n > n_best:
                best, n_best = k, n
        return best, n_best

    def get(self, key: int) -> bytes:
        self.entries.move_to_end(key)
        return self.entries[key][1]
