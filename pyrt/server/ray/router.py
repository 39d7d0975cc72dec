"""`PrefixSessionRouter`: Ray Serve's request router for pyrt replicas (public `ray.serve.request_router` API).

A request goes to the replica named by its session, else to the replica holding the longest prefix of its
prompt (in whole token blocks; at least `min_match` of them, so that a shared chat-template header alone
does not pull every request to one replica), unless that replica is overloaded (as many requests as it has slots, and
another replica has fewer): then, as a request with neither, to the less loaded of two random replicas
(power of two choices). What a replica holds comes from two sources: the block hashes and sessions it
reports (`record_routing_stats`, every `request_routing_stats_period_s`) and what this router sent it in
the last `local_ttl_s` seconds (the reports lag). Imports ray.serve.request_router and .routing only.
"""

from __future__ import annotations

import collections
import random
import time

from ray.serve.request_router import PendingRequest, RequestRouter, RunningReplica

from .routing import RoutedRequest, prefix_blocks

# entries this router remembers per replica (block hashes, sessions), least recently routed dropped first
LOCAL_MAX = 1 << 16


class _Local:
    """What this router sent one replica: block hashes and sessions, with the time of the last send."""

    def __init__(self):
        self.blocks: collections.OrderedDict[int, float] = collections.OrderedDict()
        self.sessions: collections.OrderedDict[str, float] = collections.OrderedDict()

    def add(self, routed: RoutedRequest, now: float) -> None:
        for table, keys in ((self.blocks, routed.blocks), (self.sessions, [routed.session] if routed.session else [])):
            for k in keys:
                table[k] = now
                table.move_to_end(k)
            while len(table) > LOCAL_MAX:
                table.popitem(last=False)


class _Reported:
    """A replica's last routing stats, as sets (rebuilt only when the stats change)."""

    __slots__ = ("stats", "blocks", "sessions")

    def __init__(self, stats: dict):
        self.stats = stats
        self.blocks = frozenset(stats.get("blocks", ()))
        self.sessions = frozenset(stats.get("sessions", ()))


def _routed(pr: PendingRequest | None) -> RoutedRequest | None:
    if pr is None:
        return None
    for a in (*pr.args, *pr.kwargs.values()):
        if isinstance(a, RoutedRequest):
            return a
    return None


