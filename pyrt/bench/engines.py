"""The two engines a benchmark drives, behind one small interface: pyrt (pyrt.load) and llama.cpp through
llama-cpp-python's low-level API (llama_decode + llama_batch_get_one, llama_memory_seq_rm).

Each engine decodes into sequence 0 only, at explicit positions, and synchronizes before returning, so the
caller's wall clock measures the work. Imports pyrt.runtime; llama_cpp only when asked for.
"""

from __future__ import annotations

import contextlib
import inspect
import os
import signal
import subprocess
import sys
import time

import numpy as np

from ..errors import InvalidArgumentError, UnsupportedError
from ..formats.cache_types import CACHE_TYPES as _CT
from ..formats.cache_types import LLAMA_CPP_CACHE_TYPES

CACHE_TYPES = LLAMA_CPP_CACHE_TYPES
MLA_ARCHS = ("deepseek2",)
LLAMA_CPP_MISSING = ("llama-cpp-python is not installed (pip install 'pyrt[compare]'); "
                     "--compare llama.cpp skipped, pyrt only")


def import_llama_cpp():
    """The llama_cpp module, or UnsupportedError with the one-line message the CLI prints."""
    try:
        import llama_cpp
    except ImportError:
        raise UnsupportedError(LLAMA_CPP_MISSING) from None
    return llama_cpp


def llama_cpp_version() -> str | None:
    try:
        return import_llama_cpp().__version__
    except UnsupportedError:
        return None


def _warm_ubatch(e) -> None:
    """sweep-bench's -wb warm-up: one full ubatch and one decode after it, then an empty cache. Compiles every
    kernel specialization a sweep uses and pages the weights in, outside the timings."""
    n = min(e.n_ubatch, e.n_ctx - 1)
    toks = np.random.default_rng(0).integers(0, e.n_vocab, n + 1).tolist()
    e.clear()
    e.decode(toks[:n], 0, logits_last=True)
    e.decode(toks[n:], n, logits_last=True)
    e.clear()


def _check_common(n_ctx, n_batch, n_ubatch, type_k, type_v):
    for name, v in (("n_ctx", n_ctx), ("n_batch", n_batch), ("n_ubatch", n_ubatch)):
        if int(v) <= 0:
            raise InvalidArgumentError(f"{name} must be positive, got {v}")
    for t in (type_k, type_v):
        if t not in CACHE_TYPES:
            raise InvalidArgumentError(f"cache type {t!r} is not supported (choose from {', '.join(CACHE_TYPES)})")


class PyrtEngine:
    """pyrt on one file; `t_load` (map + build) and `t_compile` (Numba compile/cache load + warm-up) apart."""

    name = "pyrt"
    flash_attn = 1  # pyrt always attends with its flash kernel

    def __init__(self, path: str, n_ctx: int = 4096, n_batch: int = 2048, n_ubatch: int = 512,
                 n_threads: int | None = None, type_k: str = "f16", type_v: str = "f16", mla: int | None = None,
                 warmup: bool = True, use_mmap: bool | None = None, device: str = "cpu"):
        from ..runtime.context import Batch
        from ..runtime.llm import LLM

        _check_common(n_ctx, n_batch, n_ubatch, type_k, type_v)
        kw = {}
        if mla is not None:
            if "mla" not in inspect.signature(LLM.__init__).parameters:
                raise UnsupportedError(f"-mla {mla}: this pyrt version has no MLA attention yet")
            kw["mla"] = mla
        t0 = time.perf_counter()
        self.llm = LLM(path, n_ctx=n_ctx, n_batch=max(n_batch, n_ubatch), n_ubatch=n_ubatch, n_threads=n_threads,
                       type_k=type_k, type_v=type_v, warmup=False, use_mmap=use_mmap, device=device, **kw)
        self.device = device
        self.t_load = time.perf_counter() - t0
        self.ctx = self.llm.ctx
        self._Batch = Batch
        self.n_ctx, self.n_batch, self.n_ubatch = self.ctx.n_ctx, self.ctx.n_batch, self.ctx.n_ubatch
        self.n_threads = self.llm.n_threads
        self.n_vocab = self.llm.n_vocab
        self.t_compile = 0.0
        if warmup:
            t0 = time.perf_counter()
            self.llm.warmup()
            _warm_ubatch(self)
            self.t_compile = time.perf_counter() - t0

    def clear(self) -> None:
        self.ctx.clear()

    def seq_rm(self, p0: int) -> None:
        """Removes positions >= p0 of sequence 0."""
        self.ctx.seq_rm(0, p0, -1)

    def decode(self, tokens, pos0: int, logits_last: bool = True) -> None:
        self.ctx.decode(self._Batch.from_tokens(tokens, pos0=pos0, logits="last" if logits_last else "none"))

    def n_cached(self) -> int:
        return int(self.ctx.cells.used)

    def close(self) -> None:
        self.llm = self.ctx = None


