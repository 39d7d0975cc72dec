"""Files that pyrt writes (state and prompt-cache files, its cache folder): replaced whole or not at all, read
back whole.

A file is written to `.<name>.pyrt-tmp.<pid>` in its own folder, fsynced, renamed over the target and the
folder fsynced; on any failure (full disk, signal) the temp file is removed, and temp files of processes
that died mid-write (SIGKILL, power loss) are removed by the next write or read of the same target.
Imports only os, pathlib and pyrt.errors.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import FileAccessError

TMP_MARK = ".pyrt-tmp."


def cache_dir() -> Path:
    """pyrt's cache folder: $PYRT_CACHE, else ~/.cache/pyrt (the default model, the CPU probes' verdicts)."""
    return Path(os.environ.get("PYRT_CACHE") or Path.home() / ".cache" / "pyrt")


def temp_path(path, pid: int | None = None) -> str:
    """Where `path` is written before the rename: `.<name>.pyrt-tmp.<pid>` beside it."""
    path = os.fspath(path)
    folder, name = os.path.split(path)
    return os.path.join(folder, f".{name}{TMP_MARK}{os.getpid() if pid is None else pid}")


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return False  # a temp file of ours that is not open now is left over from a dead namesake
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's live process
    return True


def remove_stale_temps(path) -> list[str]:
    """Removes the temp files of `path` left by processes that no longer run; returns their paths."""
    path = os.fspath(path)
    folder, name = os.path.split(path)
    prefix = f".{name}{TMP_MARK}"
    removed = []
    try:
        entries = os.listdir(folder or ".")
    except OSError:
        return removed
    for e in entries:
        if not e.startswith(prefix) or not e[len(prefix):].isdigit():
            continue
        if _alive(int(e[len(prefix):])):
            continue
        p = os.path.join(folder, e)
        try:
            os.unlink(p)
            removed.append(p)
        except OSError:
            pass
    return removed


def _fsync_dir(folder: str) -> None:
    try:
        fd = os.open(folder or ".", os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return  # not supported here (some file systems): the rename itself is still atomic
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_file_atomic(path, parts, what: str = "file", error=FileAccessError) -> int:
    """Writes the buffers `parts` (bytes-like, in order) as the new content of `path`; returns the bytes
    written. Either the whole new file is in place or the old one (if any) is untouched; raises `error`
    (a FileAccessError class) with the OSError as cause."""
    path = os.path.realpath(os.fspath(path))  # through a symlink: replace its target, not the link
    if os.path.exists(path) and not os.path.isfile(path):
        raise error(f"cannot write {what} {path}: it exists and is not a regular file")
    remove_stale_temps(path)
    tmp = temp_path(path)
    n = 0
    try:
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_CLOEXEC", 0), 0o666)
        except OSError as e:
            raise error.wrap(f"cannot write {what} {path}", e) from e
        try:
            for part in parts:
                mv = memoryview(part).cast("B")
                while mv.nbytes:
                    k = os.write(fd, mv)
                    mv = mv[k:]
                    n += k
            os.fsync(fd)
        except OSError as e:
            raise error.wrap(f"cannot write {what} {path}", e) from e
        finally:
            os.close(fd)
        try:
            os.replace(tmp, path)
        except OSError as e:
            raise error.wrap(f"cannot write {what} {path}", e) from e
    except BaseException:  # also KeyboardInterrupt: never leave the temp file behind
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    _fsync_dir(os.path.dirname(path))
    return n


def read_file(path) -> bytes:
    """The whole content of `path` (OSError when it cannot be read)."""
    with open(path, "rb") as fh:
        return fh.read()
