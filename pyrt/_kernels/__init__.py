"""Numba kernels: pure array functions. A leaf layer: imports only numpy, numba and sibling kernel modules.

Every cached kernel below this package is keyed on one stamp of all its files, and runs only the machine code
of its own library (disk_cache.py: the same bits whether compiled in this process or loaded from the disk
cache); both installed here before any kernel module is imported, with LLVM's asm parser readied for the
kernels that hold inline asm (disk_cache.ready_asm_parser).

A constant that one kernel hands another (a kind code, a zero offset) goes as np.int64(...): Numba types a bare
constant as a Literal and compiles the callee once more for that value (tests/test_kernel_signatures.py lists
the few kernels specialized so on purpose).
"""

import os as _os

from .config import CACHE_VARIANT as _CACHE_VARIANT
from .disk_cache import bind_calls_locally as _bind_calls_locally
from .disk_cache import install as _install
from .disk_cache import ready_asm_parser as _ready_asm_parser

SOURCE_STAMP = _install(_os.path.dirname(_os.path.abspath(__file__)), _CACHE_VARIANT)
_bind_calls_locally(__name__)
_ready_asm_parser()
