"""Differential tests of pyrt.kv.cells.Cells against a pure-Python model of llama.cpp's cell semantics."""

import numpy as np
import pytest

from pyrt.errors import ContextOverflowError
from pyrt.kv.cells import Cells

POS_MAX = 2**31 - 1


class ModelCells:
    """Readable reference: lists of pos / set-of-seq / delta, same search order as the Cython code."""

    def __init__(self, size, n_seq_max):
        self.size, self.n_seq_max = size, n_seq_max
        self.clear()

    def clear(self):
        self.pos = [-1] * self.size
        self.seq = [set() for _ in range(self.size)]
        self.delta = [0] * self.size
        self.head = 0

    @property
    def used(self):
        return sum(p >= 0 for p in self.pos)

    def n_kv(self):
        idx = [c for c in range(self.size) if self.pos[c] >= 0]
        return idx[-1] + 1 if idx else 0

    def _free(self, c):
        self.pos[c], self.seq[c], self.delta[c] = -1, set(), 0

    @staticmethod
    def _rng(p0, p1):
        return (0 if p0 < 0 else p0), (POS_MAX if p1 < 0 else p1)

    def find_slot(self, pos, seqs):
        n = len(pos)
        if n > self.size - self.used:
            return None
        start = 0 if self.head > self.used + 2 * n else self.head
        free = [self.pos[c] < 0 for c in range(self.size)]
        cells = None
        h, tested = start, 0
        while tested < self.size:  # contiguous run first
            if h + n > self.size:
                tested += self.size - h
                h = 0
                continue
            j = 0
            while j < n and free[h + j]:
                j += 1
            if j == n:
                cells = list(range(h, h + n))
                break
            tested += j + 1
            h += j + 1
        if cells is None:  # scattered, in cache order from head
            h = start % self.size
            order = list(range(h, self.size)) + list(range(0, h))
            cells = [c for c in order if free[c]][:n]
        for c, p, s in zip(cells, pos, seqs):
            self.pos[c], self.seq[c], self.delta[c] = p, set(s), 0
        self.head = cells[-1] + 1
        return cells

    def _new_head(self, freed):
        if freed and freed[0] < self.head:
            self.head = freed[0]

    def seq_rm(self, seq_id, p0, p1):
        lo, hi = self._rng(p0, p1)
        freed = []
        for c in range(self.size):
            if not (lo <= self.pos[c] < hi):
                continue
            if seq_id < 0:
                self.seq[c] = set()
            elif seq_id in self.seq[c]:
                self.seq[c].discard(seq_id)
            else:
                continue
            if not self.seq[c]:
                self._free(c)
                freed.append(c)
        self._new_head(freed)

    def seq_cp(self, src, dst, p0, p1):
        if src == dst:
            return
        lo, hi = self._rng(p0, p1)
        for c in range(self.size):
            if lo <= self.pos[c] < hi and src in self.seq[c]:
                self.seq[c].add(dst)

    def seq_keep(self, seq_id):
        freed = []
        for c in range(self.size):
            if seq_id in self.seq[c]:
                self.seq[c] = {seq_id}
            elif self.pos[c] >= 0:
                self._free(c)
                freed.append(c)
        self._new_head(freed)

    def seq_add(self, seq_id, p0, p1, shift):
        if shift == 0:
            return
        lo, hi = self._rng(p0, p1)
        if lo == hi:
            return
        freed = []
        for c in range(self.size):
            if lo <= self.pos[c] < hi and seq_id in self.seq[c]:
                if self.pos[c] + shift < 0:
                    self._free(c)
                    freed.append(c)
                else:
                    self.pos[c] += shift
                    self.delta[c] += shift
        self.head = freed[0] if freed else 0

    def seq_div(self, seq_id, p0, p1, d):
        if d == 1:
            return
        lo, hi = self._rng(p0, p1)
        if lo == hi:
            return
        for c in range(self.size):
            if lo <= self.pos[c] < hi and seq_id in self.seq[c]:
                old = self.pos[c]
                self.pos[c] = old // d
                self.delta[c] += self.pos[c] - old

    def seq_pos_min(self, s):
        ps = [self.pos[c] for c in range(self.size) if s in self.seq[c]]
        return min(ps) if ps else -1

    def seq_pos_max(self, s):
        ps = [self.pos[c] for c in range(self.size) if s in self.seq[c]]
        return max(ps) if ps else -1


