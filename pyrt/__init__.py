"""pyrt: a CPU-first LLM inference runtime (mmapped GGUF, Numba kernels on quantized weights).

    import pyrt
    llm = pyrt.load("model.gguf", n_ctx=2048, n_threads=2)
    for piece in llm.generate("Once upon a time", max_tokens=64):
        print(piece, end="", flush=True)
"""

import os as _os

# Numba's OpenMP workers spin after each parallel region by default; on a 2-core machine that steals the
# core our BLAS prompt-path threads (and any other process) need: pp512 1.6x and decode up to 3x slower
# under load, measured here. Passive waiting costs a few microseconds per launch instead. Set before the
# OpenMP runtime starts; a user's own setting wins.
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from .errors import (ContextOverflowError, InvalidArgumentError, ModelFileError, PyrtError, StateError,
                     TokenizerError, UnsupportedError)

__version__ = "0.1.0"

__all__ = ["load", "LLM", "Context", "Batch", "PyrtError", "ModelFileError", "UnsupportedError",
           "ContextOverflowError", "InvalidArgumentError", "TokenizerError", "StateError", "__version__"]


def __getattr__(name):
    # Lazy: `import pyrt` stays cheap (no Numba import) for `pyrt --help` and error paths.
    if name in ("load", "LLM"):
        from .runtime import llm
        return getattr(llm, name)
    if name in ("Context", "Batch"):
        from .runtime import context
        return getattr(context, name)
    raise AttributeError(f"module 'pyrt' has no attribute {name!r}")
