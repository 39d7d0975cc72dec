"""pyrt: a CPU-first LLM inference runtime (mmapped GGUF, Numba kernels on quantized weights).

    import pyrt
    llm = pyrt.load("model.gguf", n_ctx=2048, n_threads=2)
    for piece in llm.generate("Once upon a time", max_tokens=64):
        print(piece, end="", flush=True)
"""

import os as _os

# Numba's OpenMP workers spin after each parallel region (libgomp's default spin count is large). On a
# 2-core machine that steals the core our BLAS prompt-path threads need; fully passive waiting instead
# costs ~70 us per parallel launch (decode makes ~10 per layer). A short spin keeps decode's back-to-back
# launches at ~2 us and lets the workers sleep during BLAS tiles. Measured here on Gemma 3 270M, 2 threads:
# tg 25.4 ms/token and pp512 513 t/s with GOMP_SPINCOUNT=10000, vs 24.3 / 410 (active) and 35.1 / 494
# (passive). A user's own OMP_WAIT_POLICY or GOMP_SPINCOUNT wins.
if "OMP_WAIT_POLICY" not in _os.environ and "GOMP_SPINCOUNT" not in _os.environ:
    _os.environ["GOMP_SPINCOUNT"] = "10000"

from .errors import (BusyError, ContextOverflowError, DeviceError, FileAccessError, GrammarError,
                     InvalidArgumentError, ModelFileError,
                     PyrtError, StateError, StateFileError, TokenizerError, UnsupportedError)

__version__ = "0.1.0"

__all__ = ["load", "LLM", "Context", "Batch", "PyrtError", "ModelFileError", "UnsupportedError", "DeviceError",
           "ContextOverflowError", "InvalidArgumentError", "TokenizerError", "StateError", "StateFileError",
           "FileAccessError", "BusyError", "GrammarError",
           "__version__"]


def __getattr__(name):
    # Lazy: `import pyrt` stays cheap (no Numba import) for `pyrt --help` and error paths.
    if name in ("load", "LLM"):
        from .runtime import llm
        return getattr(llm, name)
    if name in ("Context", "Batch"):
        from .runtime import context
        return getattr(context, name)
    raise AttributeError(f"module 'pyrt' has no attribute {name!r}")
