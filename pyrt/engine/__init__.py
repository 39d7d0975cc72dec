"""The serving engine: requests, continuous batching over one `Context`, shared-prefix reuse.

No HTTP here (pyrt.server is the ASGI layer) and no kernels: the engine only builds `Batch`es,
calls `Context.decode` and samples.
"""

from .requests import Completion, GenerationParams, Request, TokenInfo
from .scheduler import Engine

__all__ = ["Engine", "Request", "GenerationParams", "Completion", "TokenInfo"]
