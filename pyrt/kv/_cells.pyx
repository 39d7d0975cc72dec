"""KV cell bookkeeping: per-cell position, sequence bitset and shift delta, free-cell search, sequence ops.

Knows nothing about tensors: pyrt.kv.cache owns the K/V buffers and moves rows. Semantics follow
llama.cpp's llama_kv_cells / llama_kv_cache (seq_rm, seq_cp, seq_keep, seq_add, seq_div, seq_pos_min/max).
Invariant: a cell is used (pos >= 0) if and only if its sequence set is non-empty.
"""

import numpy as np

cimport numpy as cnp
from libc.stdint cimport int32_t, int64_t, uint64_t

from pyrt.errors import ContextOverflowError

cnp.import_array()

cdef enum:
    MAX_SEQ = 64
cdef int32_t POS_MAX = 2147483647


cdef inline void _range(long p0, long p1, int32_t *lo, int32_t *hi) noexcept:
    # llama.cpp: p0 < 0 means 0, p1 < 0 means +inf; the range is [p0, p1)
    lo[0] = 0 if p0 < 0 else <int32_t>min(p0, <long>POS_MAX)
    hi[0] = POS_MAX if p1 < 0 else <int32_t>min(p1, <long>POS_MAX)


cdef class Cells:
    """`size` KV cells shared by up to `n_seq_max` (<= 64) sequences.

    pos int32 (-1 = free), seq uint64 bitset of sequence ids, delta int32 (accumulated shift, reset by
    reset_shift after the K-shift has been applied). `head` is where the next free-cell search starts.
    """

    def __cinit__(self, int size, int n_seq_max=1):
        if size <= 0:
            raise ValueError(f"Cells: size must be positive, got {size}")
        if n_seq_max <= 0 or n_seq_max > MAX_SEQ:
            raise ValueError(f"Cells: n_seq_max must be in [1, {MAX_SEQ}], got {n_seq_max}")
        self.size = size
        self.n_seq_max = n_seq_max
        self._pos_np = np.full(size, -1, dtype=np.int32)
        self._seq_np = np.zeros(size, dtype=np.uint64)
        self._delta_np = np.zeros(size, dtype=np.int32)
        self._pos = self._pos_np
        self._seq = self._seq_np
        self._delta = self._delta_np
        self.used = 0
        self.head = 0
        self.has_shift = False

    # ------------------------------------------------------------------ views and queries

    def pos_array(self):
        """int32[size] zero-copy view of the positions (-1 = free). Do not write to it."""
        return self._pos_np

    def seq_array(self):
        """uint64[size] zero-copy view of the sequence bitsets. Do not write to it."""
        return self._seq_np

    def delta_array(self):
        """int32[size] zero-copy view of the accumulated shifts (for the K-shift)."""
        return self._delta_np

    def n_kv(self):
        """1 + index of the last used cell (0 if the cache is empty): attention scans cells [0, n_kv)."""
        cdef int c = self.size - 1
        if self.used == 0:
            return 0
        while c >= 0 and self._pos[c] < 0:
            c -= 1
        return c + 1

    cdef int _check_seq(self, long seq_id, bint allow_all) except -1:
        if allow_all and seq_id < 0:
            return 0
        if seq_id < 0 or seq_id >= self.n_seq_max:
            raise IndexError(f"seq_id {seq_id} out of range [0, {self.n_seq_max})")
        return 0

    def seq_pos_min(self, long seq_id):
        """Smallest position held by seq_id, -1 if the sequence has no cell."""
        self._check_seq(seq_id, False)
        cdef uint64_t bit = (<uint64_t>1) << seq_id
        cdef int32_t best = -1
        cdef int c
        for c in range(self.size):
            if (self._seq[c] & bit) and (best < 0 or self._pos[c] < best):
                best = self._pos[c]
        return best

    def seq_pos_max(self, long seq_id):
        """Largest position held by seq_id, -1 if the sequence has no cell."""
        self._check_seq(seq_id, False)
        cdef uint64_t bit = (<uint64_t>1) << seq_id
        cdef int32_t best = -1
        cdef int c
        for c in range(self.size):
            if (self._seq[c] & bit) and self._pos[c] > best:
                best = self._pos[c]
        return best

    def seq_count(self, long seq_id):
        """Number of cells holding seq_id."""
        self._check_seq(seq_id, False)
        cdef uint64_t bit = (<uint64_t>1) << seq_id
        cdef int c, n = 0
        for c in range(self.size):
            if self._seq[c] & bit:
                n += 1
        return n

    # ------------------------------------------------------------------ slot search

    cdef int _find(self, int32_t[::1] out, int n) noexcept:
        """Fill out[:n] with free cell indices; return 1 on success, 0 if fewer than n cells are free."""
        cdef int size = self.size
        cdef int h, tested, j, k
        if n > size - self.used:
            return 0
        h = self.head
        # llama.cpp: with enough free cells before head, start from the beginning to fill the cache
        if h > self.used + 2 * n:
            h = 0
        # 1) a contiguous run of n free cells, scanning from head and wrapping once
        tested = 0
        while tested < size:
            if h + n > size:
                tested += size - h
                h = 0
                continue
            j = 0
            while j < n and self._pos[h + j] < 0:
                j += 1
            if j == n:
                for k in range(n):
                    out[k] = h + k
                return 1
            # skip past the occupied cell that broke the run
            tested += j + 1
            h += j + 1
        # 2) fragmented cache: any n free cells, in cache order starting from head
        h = self.head
        if h > self.used + 2 * n:
            h = 0
        if h >= size:
            h = 0
        k = 0
        for j in range(size):
            if self._pos[h] < 0:
                out[k] = h
                k += 1
                if k == n:
                    return 1
            h += 1
            if h == size:
                h = 0
        return 0  # unreachable: n <= size - used

    def find_slot(self, pos, seq_id):
        """Take cells for a ubatch: pos int32[n], seq_id int32[n] (one sequence per token) -> int32[n] cell indices.

        Raises ContextOverflowError (cells untouched) if fewer than n cells are free.
        """
        cdef cnp.ndarray[int32_t, ndim=1, mode="c"] p = np.ascontiguousarray(pos, dtype=np.int32)
        cdef cnp.ndarray[int32_t, ndim=1, mode="c"] s = np.ascontiguousarray(seq_id, dtype=np.int32)
        if p.ndim != 1 or s.ndim != 1 or p.shape[0] != s.shape[0]:
            raise ValueError(f"find_slot: pos and seq_id must be 1-D of equal length, got "
                             f"{np.shape(pos)} and {np.shape(seq_id)}")
        cdef int n = p.shape[0], t
        if n > 0:
            if s.min() < 0 or s.max() >= self.n_seq_max:
                raise IndexError(f"find_slot: seq_id out of range [0, {self.n_seq_max})")
        masks = np.empty(n, dtype=np.uint64)
        cdef uint64_t[::1] m = masks
        for t in range(n):
            m[t] = (<uint64_t>1) << s[t]
        return self.find_slot_mask(p, masks)

    def find_slot_mask(self, pos, seq_mask):
        """Like find_slot, but each token carries a uint64 bitset of sequence ids (tokens shared by sequences)."""
        cdef cnp.ndarray[int32_t, ndim=1, mode="c"] p = np.ascontiguousarray(pos, dtype=np.int32)
        cdef cnp.ndarray[uint64_t, ndim=1, mode="c"] s = np.ascontiguousarray(seq_mask, dtype=np.uint64)
        if p.ndim != 1 or s.ndim != 1 or p.shape[0] != s.shape[0]:
            raise ValueError(f"find_slot: pos and seq masks must be 1-D of equal length, got "
                             f"{np.shape(pos)} and {np.shape(seq_mask)}")
        cdef int n = p.shape[0], t, c
        cdef uint64_t allowed = (~(<uint64_t>0)) if self.n_seq_max == 64 else (((<uint64_t>1) << self.n_seq_max) - 1)
        for t in range(n):
            if p[t] < 0:
                raise ValueError(f"find_slot: negative position {p[t]} for token {t}")
            if s[t] == 0 or (s[t] & ~allowed):
                raise IndexError(f"find_slot: token {t} has no sequence or one >= n_seq_max ({self.n_seq_max})")
        out = np.empty(n, dtype=np.int32)
        if n == 0:
            return out
        cdef int32_t[::1] o = out
        if n > self.size or not self._find(o, n):
            raise ContextOverflowError(
                f"KV cache full: {n} tokens need cells, {self.size - self.used} of {self.size} are free")
        for t in range(n):
            c = o[t]
            self._pos[c] = p[t]
            self._seq[c] = s[t]
            self._delta[c] = 0
        self.used += n
        self.head = o[n - 1] + 1
        return out

    # ------------------------------------------------------------------ sequence ops

    cdef int _free_cell(self, int c) noexcept:
        self._pos[c] = -1
        self._seq[c] = 0
        self._delta[c] = 0
        self.used -= 1
        return 0

    def free_cells(self, cells):
        """Free the given used cells (int32[n] from find_slot), whatever sequences they hold: undoes a
        find_slot whose ubatch failed. The cells are checked first; a bad index changes nothing."""
        cdef cnp.ndarray[int32_t, ndim=1, mode="c"] ix = np.ascontiguousarray(cells, dtype=np.int32)
        cdef int n = ix.shape[0], t, c, low = self.size
        for t in range(n):
            c = ix[t]
            if c < 0 or c >= self.size or self._pos[c] < 0:
                raise ValueError(f"free_cells: cell {c} is not a used cell of [0, {self.size})")
        for t in range(n):
            c = ix[t]
            if self._pos[c] >= 0:  # a cell listed twice is freed once
                self._free_cell(c)
                if c < low:
                    low = c
        if low < self.head:
            self.head = low

    def clear(self):
        """Free every cell."""
        self._pos_np.fill(-1)
        self._seq_np.fill(0)
        self._delta_np.fill(0)
        self.used = 0
        self.head = 0
        self.has_shift = False

    def seq_rm(self, long seq_id, long p0=-1, long p1=-1):
        """Remove seq_id (all sequences if < 0) from cells with p0 <= pos < p1; negative bounds are open."""
        self._check_seq(seq_id, True)
        cdef int32_t lo, hi
        _range(p0, p1, &lo, &hi)
        cdef int c, new_head = self.size
        cdef uint64_t bit = 0 if seq_id < 0 else ((<uint64_t>1) << seq_id)
        for c in range(self.size):
            if self._pos[c] < lo or self._pos[c] >= hi:
                continue
            if seq_id < 0:
                self._seq[c] = 0
            elif self._seq[c] & bit:
                self._seq[c] &= ~bit
            else:
                continue
            if self._seq[c] == 0:
                self._free_cell(c)
                if new_head == self.size:
                    new_head = c
        if new_head != self.size and new_head < self.head:
            self.head = new_head
        return True

    def seq_cp(self, long seq_src, long seq_dst, long p0=-1, long p1=-1):
        """Add seq_dst to every cell of seq_src with p0 <= pos < p1 (cells are shared, no data moves)."""
        self._check_seq(seq_src, False)
        self._check_seq(seq_dst, False)
        if seq_src == seq_dst:
            return
        cdef int32_t lo, hi
        _range(p0, p1, &lo, &hi)
        cdef uint64_t bs = (<uint64_t>1) << seq_src, bd = (<uint64_t>1) << seq_dst
        cdef int c
        for c in range(self.size):
            if self._pos[c] >= lo and self._pos[c] < hi and (self._seq[c] & bs):
                self._seq[c] |= bd

    def seq_keep(self, long seq_id):
        """Free every cell without seq_id; the others keep exactly {seq_id}."""
        self._check_seq(seq_id, False)
        cdef uint64_t bit = (<uint64_t>1) << seq_id
        cdef int c, new_head = self.size
        for c in range(self.size):
            if self._seq[c] & bit:
                self._seq[c] = bit
            elif self._pos[c] >= 0:
                self._free_cell(c)
                if new_head == self.size:
                    new_head = c
        if new_head != self.size and new_head < self.head:
            self.head = new_head

    def seq_add(self, long seq_id, long p0, long p1, long shift):
        """pos += shift (and delta += shift) for seq_id's cells in [p0, p1); cells pushed below 0 are freed."""
        self._check_seq(seq_id, False)
        if shift == 0:
            return
        cdef int32_t lo, hi
        _range(p0, p1, &lo, &hi)
        if lo == hi:
            return
        cdef uint64_t bit = (<uint64_t>1) << seq_id
        cdef int c, new_head = self.size
        cdef int64_t np_
        for c in range(self.size):
            if self._pos[c] >= lo and self._pos[c] < hi and (self._seq[c] & bit) and \
                    <int64_t>self._pos[c] + shift > POS_MAX:
                raise OverflowError(f"seq_add: position {self._pos[c]} + {shift} does not fit in int32")
        for c in range(self.size):
            if self._pos[c] < lo or self._pos[c] >= hi or not (self._seq[c] & bit):
                continue
            # like llama.cpp, the whole cell moves (all its sequences), not just seq_id
            np_ = <int64_t>self._pos[c] + shift
            self.has_shift = True
            if np_ < 0:
                self._free_cell(c)
                if new_head == self.size:
                    new_head = c
            else:
                self._pos[c] = <int32_t>np_
                self._delta[c] += <int32_t>shift
        self.head = new_head if new_head != self.size else 0

    def seq_div(self, long seq_id, long p0, long p1, long d):
        """pos //= d for seq_id's cells in [p0, p1); delta accumulates (new - old)."""
        self._check_seq(seq_id, False)
        if d <= 0:
            raise ValueError(f"seq_div: divisor must be positive, got {d}")
        if d == 1:
            return
        cdef int32_t lo, hi, old
        _range(p0, p1, &lo, &hi)
        if lo == hi:
            return
        cdef uint64_t bit = (<uint64_t>1) << seq_id
        cdef int c
        for c in range(self.size):
            if self._pos[c] < lo or self._pos[c] >= hi or not (self._seq[c] & bit):
                continue
            old = self._pos[c]
            self._pos[c] = <int32_t>(old // d)
            self._delta[c] += self._pos[c] - old
            self.has_shift = True

    def reset_shift(self):
        """Forget the accumulated deltas (after the K-shift has rotated the cached keys)."""
        self._delta_np.fill(0)
        self.has_shift = False

    # ------------------------------------------------------------------ state and moves

    def get_state(self):
        """(pos int32[size], seq uint64[size], delta int32[size]) copies, e.g. for session save."""
        return self._pos_np.copy(), self._seq_np.copy(), self._delta_np.copy()

    def set_state(self, pos, seq, delta=None):
        """Replace all cells (session restore); validates before touching anything."""
        p = np.ascontiguousarray(pos, dtype=np.int32)
        s = np.ascontiguousarray(seq, dtype=np.uint64)
        d = np.zeros(self.size, np.int32) if delta is None else np.ascontiguousarray(delta, dtype=np.int32)
        if p.shape != (self.size,) or s.shape != (self.size,) or d.shape != (self.size,):
            raise ValueError(f"set_state: arrays must have shape ({self.size},)")
        allowed = np.uint64(0xFFFFFFFFFFFFFFFF) if self.n_seq_max == 64 else np.uint64((1 << self.n_seq_max) - 1)
        if np.any(s & ~allowed):
            raise IndexError(f"set_state: sequence id >= n_seq_max ({self.n_seq_max})")
        if np.any(p < -1) or np.any((p >= 0) != (s != 0)):
            raise ValueError("set_state: every cell needs pos >= 0 with sequences, or pos -1 without")
        self._pos_np[:] = p
        self._seq_np[:] = s
        self._delta_np[:] = np.where(p >= 0, d, 0)
        self.used = int(np.count_nonzero(p >= 0))
        self.head = 0
        self.has_shift = bool(np.any(self._delta_np != 0))

    def move(self, int src, int dst):
        """Move cell src's metadata to the free cell dst (defrag); the caller moves the K/V rows."""
        if src < 0 or src >= self.size or dst < 0 or dst >= self.size:
            raise IndexError(f"move: cell index out of range [0, {self.size})")
        if src == dst:
            return
        if self._pos[src] < 0 or self._pos[dst] >= 0:
            raise ValueError(f"move: needs a used source ({src}) and a free destination ({dst})")
        self._pos[dst] = self._pos[src]
        self._seq[dst] = self._seq[src]
        self._delta[dst] = self._delta[src]
        self._pos[src] = -1
        self._seq[src] = 0
        self._delta[src] = 0

    # ------------------------------------------------------------------ defragmentation

    def fragmentation(self):
        """llama.cpp's measure: 1 - used / n_kv when n_kv >= 128, else 0 (small caches are never defragged)."""
        cdef int n = self.n_kv()
        if n < 128:
            return 0.0
        return 1.0 - <double>self.used / <double>n

    def defrag_plan(self, long max_moves=-1):
        """Plan (and apply to the metadata) the moves that compact the used cells into [0, used).

        llama.cpp's defrag_prepare: each hole of nh free cells below `used` is filled with the last nh
        used, not yet moved cells, scanning from the end. max_moves (< 0: no limit) caps the number of
        contiguous source runs. Returns (src int32[m], dst int32[m]): the caller copies K/V rows
        src[i] -> dst[i]. Every source lies at or above `used` and every destination below it, so the
        copies never overlap and their order does not matter.
        """
        cdef int n_kv = self.n_kv()
        cdef int n_used = self.used
        ids_np = np.full(max(n_kv, 1), n_kv, dtype=np.int32)  # ids[c] = destination of cell c (n_kv: stays)
        cdef int32_t[::1] ids = ids_np
        src_np = np.empty(n_used, dtype=np.int32)
        dst_np = np.empty(n_used, dtype=np.int32)
        cdef int32_t[::1] src = src_np
        cdef int32_t[::1] dst = dst_np
        cdef int m = 0, n_moves = 0, i0 = 0, nh, nf, is_, i1
        cdef bint cont, stop = False
        while i0 < n_used:
            if self._pos[i0] >= 0:
                ids[i0] = i0
                i0 += 1
                continue
            nh = 1
            while i0 + nh < n_used and self._pos[i0 + nh] < 0:
                nh += 1
            # the nh-th used, unmoved cell from the end
            nf = 0
            is_ = n_kv - 1
            while is_ > i0:
                if self._pos[is_] >= 0 and ids[is_] == n_kv:
                    nf += 1
                    if nf == nh:
                        break
                is_ -= 1
            if nf != nh:  # cannot happen while used counts the used cells
                raise RuntimeError("defrag_plan: cell bookkeeping is inconsistent")
            nf = 0
            cont = False
            i1 = is_
            while i1 < n_kv:
                if self._pos[i1] < 0 or ids[i1] != n_kv:
                    if max_moves >= 0 and n_moves == max_moves:
                        stop = True
                        break
                    cont = False
                    i1 += 1
                    continue
                ids[i1] = i0 + nf
                src[m] = i1
                dst[m] = i0 + nf
                m += 1
                self._move(i1, i0 + nf)
                if not cont:
                    n_moves += 1
                    cont = True
                nf += 1
                if nf == nh:
                    break
                i1 += 1
            if stop or (max_moves >= 0 and n_moves == max_moves):
                break
            i0 += nh
        self.head = n_used if m else self.head
        return src_np[:m].copy(), dst_np[:m].copy()

    cdef int _move(self, int src, int dst) noexcept:
        self._pos[dst] = self._pos[src]
        self._seq[dst] = self._seq[src]
        self._delta[dst] = self._delta[src]
        self._pos[src] = -1
        self._seq[src] = 0
        self._delta[src] = 0
        return 0

    def __repr__(self):
        return f"Cells(size={self.size}, n_seq_max={self.n_seq_max}, used={self.used}, head={self.head})"
