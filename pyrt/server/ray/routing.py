"""What the Ray router routes on: a request forwarded from the ingress to a replica (`RoutedRequest`, with its
session key and the hashes of its prompt's token blocks) and how those are computed (`block_hashes`,
`Prompter`: the prompt ids of an API request, as the replica's server computes them).

No Ray here (the ingress, the replicas and the router share it); imports pyrt.io, pyrt.runtime and
pyrt.server.protocol.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field

import numpy as np

from .. import protocol as P

# prompt tokens per hashed block: a prefix is matched to a replica's cache in whole blocks
BLOCK_TOKENS = 16

CHAT_PATHS = ("/v1/chat/completions", "/chat/completions")
COMPLETION_PATHS = ("/v1/completions", "/completions", "/completion")


def block_hashes(tokens, block_tokens: int = BLOCK_TOKENS) -> list[int]:
    """The chained hash of every whole block of `tokens`: entry k identifies tokens[: (k+1) * block_tokens],
    so two sequences share entry k exactly when they share that prefix (64-bit BLAKE2b, int63)."""
    n = len(tokens) // block_tokens
    if n == 0:
        return []
    data = np.asarray(tokens[: n * block_tokens], dtype="<i4").tobytes()
    step = 4 * block_tokens
    h = hashlib.blake2b(digest_size=8)
    out = []
    for b in range(n):
        h.update(data[b * step:(b + 1) * step])
        out.append(int.from_bytes(h.copy().digest(), "little") >> 1)
    return out


def prefix_blocks(request_blocks: list[int], held) -> int:
    """How many leading blocks of a request a replica holds (`held`: a set of block hashes)."""
    n = 0
    for h in request_blocks:
        if h not in held:
            break
        n += 1
    return n


@dataclass
class RoutedRequest:
    """An HTTP request as the ingress forwards it to a replica, with what the router needs."""

    method: str
    path: str
    query_string: bytes
    headers: list                    # [(name, value)] bytes, lower-case names, as ASGI
    body: bytes
    session: str | None = None       # P.session_file of the request's session id (a hash, not the id)
    blocks: list = field(default_factory=list)  # block_hashes of the prompt ids
    client: tuple | None = None
    stream: bool = False             # the body asks for a streamed response


class Prompter:
    """The prompt ids of an API request body without a model's weights: the GGUF file's tokenizer and chat
    template, as pyrt.server.app computes them (the ingress hashes them for routing)."""

    def __init__(self, model_path: str, chat_template: str | None = None):
        from ...errors import TokenizerError
        from ...io.gguf_file import GGUFFile
        from ...runtime.chat import template_for
        from ...runtime.tokenizer import Tokenizer

        self.file = GGUFFile(model_path, use_mmap=True)  # the tokenizer only: map, do not read
        self.tokenizer = Tokenizer.from_metadata(self.file.metadata)
        try:
            self.template = template_for(self, chat_template)
        except TokenizerError:
            self.template = template_for(self, "chatml")  # as the server: llama-server's fallback

    def prompt_ids(self, path: str, body: dict) -> list[int] | None:
        """The request's prompt ids; None for a path without a prompt or a body the server will refuse."""
        try:
            if path in CHAT_PATHS:
                tools = P.tool_spec(body)
                return P.chat_prompt_ids(self, self.template, body, tools.tools if tools.parse else None)
            if path in COMPLETION_PATHS:
                return P.prompt_ids(self, body.get("prompt"))
        except P.ApiError:
            return None
        return None


def routing_keys(prompter: Prompter | None, path: str, body_bytes: bytes, headers,
                 block_tokens: int = BLOCK_TOKENS) -> tuple[str | None, list[int], bool]:
    """(session key, prompt block hashes, whether it streams) of a request; (None, [], False) for what carries
    none of them."""
    try:
        body = json.loads(body_bytes) if body_bytes else {}
    except (ValueError, UnicodeDecodeError):
        body = {}
    if not isinstance(body, dict):
        body = {}
    sid = P.session_id(body, headers)
    session = P.session_file(sid) if sid is not None else None
    ids = prompter.prompt_ids(path, body) if prompter is not None and body else None
    return session, block_hashes(ids, block_tokens) if ids else [], body.get("stream") is True
