"""GGUF files: header, metadata and tensor table, with the tensor data mapped or read whole into memory.

Owns parsing and validation of the container and the choice between mapping and reading (`choose_mmap`).
Tensors are exposed as read-only uint8 views of the file's bytes (`Weight.raw`, [n_rows, row_bytes]);
nothing is dequantized here.
Imports only numpy, gguf (constants) and pyrt.errors / pyrt.formats.

Why not `gguf.GGUFReader` itself: it builds one numpy array per array element, which takes ~10 s for
the 152k-token qwen2 vocabulary (measured here). We parse the same layout on the same `np.memmap`,
use gguf's type tables, and cross-check every field against GGUFReader in tests/test_gguf_file.py.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from typing import Any

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFValueType

from ..errors import ModelFileError, UnsupportedError
from .mapping import map_file, mem_available, prefetch, read_file_anon, rebuild_split_folios

GGUF_MAGIC = b"GGUF"
DEFAULT_ALIGNMENT = 32
# Hard limits that keep a corrupt header from making us loop or allocate for ever.
MAX_COUNT = 1 << 24
MAX_DIMS = 4
# what GGUFFile.fingerprint samples of every tensor
FP_BLOCKS, FP_BLOCK = 9, 4096
FP_STRIDE, FP_STRIDE_BYTES = 1 << 20, 64

_SCALAR = {
    GGUFValueType.UINT8: ("<B", 1),
    GGUFValueType.INT8: ("<b", 1),
    GGUFValueType.UINT16: ("<H", 2),
    GGUFValueType.INT16: ("<h", 2),
    GGUFValueType.UINT32: ("<I", 4),
    GGUFValueType.INT32: ("<i", 4),
    GGUFValueType.FLOAT32: ("<f", 4),
    GGUFValueType.BOOL: ("<?", 1),
    GGUFValueType.UINT64: ("<Q", 8),
    GGUFValueType.INT64: ("<q", 8),
    GGUFValueType.FLOAT64: ("<d", 8),
}
_NP = {
    GGUFValueType.UINT8: "<u1", GGUFValueType.INT8: "<i1", GGUFValueType.UINT16: "<u2",
    GGUFValueType.INT16: "<i2", GGUFValueType.UINT32: "<u4", GGUFValueType.INT32: "<i4",
    GGUFValueType.FLOAT32: "<f4", GGUFValueType.BOOL: "?", GGUFValueType.UINT64: "<u8",
    GGUFValueType.INT64: "<i8", GGUFValueType.FLOAT64: "<f8",
}


def type_name(ggml_type: int) -> str:
    try:
        return GGMLQuantizationType(ggml_type).name
    except ValueError:
        return f"type#{ggml_type}"


@dataclass(frozen=True)
class Weight:
    """One tensor of the file. `shape` is numpy (row-major) order: the last axis is ggml's ne0."""

    name: str
    ggml_type: int
    shape: tuple[int, ...]
    offset: int  # absolute byte offset in the file
    nbytes: int
    raw: np.ndarray  # [prod(shape[:-1]), row_bytes] uint8, read-only view of the map

    @property
    def type_name(self) -> str:
        return type_name(self.ggml_type)

    @property
    def n_per_row(self) -> int:
        return self.shape[-1]

    @property
    def n_elements(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))


