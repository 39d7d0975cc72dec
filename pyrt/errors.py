"""Typed exceptions of pyrt. Every error a user can cause is one of these, with a one-line message.

Leaf module: imports nothing from pyrt.
"""


class PyrtError(Exception):
    """Base class: the CLI prints `error: <message>` and exits non-zero for these."""


class ModelFileError(PyrtError):
    """The file is missing, is not a GGUF, is truncated or internally inconsistent."""


class UnsupportedError(PyrtError):
    """A valid file that uses something pyrt does not implement (architecture, tensor type, tokenizer)."""


class ContextOverflowError(PyrtError):
    """The prompt or batch does not fit into the context / KV cache."""


class InvalidArgumentError(PyrtError, ValueError):
    """A bad argument from the caller (sampling parameters, batch contents, thread count ...)."""


class TokenizerError(PyrtError):
    """The vocabulary in the file cannot be used (missing keys, inconsistent tables)."""


class StateError(PyrtError):
    """A saved state cannot be restored into this context (other model, cache type, corrupt data)."""


class GrammarError(InvalidArgumentError):
    """A JSON schema, regex or grammar the grammar engine cannot compile (the engine's message), or a
    token the grammar rejects."""
