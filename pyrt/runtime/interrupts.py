"""Ctrl-C where kernels compile: a SIGINT handler that raises KeyboardInterrupt only where Python and
llvmlite can take it, used by the CLI for a whole command and by the library while the warm-up compiles.

Python raises KeyboardInterrupt wherever the main thread is when the signal is handled. Some places lose
it: a ctypes callback (llvmlite calls Numba's cache through them while kernels load) prints "Exception
ignored on calling ctypes callback function" and goes on; code run by exec/eval of a string (imports
inside Numba and the standard library do that) lets it through but marks the interpreter, which then
kills itself with SIGINT at exit instead of returning the caller's exit code; a finalizer (`__del__`, such
as llvmlite's ObjectRef.__del__ while kernels load) prints "Exception ignored in ..." with a traceback and
goes on. One place it corrupts: llvmlite records in Python who owns each LLVM object after the C call that
changed it (`link_modules` marks the module LLVM destroyed as detached), so an interrupt between the two
leaves a record of a freed object that its finalizer frees again, a segfault. So the handler does not raise
in any of these, and until the interrupt has been taken it is raised again every RETRY_S from SIGALRM.
"""

from __future__ import annotations

import os
import signal
import sys
import threading

RETRY_S = 0.2
_CALLBACKS = {"_raw_object_cache_notify", "_raw_object_cache_getbuffer"}
_LLVMLITE = f"{os.sep}llvmlite{os.sep}"


def unsafe_to_raise(frame, base=None) -> bool:
    """Whether a frame, or one that called it up to `base` (not included), is one of the places above."""
    while frame is not None and frame is not base:
        code = frame.f_code
        if (code.co_name in _CALLBACKS or code.co_name == "__del__" or code.co_filename == "<string>"
                or _LLVMLITE in code.co_filename):
            return True
        frame = frame.f_back
    return False


class Interrupts:
    """The SIGINT (and SIGALRM, its retries) handler of the main thread between install and uninstall."""

    def __init__(self, base=None):
        self.base = base  # the frame whose callers are not looked at (the library's deferred block)
        self.active = False
        self.pending = False
        self._old = {}

    def install(self) -> "Interrupts":
        if threading.current_thread() is not threading.main_thread():
            return self  # signals only reach the main thread; leave them alone
        self._old = {signal.SIGINT: signal.signal(signal.SIGINT, self._on_signal),
                     signal.SIGALRM: signal.signal(signal.SIGALRM, self._on_signal)}
        self.active = True
        return self

    def _on_signal(self, signum, frame) -> None:
        if not self.active:
            return
        if signum == signal.SIGINT and not self.pending:
            self.pending = True
            signal.setitimer(signal.ITIMER_REAL, RETRY_S, RETRY_S)
        if self.pending and not unsafe_to_raise(frame, self.base):
            raise KeyboardInterrupt

    def stop(self) -> None:
        """The interrupt has arrived: no more retries, and a second Ctrl-C does not break the report."""
        self.active = False
        if self._old:
            signal.setitimer(signal.ITIMER_REAL, 0)

    def uninstall(self) -> None:
        self.stop()
        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old = {}


class deferred:
    """Library calls that may compile kernels (`with deferred():`): under Python's own SIGINT handler in the
    main thread (and no SIGALRM handler of the program's), Ctrl-C waits for a safe frame between the block
    and the place the signal lands (the frames that called the block are the program's), then
    KeyboardInterrupt leaves the block as usual; at the block's end a pending interrupt is raised. Anywhere
    else, the block runs as it is."""

    def __init__(self):
        self._ints: Interrupts | None = None

    def __enter__(self) -> "deferred":
        if (threading.current_thread() is threading.main_thread()
                and signal.getsignal(signal.SIGINT) is signal.default_int_handler
                and signal.getsignal(signal.SIGALRM) in (signal.SIG_DFL, None)):
            self._ints = Interrupts(base=sys._getframe(1)).install()
        return self

    def __exit__(self, kind, value, tb) -> None:
        ints, self._ints = self._ints, None
        if ints is None:
            return
        ints.uninstall()
        if kind is None and ints.pending:
            raise KeyboardInterrupt