class _Cursor:
    """Bounds-checked little-endian reader over the mapped bytes."""

    def __init__(self, buf: memoryview, path: str):
        self.buf = buf
        self.pos = 0
        self.path = path
        self.size = len(buf)

    def need(self, n: int, what: str) -> None:
        if n < 0 or self.pos + n > self.size:
            raise ModelFileError(
                f"{self.path}: truncated or corrupt GGUF file (reading {what} at byte {self.pos}, "
                f"file has {self.size} bytes)"
            )

    def scalar(self, vtype: GGUFValueType, what: str):
        fmt, n = _SCALAR[vtype]
        self.need(n, what)
        v = struct.unpack_from(fmt, self.buf, self.pos)[0]
        self.pos += n
        return v

    def u32(self, what: str) -> int:
        return self.scalar(GGUFValueType.UINT32, what)

    def u64(self, what: str) -> int:
        return self.scalar(GGUFValueType.UINT64, what)

    def string(self, what: str) -> str:
        n = self.u64(what + " length")
        self.need(n, what)
        s = bytes(self.buf[self.pos:self.pos + n]).decode("utf-8", errors="surrogateescape")
        self.pos += n
        return s

    def count(self, what: str) -> int:
        n = self.u64(what)
        if n > MAX_COUNT:
            raise ModelFileError(f"{self.path}: corrupt GGUF file ({what} = {n} is implausible)")
        return n

    def value(self, vtype: int, key: str) -> Any:
        try:
            vtype = GGUFValueType(vtype)
        except ValueError:
            raise ModelFileError(f"{self.path}: corrupt GGUF file (unknown value type {vtype} for key {key!r})")
        if vtype == GGUFValueType.STRING:
            return self.string(key)
        if vtype == GGUFValueType.ARRAY:
            itype = self.u32(key + " array type")
            n = self.count(key + " array length")
            try:
                itype = GGUFValueType(itype)
            except ValueError:
                raise ModelFileError(f"{self.path}: corrupt GGUF file (unknown array type {itype} for {key!r})")
            if itype == GGUFValueType.STRING:
                return self._string_array(n, key)
            if itype == GGUFValueType.ARRAY:
                return [self.value(GGUFValueType.ARRAY, key) for _ in range(n)]
            dt = np.dtype(_NP[itype])
            self.need(n * dt.itemsize, key)
            arr = np.frombuffer(self.buf, dtype=dt, count=n, offset=self.pos).copy()
            self.pos += n * dt.itemsize
            return arr
        return self.scalar(vtype, key)

    def _string_array(self, n: int, key: str) -> list[str]:
        buf, pos, size = self.buf, self.pos, self.size
        out = []
        append = out.append
        unpack = struct.Struct("<Q").unpack_from
        for _ in range(n):
            if pos + 8 > size:
                self.pos = pos
                self.need(8, key)
            ln = unpack(buf, pos)[0]
            pos += 8
            if pos + ln > size:
                self.pos = pos
                self.need(ln, key)
            append(str(buf[pos:pos + ln], "utf-8", "surrogateescape"))
            pos += ln
        self.pos = pos
        return out


# use_mmap=None reads the file when it is at most this share of MemAvailable, and maps it otherwise
READ_MAX_SHARE = 0.5


def choose_mmap(file_size: int, avail: int | None) -> tuple[bool, str]:
    """The automatic choice (use_mmap=None): (map it?, why). Read into anonymous memory when the file takes
    at most READ_MAX_SHARE of the available memory: decode from private memory keeps its speed whatever the
    page cache went through (a mapping of a file whose page-cache folios were split runs up to 30% slower,
    bench/results/mmap-states-*), and the rest leaves room for the KV cache and other processes. A larger
    file, or one on a system that does not say how much memory it has, is mapped (it runs from the page cache
    even when it does not fit)."""
    gib = 1 << 30
    if avail is None:
        return True, "mapped (available memory unknown)"
    if file_size <= READ_MAX_SHARE * avail:
        return False, (f"read ({file_size / gib:.2f} GiB file <= {READ_MAX_SHARE:g} x {avail / gib:.2f} GiB "
                       f"available)")
    return True, f"mapped ({file_size / gib:.2f} GiB file > {READ_MAX_SHARE:g} x {avail / gib:.2f} GiB available)"