@contextlib.contextmanager
def _model_params(L, use_extra_bufts: bool):
    """llama-cpp-python's Llama() takes its model parameters from llama_model_default_params(), with no
    argument for use_extra_bufts: while this context is open, that function returns them with the given value."""
    C = L.llama_cpp
    orig = C.llama_model_default_params

    def params():
        p = orig()
        p.use_extra_bufts = use_extra_bufts
        return p

    C.llama_model_default_params = params
    try:
        yield
    finally:
        C.llama_model_default_params = orig


def _cpu_has_amx() -> bool:
    from ..backends.cpu import cpuinfo_field
    return "amx_int8" in cpuinfo_field("flags").split()


def _probe_main(path: str) -> None:
    """The child of llama_cpp_extra_bufts_work: llama.cpp's default buffers on `path`, one 32-token decode."""
    L = import_llama_cpp()
    llm = L.Llama(model_path=path, n_ctx=64, n_batch=32, n_ubatch=32, n_threads=1, n_threads_batch=1,
                  verbose=False)
    llm.eval(list(range(1, 33)))


_EXTRA_BUFTS_OK: dict = {}


def llama_cpp_extra_bufts_work(path: str) -> tuple[bool, str]:
    """(whether llama.cpp may keep its extra buffer types, why not). Where the CPU has AMX, llama.cpp puts the
    weights in its AMX buffers, and that backend dies with SIGSEGV in its matmul on some machines (this
    project's Xeon VM): a child process loads `path` and decodes 32 tokens first, and where the child dies
    by a signal the engine loads without extra buffer types (plain CPU buffers, no AMX or repacking: slower,
    but what every CPU runs). Other CPUs keep them unprobed. Memoized per file."""
    if not _cpu_has_amx():
        return True, ""
    key = os.path.realpath(path)
    if key not in _EXTRA_BUFTS_OK:
        code = "import sys; from pyrt.bench.engines import _probe_main; _probe_main(sys.argv[1])"
        try:
            rc = subprocess.run([sys.executable, "-c", code, path], timeout=1800, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL).returncode
        except (OSError, subprocess.SubprocessError) as e:
            rc, why = None, f"the probe could not run ({e})"
        if rc is not None and rc < 0:
            why = f"its AMX buffers died by {signal.Signals(-rc).name} in a probe"
        elif rc is not None:
            why = ""  # ran (rc 0), or failed for a reason of its own that the engine reports when it loads
        _EXTRA_BUFTS_OK[key] = (rc is not None and rc >= 0, why)
    return _EXTRA_BUFTS_OK[key]


