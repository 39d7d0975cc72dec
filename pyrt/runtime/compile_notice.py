"""What stderr shows while Numba compiles pyrt's kernels (a cold disk cache: the first run, a new Numba, an
edited kernel file): one line when the first compilation starts, a tqdm bar over the caller's steps on a
terminal, and one closing line with the number of functions compiled and the time. It listens to Numba's
`numba:compile` event, which fires only when a function is not loaded from the disk cache, so a warm cache
prints nothing. Imports numba and tqdm only.
"""

from __future__ import annotations

import os
import sys
import time

from numba.core import event as nb_event

MESSAGE = "compiling kernels, first run only (they are cached on disk for later runs) ..."


class _Listener(nb_event.Listener):
    def __init__(self, owner: "CompileNotice"):
        self.owner = owner

    def on_start(self, event):
        self.owner._compiling(event.data.get("dispatcher"))

    def on_end(self, event):
        pass


class CompileNotice:
    """Context manager around work that may compile kernels; `step()` after each of its `total` steps."""

    def __init__(self, total: int, stream=None, enabled: bool = True, prefix: str = "pyrt: "):
        self.total = int(total)
        self.stream = sys.stderr if stream is None else stream
        self.enabled = enabled
        self.prefix = prefix
        self.done = 0
        self.n_compiled = 0  # functions compiled (not loaded from the disk cache)
        self._t0 = 0.0
        self._bar = None
        self._started = False
        self._listener = _Listener(self)

    @property
    def cold(self) -> bool:
        """Whether anything was compiled so far."""
        return self._started

    def __enter__(self) -> "CompileNotice":
        self._t0 = time.perf_counter()
        nb_event.register("numba:compile", self._listener)
        return self

    def __exit__(self, *exc) -> None:
        nb_event.unregister("numba:compile", self._listener)
        if self._bar is not None:
            self._bar.close()
        if self._started and self.enabled and exc[0] is None:
            self._print(f"compiled {self.n_compiled} functions in {time.perf_counter() - self._t0:.1f} s")

    def step(self, n: int = 1) -> None:
        self.done += n
        if self._bar is not None:
            self._bar.update(n)

    def _print(self, text: str) -> None:
        try:
            print(f"{self.prefix}{text}", file=self.stream, flush=True)
        except (OSError, ValueError):  # a closed or broken stderr must not stop the work
            pass

    def _compiling(self, dispatcher) -> None:
        func = getattr(dispatcher, "py_func", None)
        name = getattr(func, "__qualname__", "?")
        self.n_compiled += 1
        if not self.enabled:
            self._started = True
            return
        if not self._started:
            self._started = True
            self._print(MESSAGE)
            if self._is_tty():
                from tqdm import tqdm
                cols, rows = self._shape()
                self._bar = tqdm(total=self.total, initial=self.done, file=self.stream, unit="step",
                                 desc=f"{self.prefix}compiling", leave=False, ncols=cols, nrows=rows)
        if self._bar is not None:
            self._bar.set_postfix_str(name, refresh=True)

    def _shape(self) -> tuple[int, int]:
        """(columns, rows) of the terminal; a terminal that reports 0 (some ptys) would get no bar from tqdm."""
        try:
            size = os.get_terminal_size(self.stream.fileno())
            cols, rows = size.columns, size.lines
        except (AttributeError, ValueError, OSError):
            cols = rows = 0
        return (cols if cols > 20 else 80), (rows if rows > 0 else 24)

    def _is_tty(self) -> bool:
        try:
            return self.stream.isatty()
        except (AttributeError, ValueError):
            return False