def _bits(s):
    return sum(1 << x for x in s)


def _check(cells, model):
    pos, seq, delta = cells.pos_array(), cells.seq_array(), cells.delta_array()
    assert pos.tolist() == model.pos
    assert seq.tolist() == [_bits(s) for s in model.seq]
    assert delta.tolist() == model.delta
    assert cells.used == model.used
    assert cells.head == model.head
    assert cells.n_kv() == model.n_kv()
    # invariants: used <=> non-empty sequence set; used counts exactly those; nothing beyond n_kv
    assert np.array_equal(pos >= 0, seq != 0)
    assert cells.used == int(np.count_nonzero(pos >= 0))
    assert np.all(pos[cells.n_kv():] == -1)
    for s in range(cells.n_seq_max):
        assert cells.seq_pos_min(s) == model.seq_pos_min(s)
        assert cells.seq_pos_max(s) == model.seq_pos_max(s)


@pytest.mark.parametrize("seed,size,n_seq_max", [(0, 64, 4), (1, 37, 3), (2, 128, 64), (3, 16, 1)])
def test_random_ops_match_model(seed, size, n_seq_max):
    rng = np.random.default_rng(seed)
    cells, model = Cells(size, n_seq_max), ModelCells(size, n_seq_max)
    n_overflow = n_scattered = 0
    for step in range(1500):
        op = rng.choice(["slot", "slot", "slot", "slot_multi", "rm", "rm_all", "cp", "keep", "add", "div", "clear"],
                        p=[0.3, 0.1, 0.05, 0.05, 0.2, 0.05, 0.07, 0.03, 0.07, 0.05, 0.03])
        s = int(rng.integers(n_seq_max))
        p0, p1 = sorted(int(x) for x in rng.integers(-3, 60, size=2))
        if rng.random() < 0.2:
            p1 = -1
        if op.startswith("slot"):
            n = int(rng.integers(1, max(2, size // 3)))
            pos = rng.integers(0, 100, size=n).astype(np.int32)
            if op == "slot":
                sid = rng.integers(n_seq_max, size=n).astype(np.int32)
                seqs = [{int(x)} for x in sid]
            else:
                masks = rng.integers(1, 2**n_seq_max if n_seq_max < 64 else 2**63, size=n, dtype=np.uint64)
                seqs = [{b for b in range(64) if (int(m) >> b) & 1} for m in masks]
            expect = model.find_slot(pos.tolist(), seqs)
            before = cells.get_state()
            if expect is None:
                n_overflow += 1
                with pytest.raises(ContextOverflowError):
                    if op == "slot":
                        cells.find_slot(pos, sid)
                    else:
                        cells.find_slot_mask(pos, masks)
                for a, b in zip(before, cells.get_state()):
                    assert np.array_equal(a, b)
            else:
                got = cells.find_slot(pos, sid) if op == "slot" else cells.find_slot_mask(pos, masks)
                assert got.dtype == np.int32 and got.tolist() == expect
                n_scattered += int(np.any(np.diff(got) != 1))
        elif op == "rm":
            cells.seq_rm(s, p0, p1), model.seq_rm(s, p0, p1)
        elif op == "rm_all":
            cells.seq_rm(-1, p0, p1), model.seq_rm(-1, p0, p1)
        elif op == "cp":
            d = int(rng.integers(n_seq_max))
            cells.seq_cp(s, d, p0, p1), model.seq_cp(s, d, p0, p1)
        elif op == "keep":
            cells.seq_keep(s), model.seq_keep(s)
        elif op == "add":
            sh = int(rng.integers(-20, 20))
            cells.seq_add(s, p0, p1, sh), model.seq_add(s, p0, p1, sh)
        elif op == "div":
            d = int(rng.integers(1, 4))
            cells.seq_div(s, p0, p1, d), model.seq_div(s, p0, p1, d)
        else:
            cells.clear(), model.clear()
        _check(cells, model)
    assert n_overflow > 0 or size > 100
    if size > 16:
        assert n_scattered > 0


def test_fragmented_cache_accepts_ubatch_that_fits():
    cells = Cells(16, 2)
    cells.find_slot(np.arange(16), np.zeros(16))
    cells.seq_rm(0, 0, 16)  # nothing left
    cells.find_slot(np.arange(16), np.zeros(16))
    for p in range(0, 16, 2):  # free every second cell: 8 free, no two adjacent
        cells.seq_rm(0, p, p + 1)
    got = cells.find_slot(np.arange(100, 108), np.ones(8))
    assert sorted(got.tolist()) == list(range(0, 16, 2))
    assert cells.used == 16 and cells.n_kv() == 16


def test_full_cache_refuses_and_is_unchanged():
    cells = Cells(8, 1)
    cells.find_slot(np.arange(6), np.zeros(6))
    before = cells.get_state()
    head = cells.head
    with pytest.raises(ContextOverflowError):
        cells.find_slot(np.arange(3), np.zeros(3))
    for a, b in zip(before, cells.get_state()):
        assert np.array_equal(a, b)
    assert cells.used == 6 and cells.head == head
    cells.find_slot(np.arange(2), np.zeros(2))
    with pytest.raises(ContextOverflowError):
        cells.find_slot([9], [0])
    with pytest.raises(ContextOverflowError):
        Cells(4).find_slot(np.arange(5), np.zeros(5))


def test_prefers_contiguous_run():
    cells = Cells(16, 1)
    cells.find_slot(np.arange(10), np.zeros(10))
    cells.seq_rm(0, 2, 3)  # one hole at cell 2, head moves back to it
    assert cells.head == 2
    got = cells.find_slot(np.arange(10, 13), np.zeros(3))
    assert got.tolist() == [10, 11, 12]


def test_argument_validation():
    with pytest.raises(ValueError):
        Cells(0)
    with pytest.raises(ValueError):
        Cells(8, 65)
    cells = Cells(8, 2)
    with pytest.raises(IndexError):
        cells.find_slot([0], [2])
    with pytest.raises(IndexError):
        cells.find_slot([0], [-1])
    with pytest.raises(ValueError):
        cells.find_slot([0, 1], [0])
    with pytest.raises(ValueError):
        cells.find_slot([-1], [0])
    with pytest.raises(IndexError):
        cells.find_slot_mask([0], np.array([4], np.uint64))
    with pytest.raises(IndexError):
        cells.seq_rm(2)
    with pytest.raises(IndexError):
        cells.seq_pos_max(5)
    with pytest.raises(IndexError):
        cells.seq_cp(0, 7)
    with pytest.raises(ValueError):
        cells.seq_div(0, -1, -1, 0)
    with pytest.raises(IndexError):
        cells.move(0, 8)
    assert cells.used == 0 and cells.find_slot([], []).shape == (0,)


def test_views_are_zero_copy_and_state_roundtrip():
    cells = Cells(8, 3)
    pos, seq = cells.pos_array(), cells.seq_array()
    assert pos.dtype == np.int32 and seq.dtype == np.uint64 and pos.shape == seq.shape == (8,)
    cells.find_slot_mask([4, 5], np.array([0b101, 0b010], np.uint64))
    assert pos[:2].tolist() == [4, 5] and seq[:2].tolist() == [5, 2]  # the same buffers, updated in place
    state = cells.get_state()
    other = Cells(8, 3)
    other.set_state(*state)
    assert other.used == 2 and other.seq_pos_max(2) == 4 and other.seq_pos_min(1) == 5
    with pytest.raises(ValueError):
        other.set_state(np.array([3] + [-1] * 7), np.zeros(8, np.uint64))  # used cell without sequence
    with pytest.raises(IndexError):
        other.set_state(state[0], np.array([8] + [0] * 7, np.uint64))  # seq 3 >= n_seq_max
    assert other.used == 2  # untouched after a refused restore
    other.move(1, 6)
    assert other.pos_array()[6] == 5 and other.pos_array()[1] == -1 and other.n_kv() == 7


def test_free_cells_undoes_a_find_slot():
    c = Cells(8, 2)
    c.find_slot([0, 1], [0, 0])
    before = [a.copy() for a in c.get_state()]
    used, head = c.used, c.head
    idx = c.find_slot([2, 3, 2], [0, 0, 1])
    c.free_cells(idx)
    for a, b in zip(c.get_state(), before):
        np.testing.assert_array_equal(a, b)
    assert c.used == used and c.head == head
    idx = c.find_slot([2], [1])
    with pytest.raises(ValueError, match="not a used cell"):
        c.free_cells([int(idx[0]), 7])  # one bad index: nothing is freed
    assert c.used == used + 1 and c.pos_array()[idx[0]] == 2
    with pytest.raises(ValueError, match="not a used cell"):
        c.free_cells([-1])
