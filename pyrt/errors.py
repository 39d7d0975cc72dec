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


class FileAccessError(PyrtError, OSError):
    """A file or folder could not be read or written (missing folder, permissions, full disk, read-only
    file system). Raised for every file-system failure of pyrt's own files (state and prompt-cache files,
    the default-model cache); the OSError is kept as __cause__ and its errno/filename are copied."""

    @classmethod
    def wrap(cls, what: str, e: OSError) -> "FileAccessError":
        err = cls(f"{what}: {e.strerror or e}")
        err.errno, err.strerror, err.filename = e.errno, e.strerror, e.filename
        return err

    def __str__(self) -> str:  # the message, not OSError's "[Errno n] ..." form
        return str(self.args[0]) if self.args else ""


class StateFileError(StateError, FileAccessError):
    """A state / prompt-cache file could not be read or written (a StateError and a FileAccessError)."""


class BusyError(PyrtError):
    """The LLM / Context is in use by a generation that has not finished (another thread's, or a generator
    of this thread that is still open): one context runs one generation at a time."""


class GrammarError(InvalidArgumentError):
    """A JSON schema, regex or grammar the grammar engine cannot compile (the engine's message), or a
    token the grammar rejects."""


class DeviceError(PyrtError):
    """The requested device cannot be used: its backend's optional package is not installed, no such
    device is present, or an operation has no kernel on it yet."""