class LlamaCppEngine:
    """llama.cpp through llama-cpp-python on the same file, threads, context and cache types.

    extra_bufts: llama.cpp's extra buffer types (AMX, repacked weights): None = keep them unless
    llama_cpp_extra_bufts_work says they crash here (`extra_bufts` and `why_no_extra_bufts` say what it did).
    """

    name = "llama.cpp"

    def __init__(self, path: str, n_ctx: int = 4096, n_batch: int = 2048, n_ubatch: int = 512,
                 n_threads: int | None = None, type_k: str = "f16", type_v: str = "f16", flash_attn: bool = True,
                 warmup: bool = True, use_mmap: bool = True, extra_bufts: bool | None = None):
        L = import_llama_cpp()
        _check_common(n_ctx, n_batch, n_ubatch, type_k, type_v)
        self.L = L
        self.why_no_extra_bufts = ""
        if extra_bufts is None:
            extra_bufts, self.why_no_extra_bufts = llama_cpp_extra_bufts_work(path)
        self.extra_bufts = bool(extra_bufts)
        n_threads = n_threads or None
        t0 = time.perf_counter()
        with _model_params(L, self.extra_bufts):
            self.llm = L.Llama(model_path=path, n_ctx=n_ctx, n_batch=max(n_batch, n_ubatch), n_ubatch=n_ubatch,
                               n_threads=n_threads, n_threads_batch=n_threads, type_k=_CT[type_k].ggml_type,
                               type_v=_CT[type_v].ggml_type, flash_attn=bool(flash_attn), use_mmap=use_mmap,
                               verbose=False)
        self.t_load = time.perf_counter() - t0
        self.ctx = self.llm._ctx.ctx
        self.mem = L.llama_get_memory(self.ctx)
        self.n_ctx = int(L.llama_n_ctx(self.ctx))
        self.n_batch = int(L.llama_n_batch(self.ctx))
        self.n_ubatch = int(L.llama_n_ubatch(self.ctx))
        self.n_threads = int(L.llama_n_threads(self.ctx))
        self.flash_attn = int(bool(flash_attn))
        self.n_vocab = int(self.llm.n_vocab())
        self.t_compile = 0.0
        if warmup:
            t0 = time.perf_counter()
            _warm_ubatch(self)
            self.t_compile = time.perf_counter() - t0

    def clear(self) -> None:
        self.L.llama_memory_clear(self.mem, True)

    def seq_rm(self, p0: int) -> None:
        if not self.L.llama_memory_seq_rm(self.mem, 0, p0, -1):
            raise UnsupportedError(f"llama.cpp: llama_memory_seq_rm(0, {p0}, -1) failed")

    def decode(self, tokens, pos0: int, logits_last: bool = True) -> None:
        # llama_batch_get_one places the tokens right after the sequence's last position
        have = int(self.L.llama_memory_seq_pos_max(self.mem, 0)) + 1
        if have != pos0:
            raise InvalidArgumentError(f"llama.cpp: decode at position {pos0}, but the sequence ends at {have}")
        toks = [int(t) for t in tokens]
        arr = (self.L.llama_token * len(toks))(*toks)
        rc = self.L.llama_decode(self.ctx, self.L.llama_batch_get_one(arr, len(toks)))
        if rc != 0:
            raise UnsupportedError(f"llama.cpp: llama_decode returned {rc}")
        self.L.llama_synchronize(self.ctx)

    def n_cached(self) -> int:
        return int(self.L.llama_memory_seq_pos_max(self.mem, 0)) + 1

    def close(self) -> None:
        if self.llm is not None:
            self.llm.close()
        self.llm = None


def model_arch(path: str) -> str:
    from ..io.gguf_file import GGUFFile
    f = GGUFFile(path, use_mmap=True)  # metadata only: map, do not read
    try:
        return f.architecture
    finally:
        f.close()


def open_engines(path: str, compare: str | None = None, n_ctx: int = 4096, n_batch: int = 2048,
                 n_ubatch: int = 512, n_threads: int | None = None, type_k: str = "f16", type_v: str = "f16",
                 flash_attn: bool = True, mla: int | None = None, warmup: bool = True,
                 log=None, use_mmap: bool | None = None, device: str = "cpu") -> list:
    """[pyrt] or [pyrt, llama.cpp]. A missing llama-cpp-python is reported through `log` and skipped.
    use_mmap: pyrt's (None: its automatic choice); llama.cpp maps or reads the file as pyrt did."""
    if compare not in (None, "llama.cpp"):
        raise InvalidArgumentError(f"--compare: only 'llama.cpp' is supported, got {compare!r}")
    if mla is not None:
        arch = model_arch(path)
        if arch not in MLA_ARCHS:
            raise InvalidArgumentError(f"-mla {mla}: {path} is a {arch} model without multi-head latent attention "
                                       f"(MLA applies to {', '.join(MLA_ARCHS)} files)")
    if compare:
        try:
            import_llama_cpp()
        except UnsupportedError as e:
            if log:
                log(str(e))
            compare = None
    if compare:
        # probed before pyrt loads (the probe's llama.cpp may copy the whole file into its AMX buffers);
        # memoized for the engine below
        why = llama_cpp_extra_bufts_work(path)[1]
        if why and log:
            log(f"llama.cpp: extra buffer types off ({why})")
    engines = [PyrtEngine(path, n_ctx, n_batch, n_ubatch, n_threads, type_k, type_v, mla=mla, warmup=warmup,
                          use_mmap=use_mmap, device=device)]
    if compare:
        py = engines[0]
        engines.append(LlamaCppEngine(path, py.n_ctx, py.n_batch, py.n_ubatch, py.n_threads, type_k, type_v,
                                      flash_attn=flash_attn, warmup=warmup, use_mmap=py.llm.file.use_mmap))
        if warmup:
            # pyrt's warm-up again, now that llama.cpp has mapped (MAP_POPULATE) and run the same file: loading
            # the other engine evicts pyrt's working set, and the first timed row must not pay for that
            _warm_ubatch(py)
    return engines


def random_tokens(rng: np.random.Generator, n_vocab: int, n: int) -> list[int]:
    return rng.integers(0, n_vocab, n).tolist()