class GGUFFile:
    """A parsed, validated GGUF file with its tensors mapped or read into memory.

    use_mmap: True maps the file (shared, read-only: processes on one host share one copy in the page
    cache); False reads it into anonymous memory (io.mapping.read_file_anon: 2 MiB pages, the page cache
    dropped as it reads); None (default) chooses by size (`choose_mmap`). Afterwards `use_mmap` says what
    was done, `mmap_requested` what was asked and `load_choice` why, in words."""

    def __init__(self, path: str | os.PathLike, use_mmap: bool | None = None):
        self.path = os.fspath(path)
        if not os.path.exists(self.path):
            raise ModelFileError(f"{self.path}: no such file")
        if os.path.isdir(self.path):
            raise ModelFileError(f"{self.path}: is a directory, not a GGUF file")
        self.file_size = os.path.getsize(self.path)
        if self.file_size < 24:
            with open(self.path, "rb") as fh:
                head = fh.read(4)
            what = "truncated GGUF file" if head == GGUF_MAGIC else "not a GGUF file"
            raise ModelFileError(f"{self.path}: {what} (only {self.file_size} bytes)")
        self.mmap_requested = use_mmap
        if use_mmap is None:
            use_mmap, why = choose_mmap(self.file_size, mem_available())
            self.load_choice = "auto: " + why
        else:
            use_mmap = bool(use_mmap)
            self.load_choice = "mapped (use_mmap=True)" if use_mmap else "read (use_mmap=False)"
        try:
            self._data = map_file(self.path) if use_mmap else read_file_anon(self.path)
        except OSError as e:
            raise ModelFileError(f"{self.path}: cannot read: {e.strerror or e}")
        self.use_mmap = use_mmap
        self.metadata: dict[str, Any] = {}
        self.tensors: dict[str, Weight] = {}
        self._parse()

    # -- parsing ---------------------------------------------------------------------------------
    def _parse(self) -> None:
        cur = _Cursor(memoryview(self._data), self.path)
        cur.need(4, "magic")
        magic = bytes(cur.buf[0:4])
        if magic != GGUF_MAGIC:
            raise ModelFileError(f"{self.path}: not a GGUF file (magic {magic!r}, expected b'GGUF')")
        cur.pos = 4
        self.version = cur.u32("version")
        if self.version not in (2, 3):
            if self.version & 0xFFFFFF == 0 and (self.version >> 24) in (2, 3):
                raise UnsupportedError(f"{self.path}: big-endian GGUF files are not supported")
            raise ModelFileError(f"{self.path}: unsupported GGUF version {self.version} (supported: 2, 3)")
        n_tensors = cur.count("tensor count")
        n_kv = cur.count("metadata count")
        for _ in range(n_kv):
            key = cur.string("metadata key")
            vtype = cur.u32(f"type of {key!r}")
            self.metadata[key] = cur.value(vtype, key)

        align = self.metadata.get("general.alignment", DEFAULT_ALIGNMENT)
        if not isinstance(align, int) or align <= 0 or align & (align - 1):
            raise ModelFileError(f"{self.path}: invalid general.alignment {align!r}")
        self.alignment = align

        infos = []
        for _ in range(n_tensors):
            name = cur.string("tensor name")
            n_dims = cur.u32(f"dimension count of {name!r}")
            if not 1 <= n_dims <= MAX_DIMS:
                raise ModelFileError(f"{self.path}: tensor {name!r} has {n_dims} dimensions")
            ne = [cur.u64(f"shape of {name!r}") for _ in range(n_dims)]
            ttype = cur.u32(f"type of {name!r}")
            offset = cur.u64(f"offset of {name!r}")
            infos.append((name, ne, ttype, offset))

        data_start = (cur.pos + align - 1) // align * align
        self.data_offset = data_start
        ends = []
        for name, ne, ttype, offset in infos:
            if name in self.tensors:
                raise ModelFileError(f"{self.path}: duplicate tensor {name!r}")
            try:
                qt = GGMLQuantizationType(ttype)
                block, tsize = GGML_QUANT_SIZES[qt]
            except (ValueError, KeyError):
                raise ModelFileError(f"{self.path}: tensor {name!r} has unknown type id {ttype}")
            if any(d <= 0 or d > (1 << 40) for d in ne):
                raise ModelFileError(f"{self.path}: tensor {name!r} has invalid shape {ne}")
            if ne[0] % block:
                raise ModelFileError(
                    f"{self.path}: tensor {name!r} row length {ne[0]} is not a multiple of the "
                    f"{qt.name} block size {block}")
            row_bytes = ne[0] // block * tsize
            n_rows = int(np.prod(ne[1:], dtype=np.int64)) if len(ne) > 1 else 1
            nbytes = row_bytes * n_rows
            if offset % align:
                raise ModelFileError(f"{self.path}: tensor {name!r} offset {offset} is not aligned to {align}")
            start = data_start + offset
            if start + nbytes > self.file_size:
                raise ModelFileError(
                    f"{self.path}: truncated or corrupt GGUF file (tensor {name!r} needs bytes "
                    f"[{start}, {start + nbytes}) but the file has {self.file_size})")
            raw = self._data[start:start + nbytes].reshape(n_rows, row_bytes)
            if raw.flags.writeable:
                raw.flags.writeable = False
            shape = tuple(int(d) for d in reversed(ne))
            self.tensors[name] = Weight(name, int(ttype), shape, start, nbytes, raw)
            ends.append((start, start + nbytes, name))
        ends.sort()
        for (s0, e0, n0), (s1, e1, n1) in zip(ends, ends[1:]):
            if s1 < e0:
                raise ModelFileError(f"{self.path}: corrupt GGUF file (tensors {n0!r} and {n1!r} overlap)")

    # -- typed metadata access -------------------------------------------------------------------
    @property
    def architecture(self) -> str:
        arch = self.metadata.get("general.architecture")
        if not isinstance(arch, str):
            raise ModelFileError(f"{self.path}: missing general.architecture")
        return arch

    def get(self, key: str, default: Any = None) -> Any:
        return self.metadata.get(key, default)

    def require(self, key: str, kind: type | tuple = (int, float, str, bool)) -> Any:
        if key not in self.metadata:
            raise ModelFileError(f"{self.path}: missing metadata key {key!r}")
        v = self.metadata[key]
        if not isinstance(v, kind):
            raise ModelFileError(f"{self.path}: metadata key {key!r} has the wrong type ({type(v).__name__})")
        return v

    def tensor(self, name: str) -> Weight:
        try:
            return self.tensors[name]
        except KeyError:
            raise ModelFileError(f"{self.path}: missing tensor {name!r}") from None

    def weights_bytes(self) -> int:
        return sum(w.nbytes for w in self.tensors.values())

    def fingerprint(self) -> str:
        """16 hex digits that tell model files apart (saved KV states carry it): a hash of the header
        (metadata and tensor table) and, for every tensor, FP_BLOCKS blocks of FP_BLOCK bytes evenly spread
        from its first to its last byte (the middle included) plus FP_STRIDE_BYTES bytes every FP_STRIDE:
        a change anywhere in a small tensor, in the middle or at either end of any tensor, or of more than
        FP_STRIDE contiguous bytes anywhere, gives another fingerprint. Hashes about 0.01% of a large file
        but touches a page every FP_STRIDE: `tools/fingerprint_cost.py` measures what it costs."""
        import hashlib
        h = hashlib.blake2b(digest_size=8)
        h.update(memoryview(self._data[:self.data_offset]))
        for name in sorted(self.tensors):
            w = self.tensors[name]
            flat = w.raw.reshape(-1)
            n = flat.shape[0]
            h.update(f"{name}:{w.ggml_type}:{tuple(w.shape)}:{n};".encode())
            if n <= FP_BLOCKS * FP_BLOCK:
                h.update(memoryview(flat))
                continue
            for b in range(FP_BLOCKS):
                s = (n - FP_BLOCK) * b // (FP_BLOCKS - 1)
                h.update(memoryview(flat[s:s + FP_BLOCK]))
            if n > FP_STRIDE:
                starts = np.arange(0, n - FP_STRIDE_BYTES + 1, FP_STRIDE, dtype=np.int64)
                h.update(flat[starts[:, None] + np.arange(FP_STRIDE_BYTES)].tobytes())
        return h.hexdigest()

    def buffer_report(self) -> str:
        """llama.cpp's model buffer line (`CPU_Mapped` for a mapped file, `CPU` for one read into memory)
        with how the choice was made."""
        kind = "CPU_Mapped" if self.use_mmap else "CPU"
        return f"{kind} model buffer size = {self.weights_bytes() / 2**20:.2f} MiB ({self.load_choice})"

    def prefetch(self) -> bool:
        """Reads a mapped file through the page cache once if it is not all cached, and again if the cache
        holds it mostly in small folios (see io.mapping); returns whether it read anything."""
        if not self.use_mmap or self._data is None:
            return False
        read = prefetch(self.path, self._data)
        return bool(rebuild_split_folios(self.path, self._data) or read)

    def close(self) -> None:
        self.tensors.clear()
        mm = getattr(self._data, "_mmap", None)
        self._data = None
        if mm is not None:
            try:
                mm.close()
            except BufferError:  # views still alive elsewhere; the GC closes it later
                pass