class PrefixSessionRouter(RequestRouter):
    """Session, then longest cached prefix, then power of two choices; see the module docstring.

    request_router_kwargs (RequestRouterConfig): `max_load`, the in-flight requests at which a replica is
    overloaded (default: the slots it reports, else 4); `min_match`, the fraction of the prompt's whole
    blocks a replica must hold to be preferred (default 0.5); `local_ttl_s`, how long this router trusts
    what it sent (default 30)."""

    def initialize_state(self, max_load: int | None = None, min_match: float = 0.5, local_ttl_s: float = 30.0,
                         **kwargs):
        self.max_load = max_load
        self.min_match = float(min_match)
        self.local_ttl_s = float(local_ttl_s)
        self._local: dict = collections.defaultdict(_Local)
        self._reported: dict = {}
        self._inflight: collections.Counter = collections.Counter()
        self._routed_ids: dict = {}  # internal request id -> replica id, until completed
        # decisions by kind, for tests and logs: session, prefix, spill, balance
        self.decisions: collections.Counter = collections.Counter()

    # -- what a replica holds and how busy it is -------------------------------------------------------
    def _report(self, r: RunningReplica) -> _Reported:
        stats = r.routing_stats or {}
        rep = self._reported.get(r.replica_id)
        if rep is None or rep.stats is not stats:
            rep = self._reported[r.replica_id] = _Reported(stats)
        return rep

    def _load(self, r: RunningReplica) -> int:
        cached = self.replica_queue_len_cache.get(r.replica_id)
        return max(self._inflight[r.replica_id], cached or 0)

    def _overloaded(self, r: RunningReplica) -> bool:
        limit = self.max_load or self._report(r).stats.get("n_parallel") or 4
        return self._load(r) >= limit

    def _held_blocks(self, r: RunningReplica, blocks: list[int], now: float) -> int:
        n = prefix_blocks(blocks, self._report(r).blocks)
        loc = self._local.get(r.replica_id)
        if loc is not None and n < len(blocks):
            m = 0
            for h in blocks:
                t = loc.blocks.get(h)
                if t is None or now - t > self.local_ttl_s:
                    break
                m += 1
            n = max(n, m)
        return n

    def _holds_session(self, r: RunningReplica, session: str, now: float) -> tuple:
        """How surely the session is there: (2, when this router last sent it there), else (1, 0) when the
        replica reports it (it served it, maybe before the session moved on), else (0, 0)."""
        loc = self._local.get(r.replica_id)
        t = loc.sessions.get(session) if loc is not None else None
        if t is not None and now - t <= self.local_ttl_s:
            return (2, t)
        return (1, 0.0) if session in self._report(r).sessions else (0, 0.0)

    # -- RequestRouter -------------------------------------------------------------------------------------
    async def choose_replicas(self, candidate_replicas: list[RunningReplica],
                              pending_request: PendingRequest | None = None) -> list[list[RunningReplica]]:
        if not candidate_replicas:
            return []
        routed = _routed(pending_request)
        now = time.time()
        preferred, kind = None, "balance"
        if routed is not None and routed.session:
            # the replica this router last sent the session to, else one that reports it
            held = [(self._holds_session(r, routed.session, now), r) for r in candidate_replicas]
            held = [x for x in held if x[0][0] > 0]
            if held:
                preferred, kind = max(held, key=lambda x: x[0])[1], "session"
        if preferred is None and routed is not None and routed.blocks:
            best, n_best = [], 0
            for r in candidate_replicas:
                n = self._held_blocks(r, routed.blocks, now)
                if n > n_best:
                    best, n_best = [r], n
                elif n == n_best and n:
                    best.append(r)
            if n_best and n_best >= self.min_match * len(routed.blocks):
                preferred, kind = min(best, key=lambda r: (self._load(r), random.random())), "prefix"
        others = [r for r in candidate_replicas if r is not preferred]
        if preferred is not None:
            if not (self._overloaded(preferred) and any(self._load(r) < self._load(preferred) for r in others)):
                self.decisions[kind] += 1
                return [[preferred], self._two(others)] if others else [[preferred]]
            kind = "spill"
        self.decisions[kind] += 1
        ranks = [self._two(others)]
        if preferred is not None:
            ranks.append([preferred])
        return ranks

    @staticmethod
    def _two(replicas: list[RunningReplica]) -> list[RunningReplica]:
        """Two random replicas, in random order (the framework takes the one with the shorter queue, the
        first of equals): power of two choices."""
        return random.sample(replicas, min(2, len(replicas)))

    def on_request_routed(self, pending_request: PendingRequest, replica_id, result) -> None:
        routed = _routed(pending_request)
        if routed is not None:
            self._local[replica_id].add(routed, time.time())
        rid = pending_request.metadata.internal_request_id
        if rid not in self._routed_ids:
            self._routed_ids[rid] = replica_id
            self._inflight[replica_id] += 1

    def on_request_completed(self, replica_id, internal_request_id: str) -> None:
        rid = self._routed_ids.pop(internal_request_id, None)
        if rid is not None and self._inflight[rid] > 0:
            self._inflight[rid] -= 1

    def update_replicas(self, replicas: list[RunningReplica]) -> None:
        super().update_replicas(replicas)
        self._forget_gone()

    def on_replica_actor_died(self, replica_id) -> None:
        super().on_replica_actor_died(replica_id)
        self._forget_gone()

    def _forget_gone(self) -> None:
        alive = set(self.curr_replicas)
        for table in (self._local, self._reported, self._inflight):
            for rid in [k for k in table if k not in alive]:
                del table[rid]
        for k in [k for k, rid in self._routed_ids.items() if rid not in alive]:
            del self._routed_ids[k]
