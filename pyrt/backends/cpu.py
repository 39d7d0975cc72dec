"""The CPU backend's host facts and threads: /proc/cpuinfo fields (the vendor picks ops.matmul's BLAS
crossover table), the worker pool that runs OpenBLAS single-threaded per task, and `in_passing_thread`.
Imports numpy and the standard library only; nothing from the rest of pyrt.

Numba's OpenMP layer gives each thread that runs a parallel kernel a team of workers for that thread's
life. While the process has no more such threads than CPUs, idle workers spin between kernels; with more
(two teams of n_threads = all cores) libgomp makes them sleep, and every parallel region then pays a
futex wake-up (~50 us against ~2 us; a Gemma 3 270M token went from ~12 to ~25 ms on 2 cores). So a
process runs its kernels in one long-lived thread: a model that another thread will decode (the serving
engine) is loaded in a passing thread, whose team ends with it.
"""

from __future__ import annotations

import threading

import numpy as np


def cpuinfo_field(key: str) -> str:
    """The first `key` line of /proc/cpuinfo ('vendor_id', 'model name'), or '' where there is none."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(key):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def is_amd() -> bool:
    """Whether this CPU is an AMD one (vendor_id AuthenticAMD)."""
    return cpuinfo_field("vendor_id") == "AuthenticAMD"


def _openblas_local_threads():
    """openblas_set_num_threads_local from the OpenBLAS numpy uses (None if not found)."""
    import ctypes
    import glob
    import os
    libs = os.path.join(os.path.dirname(os.path.dirname(np.__file__)), "numpy.libs")
    for path in glob.glob(os.path.join(libs, "*openblas*")) + glob.glob(os.path.join(np.__path__[0], ".dylibs", "*openblas*")):
        try:
            fn = ctypes.CDLL(path).openblas_set_num_threads_local
        except (OSError, AttributeError):
            continue
        fn.argtypes, fn.restype = [ctypes.c_int], ctypes.c_int
        return fn
    return None


class BlasPool:
    """Worker threads for the BLAS paths; each runs OpenBLAS single-threaded.

    Splitting output-row tiles over our own threads (dequantize + sgemm per tile) avoids OpenBLAS's
    busy-waiting worker threads fighting Numba's for the cores; tiles are fixed, so the result does
    not depend on the thread count.
    """

    def __init__(self):
        self.set_local = _openblas_local_threads()
        self.executor = None
        self.n = 0

    def map(self, fn, n_threads, items):
        if self.set_local is None or n_threads <= 1:
            prev = self.set_local(1) if self.set_local is not None else None  # 1 thread asked: 1 used
            try:
                for it in items:
                    fn(it)
            finally:
                if prev is not None:
                    self.set_local(prev)
            return
        if self.executor is None or self.n != n_threads:
            from concurrent.futures import ThreadPoolExecutor
            if self.executor is not None:
                self.executor.shutdown(wait=True)
            self.executor = ThreadPoolExecutor(n_threads, thread_name_prefix="pyrt-blas",
                                               initializer=self.set_local, initargs=(1,))
            self.n = n_threads
        # Workers take the next item as they free up (items listed largest first balance best); each
        # item writes its own part of the output, so which worker runs it does not change the result.
        todo = iter(items)
        lock = threading.Lock()

        def work():
            while True:
                with lock:
                    it = next(todo, _DONE)
                if it is _DONE:
                    return
                try:
                    fn(it)
                except BaseException:
                    with lock:           # the others stop at their next take
                        for _ in todo:
                            pass
                    raise

        for f in [self.executor.submit(work) for _ in range(n_threads)]:
            f.result()


_DONE = object()


def in_passing_thread(fn):
    """fn() run in a new thread that ends when fn returns: its result, or its exception raised here.
    The thread is a daemon, so an interrupted caller (Ctrl-C while a model loads) does not wait for it."""
    box: dict = {}

    def run():
        try:
            box["result"] = fn()
        except BaseException as e:  # noqa: BLE001 - handed to the caller
            box["error"] = e

    t = threading.Thread(target=run, name="pyrt-load", daemon=True)
    t.start()
    t.join()
    if "error" in box:
        raise box["error"]
    return box["result"]


_pool_lock = threading.Lock()
_pool: BlasPool | None = None


def blas_pool() -> BlasPool:
    """The process's one BlasPool (created on first use)."""
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = BlasPool()
        return _pool
