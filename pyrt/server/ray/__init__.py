"""pyrt replicas on Ray Serve (the `ray` extra): `deployment(...)` builds the application (N engines behind one
OpenAI-compatible endpoint, prefix- and session-aware routing, sessions that move between replicas through
state files); `PrefixSessionRouter` is its request router. Imports ray.serve (public API) and pyrt.server.
"""

from __future__ import annotations

try:
    import ray.serve  # noqa: F401
except ImportError as e:  # pragma: no cover - the extra is missing
    from ...errors import PyrtError
    raise PyrtError(f"pyrt on Ray needs the ray extra ({e.name} is missing): pip install -e \".[ray]\"") from None

from .deployment import PyrtIngress, PyrtReplica, deployment, serve_forever
from .router import PrefixSessionRouter
from .routing import BLOCK_TOKENS, RoutedRequest, block_hashes

__all__ = ["deployment", "serve_forever", "PyrtReplica", "PyrtIngress", "PrefixSessionRouter", "RoutedRequest",
           "block_hashes", "BLOCK_TOKENS"]
