"""Import shim for the Cython cell bookkeeping (pyrt.kv._cells).

Gives a readable error when the extension was not built. Imports nothing else from pyrt.
"""

try:
    from ._cells import Cells
except ImportError as e:  # pragma: no cover - only without a build
    raise ImportError("pyrt's Cython extension is not built: run pip install -e .") from e

__all__ = ["Cells"]
