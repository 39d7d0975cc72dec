"""Read-only file mappings placed so that the kernel can back them with 2 MiB pages.

A GGUF file mapped with np.memmap lands at an address that is only 4 KiB aligned, so even when the
page cache holds the file in 2 MiB folios (ext4 and xfs create them on readahead) every weight
page costs its own TLB entry and page walk; streaming 1-8 GB of weights per token then runs at about
two thirds of the memory bandwidth. Mapping at a 2 MiB-aligned address lets the fault handler map
whole PMD folios (smaps: FilePmdMapped), and MADV_HUGEPAGE asks readahead to build them when the file is
not cached yet. The mapping stays a shared, read-only view of the file: nothing is copied.
Linux only (ctypes mmap); elsewhere, or on any failure, np.memmap. `read_file_anon` is the other way to
hold weights: a copy in anonymous memory (2 MiB pages where THP allows), with the file's page cache
dropped as it is read. Imports numpy and the stdlib only.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import sys

import numpy as np

HUGE_PAGE = 2 << 20
_MADV_HUGEPAGE = 14
_MAP_FIXED = 0x10
_libc = None


def _load_libc():
    global _libc
    if _libc is None:
        lib = ctypes.CDLL(None, use_errno=True)
        lib.mmap.restype = ctypes.c_void_p
        lib.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int,
                             ctypes.c_long]
        lib.munmap.restype = ctypes.c_int
        lib.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
        lib.madvise.restype = ctypes.c_int
        lib.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        lib.mincore.restype = ctypes.c_int
        lib.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
        _libc = lib
    return _libc


def _mapping_type(size: int):
    """A ctypes byte-array type whose instances unmap their memory when the last view is gone."""

    class _Mapping(ctypes.c_uint8 * size):
        def __del__(self):  # numpy views keep this object alive through .base
            _load_libc().munmap(ctypes.addressof(self), size)

    return _Mapping


def _map_aligned(path: str, size: int) -> np.ndarray:
    libc = _load_libc()
    fd = os.open(path, os.O_RDONLY)
    try:
        # reserve size + 2 MiB of address space, then put the file at the first 2 MiB boundary in it
        res = libc.mmap(None, size + HUGE_PAGE, mmap.PROT_NONE, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS, -1, 0)
        if res in (None, ctypes.c_void_p(-1).value):
            raise OSError(ctypes.get_errno(), "mmap reserve failed")
        addr = (res + HUGE_PAGE - 1) & ~(HUGE_PAGE - 1)
        p = libc.mmap(addr, size, mmap.PROT_READ, mmap.MAP_SHARED | _MAP_FIXED, fd, 0)
        if p != addr:
            libc.munmap(res, size + HUGE_PAGE)
            raise OSError(ctypes.get_errno(), "mmap failed")
        page = mmap.PAGESIZE
        end = (addr + size + page - 1) // page * page
        if addr > res:
            libc.munmap(res, addr - res)          # the slack before and after the file
        if res + size + HUGE_PAGE > end:
            libc.munmap(end, res + size + HUGE_PAGE - end)
        libc.madvise(addr, size, _MADV_HUGEPAGE)  # advice only: an error (EINVAL on old kernels) is fine
    finally:
        os.close(fd)
    arr = np.frombuffer(_mapping_type(size).from_address(addr), dtype=np.uint8)
    arr.flags.writeable = False
    return arr


def map_file(path: str) -> np.ndarray:
    """The whole file as a read-only uint8 array backed by a shared mapping (2 MiB aligned on Linux)."""
    size = os.path.getsize(path)
    if sys.platform.startswith("linux") and size > 0 and os.environ.get("PYRT_MMAP_ALIGN", "1") != "0":
        try:
            return _map_aligned(path, size)
        except (OSError, AttributeError):
            pass
    return np.memmap(path, dtype=np.uint8, mode="r")


# `read_file_anon` reads the file this many bytes at a time, dropping each chunk from the page cache after it
READ_CHUNK = 64 << 20


def mem_available() -> int | None:
    """MemAvailable of /proc/meminfo in bytes (free memory plus what the kernel can reclaim); None where unknown."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def read_file_anon(path: str) -> np.ndarray:
    """The whole file read into private anonymous memory, as a read-only uint8 array (2 MiB aligned).

    The memory gets MADV_HUGEPAGE where THP is allowed (with THP `madvise`, plain anonymous memory is
    4 KiB pages). The file is read READ_CHUNK bytes at a time and each chunk is dropped from the page cache
    right after (POSIX_FADV_DONTNEED), so the load never holds the weights twice and leaves no second copy
    behind; pages that another process maps or that are still dirty stay cached (the kernel keeps them).
    PYRT_READ_THP=0 leaves out the advice (4 KiB pages under THP `madvise`: an A/B knob). Where mmap has no
    MAP_PRIVATE (Windows), np.fromfile. OSError on any failure (no memory, a read error, the file shrinking
    while read).
    """
    size = os.path.getsize(path)
    if not hasattr(mmap, "MAP_PRIVATE"):
        arr = np.fromfile(path, dtype=np.uint8)
        arr.flags.writeable = False
        return arr
    with open(path, "rb", buffering=0) as fh:
        if size == 0:
            return np.zeros(0, np.uint8)
        length = -(-size // HUGE_PAGE) * HUGE_PAGE
        # MAP_PRIVATE: Python's default for fileno -1 is a shared (shmem) mapping, which THP `madvise` ignores
        mm = mmap.mmap(-1, length + HUGE_PAGE, flags=mmap.MAP_PRIVATE | getattr(mmap, "MAP_ANONYMOUS", 0x20))
        if sys.platform.startswith("linux") and _thp_allowed() and os.environ.get("PYRT_READ_THP", "1") != "0":
            try:
                mm.madvise(mmap.MADV_HUGEPAGE)  # advice only: an error (old kernels) is fine
            except (OSError, AttributeError, ValueError):
                pass
        whole = np.frombuffer(mm, dtype=np.uint8)
        start = -whole.ctypes.data % HUGE_PAGE  # the first 2 MiB boundary: whole PMDs for the weights
        view = memoryview(mm)[start:start + size]
        fd = fh.fileno()
        drop = getattr(os, "posix_fadvise", None)
        off = 0
        try:
            while off < size:
                n = fh.readinto(view[off:off + READ_CHUNK])
                if not n:
                    raise OSError(5, f"the file ended at byte {off} while it was read (it had {size})")
                if drop is not None:
                    drop(fd, off, n, os.POSIX_FADV_DONTNEED)
                off += n
            if drop is not None:  # what readahead brought in past the last chunk, and pages written back since
                drop(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            view.release()
    arr = whole[start:start + size]
    arr.flags.writeable = False
    return arr


def _resident_pages(arr: np.ndarray) -> np.ndarray | None:
    """Per 4 KiB page of a file mapping, whether the page cache holds it (mincore); None where unknown."""
    if not sys.platform.startswith("linux") or arr.size == 0:
        return None
    page = mmap.PAGESIZE
    start = arr.ctypes.data // page * page
    length = arr.ctypes.data + arr.size - start
    vec = np.zeros((length + page - 1) // page, np.uint8)
    try:
        if _load_libc().mincore(start, length, vec.ctypes.data) != 0:
            return None
    except (OSError, AttributeError):
        return None
    return (vec & 1).astype(bool)


def resident_fraction(arr: np.ndarray) -> float:
    """Share of the pages of a file mapping that the page cache holds; 1.0 where unknown."""
    v = _resident_pages(arr)
    return 1.0 if v is None else float(np.count_nonzero(v)) / v.size


def prefetch(path: str, arr: np.ndarray) -> bool:
    """Brings the parts of a mapped file that the page cache lacks back in as 2 MiB folios, in file order.

    llama.cpp populates its mapping at load (MAP_POPULATE) for the same reason: the weights are read
    anyway on the first tokens. Touching one byte per 2 MiB range through our MADV_HUGEPAGE mapping makes
    readahead build PMD-sized folios (faults in the order the model touches the weights would leave
    many of them small); a range with holes is dropped first (POSIX_FADV_DONTNEED, clean pages only)
    so that it comes back whole. Our page tables are dropped again afterwards, so RSS does not grow.
    Skipped when the file is larger than 3/4 of the available memory. Returns whether it read anything.
    """
    res = _resident_pages(arr)
    if res is None or res.all() or arr.ctypes.data % HUGE_PAGE:
        return False
    try:
        avail = mem_available()
        if avail and arr.size > avail * 3 // 4:
            return False
        libc = _load_libc()
        libc.posix_fadvise.argtypes = [ctypes.c_int, ctypes.c_long, ctypes.c_long, ctypes.c_int]
        per = HUGE_PAGE // mmap.PAGESIZE
        fd = os.open(path, os.O_RDONLY)
        try:
            for i in range(0, res.size, per):
                r = res[i:i + per]
                if r.all():
                    continue
                off = i * mmap.PAGESIZE
                if r.any():
                    libc.posix_fadvise(fd, off, HUGE_PAGE, 4)  # POSIX_FADV_DONTNEED
                arr[off]  # the fault reads the whole 2 MiB range (and readahead the next)
            rest = _resident_pages(arr)  # what readahead left out (the file's tail, say): plain reads
            if rest is not None and not rest.all():
                for i in range(0, rest.size, per):
                    if not rest[i:i + per].all():
                        os.pread(fd, HUGE_PAGE, i * mmap.PAGESIZE)
        finally:
            os.close(fd)
        libc.madvise(arr.ctypes.data, arr.size, 4)  # MADV_DONTNEED: unmap our view; the page cache keeps it
    except OSError:
        return False
    return True


# Below this share of a cached file's 2 MiB ranges held in 2 MiB folios, `rebuild_split_folios` reads it again.
MIN_HUGE_SHARE = 0.5
PROBE_RANGES = 32  # 2 MiB ranges re-read first (one run), to see whether they come back as 2 MiB folios here


def _thp_allowed() -> bool:
    try:
        with open("/sys/kernel/mm/transparent_hugepage/enabled") as fh:
            return "[never]" not in fh.read()
    except OSError:
        return False


def _pmd_bytes(arr: np.ndarray) -> int | None:
    r = huge_page_share(arr)
    return None if r is None else int(round(r[0] * r[1])) << 20


def _touch(arr: np.ndarray, ranges) -> int:
    """Reads one byte of each 2 MiB range: maps a whole 2 MiB folio where the page cache has one."""
    s = 0
    for i in ranges:
        s += int(arr[i * HUGE_PAGE])
    return s


def rebuild_split_folios(path: str, arr: np.ndarray) -> bool:
    """Reads a cached file again when most of it sits in small folios; returns whether it did.

    The page cache may hold a file in 4 KiB folios although it was read in 2 MiB ones: written just
    now, or split by the host over time (VM hosts do this to idle cached files). Decode then streams the
    weights through 4 KiB pages, which costs page walks (bench/README, "Rules these numbers taught"). The file's share is measured by mapping one byte per 2 MiB
    range (smaps FilePmdMapped). Below MIN_HUGE_SHARE, a run of PROBE_RANGES ranges in the middle of the
    file is dropped (POSIX_FADV_DONTNEED, clean pages only) and read back first; only if it returns in 2 MiB
    folios is the whole file dropped and read back in file order (as `prefetch` does: isolated faults read
    small folios, one sequential pass lets readahead build large ones). Pages that another
    process maps stay as they are. Our page tables are dropped again afterwards.
    """
    n = arr.size // HUGE_PAGE
    if (not sys.platform.startswith("linux") or n < 2 * PROBE_RANGES or arr.ctypes.data % HUGE_PAGE
            or not _thp_allowed()):
        return False
    res = _resident_pages(arr)
    if res is None or not res.all():
        return False
    libc = _load_libc()
    unmap = lambda: libc.madvise(arr.ctypes.data, arr.size, 4)  # noqa: E731  (MADV_DONTNEED of our view)
    try:
        _touch(arr, range(n))
        have = _pmd_bytes(arr)
        unmap()
        if have is None or have >= MIN_HUGE_SHARE * n * HUGE_PAGE:
            return False
        libc.posix_fadvise.argtypes = [ctypes.c_int, ctypes.c_long, ctypes.c_long, ctypes.c_int]
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)  # dirty pages (a file written just now) are not dropped

            def reread(ranges):
                for i in ranges:
                    libc.posix_fadvise(fd, i * HUGE_PAGE, HUGE_PAGE, 4)  # POSIX_FADV_DONTNEED
                _touch(arr, ranges)  # the faults read each range back (and readahead the next)

            mid = (n - PROBE_RANGES) // 2  # one run of ranges: readahead builds 2 MiB folios on sequential faults
            probe = list(range(mid, mid + PROBE_RANGES))
            _touch(arr, probe)
            before = _pmd_bytes(arr)
            unmap()
            reread(probe)
            after = _pmd_bytes(arr)
            unmap()
            if before is None or after is None or after - before < (len(probe) * HUGE_PAGE - before) // 4:
                return False  # they came back small (no large folios for this file here): nothing to gain
            libc.posix_fadvise(fd, 0, 0, 4)  # then the whole file, read back in one sequential pass
            _touch(arr, range(n))
            rest = _resident_pages(arr)  # what readahead left out: plain reads
            if rest is not None and not rest.all():
                per = HUGE_PAGE // mmap.PAGESIZE
                for i in range(0, rest.size, per):
                    if not rest[i:i + per].all():
                        os.pread(fd, HUGE_PAGE, i * mmap.PAGESIZE)
        finally:
            os.close(fd)
            unmap()
    except (OSError, AttributeError):
        return False
    return True


def drop_from_page_cache(path: str) -> None:
    """Writes a file back and drops its clean pages from the page cache (POSIX_FADV_DONTNEED).

    For tools that have just written a model: the write leaves it cached in small folios, so the
    first load would map it through 4 KiB pages; dropped, the load's prefetch reads it back in 2 MiB folios.
    """
    if not hasattr(os, "posix_fadvise"):
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    except OSError:
        pass
    finally:
        os.close(fd)


def huge_page_share(arr: np.ndarray) -> tuple[float, float] | None:
    """(resident MiB, share of it mapped in 2 MiB pages) of the mapping holding arr, from /proc/self/smaps.

    Tells whether decode streams the weights through huge pages (the page cache may hold a file in small
    folios: written just now, or split by the host). A file mapping counts FilePmdMapped, anonymous memory
    (`read_file_anon`) AnonHugePages. None where unknown.
    """
    if not sys.platform.startswith("linux") or arr.size == 0:
        return None
    addr = arr.ctypes.data
    try:
        with open("/proc/self/smaps") as fh:
            inside = False
            rss = pmd = None
            for line in fh:
                head = line.split(None, 1)[0]
                if "-" in head and not head.endswith(":"):
                    lo, hi = (int(v, 16) for v in head.split("-"))
                    if inside:
                        break
                    inside = lo <= addr < hi
                elif inside and head == "Rss:":
                    rss = int(line.split()[1])
                elif inside and head in ("FilePmdMapped:", "AnonHugePages:"):
                    pmd = (pmd or 0) + int(line.split()[1])
    except (OSError, ValueError):
        return None
    if rss is None or pmd is None:
        return None
    return rss / 1024.0, (pmd / rss if rss else 0.0)
