"""Ctrl-C where kernels compile: a SIGINT handler that raises KeyboardInterrupt only where Python and
llvmlite can take it, used by the CLI for a whole command, by the library while the warm-up runs, and by
the library whenever Numba compiles or loads a kernel (guard_compiles).

Python raises KeyboardInterrupt wherever the main thread is when the signal is handled. Some places lose
it: a ctypes callback (llvmlite calls Numba's cache through them while kernels load) prints "Exception
ignored on calling ctypes callback function" and goes on; code run by exec/eval of a string (imports
inside Numba and the standard library do that) lets it through but marks the interpreter, which then
kills itself with SIGINT at exit instead of returning the caller's exit code; a finalizer (`__del__`, such
as llvmlite's ObjectRef.__del__ while kernels load) or a weakref callback (the import system's module locks
have one) prints "Exception ignored in ..." with a traceback and goes on. One place it corrupts: llvmlite
records in Python who owns each LLVM object after the C call that changed it (`link_modules` marks the
module LLVM destroyed as detached), so an interrupt between the two leaves a record of a freed object that
its finalizer frees again, a segfault. So the handler does not raise in any of these, nor where the signal
lands in the import system's own code (its weakref callbacks cannot be told apart from the rest of it; an
interrupt in a module body being imported is raised as usual), and until the interrupt has been taken it is
raised again every RETRY_S from SIGALRM.
"""

from __future__ import annotations

import os
import signal
import sys
import threading

RETRY_S = 0.2
_CALLBACKS = {"_raw_object_cache_notify", "_raw_object_cache_getbuffer"}
_LLVMLITE = f"{os.sep}llvmlite{os.sep}"
_IMPORT_SYSTEM = "<frozen importlib."


def unsafe_to_raise(frame, base=None) -> bool:
    """Whether a frame, or one that called it up to `base` (not included), is one of the places above; the
    import system's code counts only as the frame itself (the import system calls module bodies)."""
    if frame is not None and frame.f_code.co_filename.startswith(_IMPORT_SYSTEM):
        return True
    while frame is not None and frame is not base:
        code = frame.f_code
        if (code.co_name in _CALLBACKS or code.co_name == "__del__" or code.co_filename == "<string>"
                or _LLVMLITE in code.co_filename):
            return True
        frame = frame.f_back
    return False


class Interrupts:
    """The SIGINT (and SIGALRM, its retries) handler of the main thread between install and uninstall."""

    def __init__(self, base=None, once=False):
        self.base = base  # the frame whose callers are not looked at (the library's deferred block)
        self.once = once  # uninstall at the first KeyboardInterrupt raised (no retries, the program's handlers back)
        self.active = False
        self.pending = False
        self.raised = False
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
            self.raised = True
            if self.once:
                self.uninstall()
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


def _python_handlers() -> bool:
    """The main thread, under Python's own SIGINT handler and no SIGALRM handler of the program's."""
    return (threading.current_thread() is threading.main_thread()
            and signal.getsignal(signal.SIGINT) is signal.default_int_handler
            and signal.getsignal(signal.SIGALRM) in (signal.SIG_DFL, None))


class deferred:
    """Library calls that may compile kernels (`with deferred():`): under Python's own SIGINT handler in the
    main thread (and no SIGALRM handler of the program's), Ctrl-C waits for a safe frame between the block
    and the place the signal lands (the frames that called the block are the program's), then
    KeyboardInterrupt leaves the block as usual; at the block's end a pending interrupt is raised. Anywhere
    else, the block runs as it is."""

    def __init__(self):
        self._ints: Interrupts | None = None

    def __enter__(self) -> "deferred":
        if _python_handlers():
            self._ints = Interrupts(base=sys._getframe(1)).install()
        return self

    def __exit__(self, kind, value, tb) -> None:
        ints, self._ints = self._ints, None
        if ints is None:
            return
        ints.uninstall()
        if kind is None and ints.pending:
            raise KeyboardInterrupt


def _program_frame(frame, internal):
    """The innermost frame, from `frame` outwards, of code outside the package folders `internal`."""
    while frame is not None and frame.f_code.co_filename.startswith(internal):
        frame = frame.f_back
    return frame


class _CompileGuard:
    """A listener of Numba's compiler lock (taken to compile a kernel or load it from the disk cache): from the
    main thread's outermost acquire to its release, under Python's own handlers, Ctrl-C is deferred as in
    `deferred` (the program's frames are not looked at), raised once at a safe frame or at the release."""

    def __init__(self, lock, internal: tuple):
        self._lock = lock
        self._internal = internal  # Numba's, llvmlite's and pyrt's folders, each ending in a separator
        self._ints: Interrupts | None = None

    def on_start(self, event) -> None:  # before the acquire
        if threading.current_thread() is not threading.main_thread() or self._lock.is_locked():
            return
        if self._ints is not None:  # an acquire that a raised interrupt left without its release
            self._ints.uninstall()
            self._ints = None
        if _python_handlers():
            self._ints = Interrupts(base=_program_frame(sys._getframe(1), self._internal), once=True).install()

    def on_end(self, event) -> None:  # after the release
        if (threading.current_thread() is not threading.main_thread() or self._lock.is_locked()
                or self._ints is None):
            return
        ints, self._ints = self._ints, None
        ints.uninstall()
        if ints.pending and not ints.raised:
            raise KeyboardInterrupt


_guard: list = []


def guard_compiles() -> None:
    """Registers _CompileGuard with Numba's event system (once per process)."""
    if _guard:
        return
    import llvmlite
    import numba
    from numba.core import event
    from numba.core.compiler_lock import global_compiler_lock
    internal = tuple(os.path.dirname(m.__file__) + os.sep for m in (numba, llvmlite, sys.modules["pyrt"]))

    class Listener(event.Listener):
        def __init__(self, guard):
            super().__init__()
            self.guard = guard

        def on_start(self, ev):
            self.guard.on_start(ev)

        def on_end(self, ev):
            self.guard.on_end(ev)

    listener = Listener(_CompileGuard(global_compiler_lock, internal))
    event.register("numba:compiler_lock", listener)
    _guard.append(listener)
