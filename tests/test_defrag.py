"""Defragmentation: the Cython move plan against a pure-Python transcription of llama.cpp's, rows that
follow their cells in every cache type (with and without V), and logits bit-identical after a defrag."""

import numpy as np
import pytest
from test_cells import ModelCells, _check

from pyrt.kv.cache import KVCache
from pyrt.kv.cells import Cells

TYPES = ["f32", "f16", "bf16", "q8_0", "q8_KV"]


class DefragModel(ModelCells):
    """ModelCells plus llama.cpp's defrag_prepare (fill each hole below `used` from the end)."""

    def defrag(self, max_moves=-1):
        n_kv, n_used = self.n_kv(), self.used
        moved = [False] * n_kv
        moves, n_moves, i0 = [], 0, 0
        while i0 < n_used:
            if self.pos[i0] >= 0:
                i0 += 1
                continue
            nh = 1
            while i0 + nh < n_used and self.pos[i0 + nh] < 0:
                nh += 1
            cand = [c for c in range(n_kv - 1, i0, -1) if self.pos[c] >= 0 and not moved[c]][:nh]
            assert len(cand) == nh
            nf, cont, stop = 0, False, False
            for i1 in range(cand[-1], n_kv):
                if self.pos[i1] < 0 or moved[i1]:
                    if n_moves == max_moves:
                        stop = True
                        break
                    cont = False
                    continue
                moved[i1] = True
                d = i0 + nf
                self.pos[d], self.seq[d], self.delta[d] = self.pos[i1], self.seq[i1], self.delta[i1]
                self._free(i1)
                moves.append((i1, d))
                if not cont:
                    n_moves, cont = n_moves + 1, True
                nf += 1
                if nf == nh:
                    break
            if stop or n_moves == max_moves:
                break
            i0 += nh
        if moves:
            self.head = n_used
        return moves


@pytest.mark.boundscheck
@pytest.mark.parametrize("seed,size,n_seq_max", [(0, 64, 4), (1, 37, 3), (2, 160, 8)])
def test_defrag_plan_matches_model(seed, size, n_seq_max):
    rng = np.random.default_rng(seed)
    cells, model = Cells(size, n_seq_max), DefragModel(size, n_seq_max)
    n_nontrivial = 0
    for step in range(800):
        op = rng.choice(["slot", "rm", "defrag", "defrag_lim", "add"], p=[0.4, 0.3, 0.1, 0.1, 0.1])
        s = int(rng.integers(n_seq_max))
        if op == "slot":
            n = int(rng.integers(1, max(2, size // 4)))
            pos = rng.integers(0, 200, size=n).astype(np.int32)
            sid = rng.integers(n_seq_max, size=n).astype(np.int32)
            if model.find_slot(pos.tolist(), [{int(x)} for x in sid]) is not None:
                cells.find_slot(pos, sid)
        elif op == "rm":
            p0 = int(rng.integers(0, 200))
            p1 = p0 + int(rng.integers(1, 40))
            cells.seq_rm(s, p0, p1), model.seq_rm(s, p0, p1)
        elif op == "add":
            sh = int(rng.integers(-10, 10))
            cells.seq_add(s, 0, -1, sh), model.seq_add(s, 0, -1, sh)
        else:
            lim = int(rng.integers(1, 4)) if op == "defrag_lim" else -1
            before = cells.get_state()
            src, dst = cells.defrag_plan(lim)
            expect = model.defrag(lim)
            assert list(zip(src.tolist(), dst.tolist())) == expect
            n_nontrivial += len(expect) > 0
            # the plan is a permutation of used cells: every source was used, every destination free
            assert np.all(before[0][src] >= 0) and np.all(before[0][dst] < 0)
            assert np.all(src >= cells.used) and np.all(dst < cells.used)
            if lim < 0:
                assert cells.n_kv() == cells.used  # fully compact
        _check(cells, model)
    assert n_nontrivial > 10


def fill_cache(cache, rng, pos, seq):
    """Store random rows for tokens at positions pos [n] in sequences seq [n]; returns the cells."""
    cells = cache.cells.find_slot(np.asarray(pos, np.int32), np.asarray(seq, np.int32))
    for il in range(cache.n_layer):
        k = rng.standard_normal((len(cells), cache.n_embd_k[il])).astype(np.float32)
        v = None if cache.v[il] is None else rng.standard_normal((len(cells), cache.n_embd_v[il])).astype(np.float32)
        cache.store(il, cells, k, v)
    return cells


def cell_contents(cache):
    """{(pos, seq bitset): (K row bytes, V row bytes or None) per layer} over the used cells."""
    pos, seq = cache.cells.pos_array(), cache.cells.seq_array()
    out = {}
    for c in np.flatnonzero(pos >= 0):
        key = (int(pos[c]), int(seq[c]))
        assert key not in out
        out[key] = [(cache.k[il][c].tobytes(), None if cache.v[il] is None else cache.v[il][c].tobytes())
                    for il in range(cache.n_layer)]
    return out


V_LAYOUTS = {"kv": [64, 64], "mixed": [64, None], "k_only": [None, None]}


@pytest.mark.parametrize("type_k,type_v", [(t, t) for t in TYPES] + [("q8_0", "f16")])
@pytest.mark.parametrize("v_layout", list(V_LAYOUTS))
def test_defrag_moves_rows_with_cells(type_k, type_v, v_layout):
    rng = np.random.default_rng(3)
    n_v = V_LAYOUTS[v_layout]
    cache = KVCache(2, 300, [64, 64], n_v, type_k, type_v, n_seq_max=3, head_dim_k=32, head_dim_v=32)
    fill_cache(cache, rng, np.arange(120), np.zeros(120))
    fill_cache(cache, rng, np.arange(100), np.ones(100))
    fill_cache(cache, rng, np.arange(50), np.full(50, 2))
    cache.cells.seq_rm(0, 10, 70)
    cache.cells.seq_rm(1, -1, -1)
    before = cell_contents(cache)
    assert cache.cells.fragmentation() > 0.3
    n = cache.defrag()
    assert n > 0 and cache.cells.n_kv() == cache.cells.used
    assert cell_contents(cache) == before
    assert cache.defrag() == 0  # already compact


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory):
    import synthetic

    from pyrt.io.gguf_file import GGUFFile
    from pyrt.models import build_model
    path = tmp_path_factory.mktemp("kv") / "llama-f32.gguf"
    synthetic.write_model(path, "llama", "F32", n_embd=128, n_ff=128, n_head=4, n_head_kv=2, n_layer=2,
                          n_ctx=4096)
    return build_model(GGUFFile(path))


def make_ctx(model, type_k="f16", type_v="f16", n_ctx=512, n_seq_max=2, defrag_thold=-1.0, n_ubatch=32):
    from pyrt.runtime.context import Context
    return Context(model, n_ctx=n_ctx, n_batch=64, n_ubatch=n_ubatch, type_k=type_k, type_v=type_v,
                   n_seq_max=n_seq_max, defrag_thold=defrag_thold)


def decode(ctx, toks, pos0, seq=0, logits="last"):
    from pyrt.runtime.context import Batch
    out = []
    for s in range(0, len(toks), ctx.n_batch):
        out.append(ctx.decode(Batch.from_tokens(toks[s:s + ctx.n_batch], pos0=pos0 + s, seq_id=seq, logits=logits)))
    return out[-1]


@pytest.mark.parametrize("type_k", ["f16", "q8_KV"])
def test_logits_bit_identical_after_defrag(tiny_llama, type_k):
    rng = np.random.default_rng(5)
    ctx = make_ctx(tiny_llama, type_k, type_k)
    toks = rng.integers(3, 500, 260).tolist()
    decode(ctx, toks[:200], 0)
    decode(ctx, toks[:90], 0, seq=1)
    ctx.seq_rm(0, 20, 120)       # a hole in seq 0, cells after it
    ctx.seq_rm(1, 30, -1)        # seq 1 leaves holes too
    from pyrt.runtime.context import Batch
    ref0 = ctx.decode(Batch.from_tokens([7], pos0=200))
    ctx.seq_rm(0, 200, 201)
    ref1 = ctx.decode(Batch.from_tokens([9], pos0=30, seq_id=1))
    ctx.seq_rm(1, 30, 31)
    assert ctx.defrag() > 0 and ctx.cells.n_kv() == ctx.cells.used
    assert np.array_equal(ctx.decode(Batch.from_tokens([7], pos0=200)), ref0)
    assert np.array_equal(ctx.decode(Batch.from_tokens([9], pos0=30, seq_id=1)), ref1)


def test_automatic_defrag_threshold(tiny_llama):
    from pyrt.runtime.context import Batch
    rng = np.random.default_rng(6)
    toks = rng.integers(3, 500, 300).tolist()
    ctx = make_ctx(tiny_llama, defrag_thold=0.1)
    off = make_ctx(tiny_llama, defrag_thold=-1)
    for c in (ctx, off):
        decode(c, toks[:256], 0)
        c.seq_rm(0, 0, 100)   # 100 of 256 scanned cells free: fragmentation 0.39
        c.decode(Batch.from_tokens([5], pos0=256))   # sets the request ...
    assert ctx.n_defrag == 0 and off.n_defrag == 0
    a = ctx.decode(Batch.from_tokens([6], pos0=257))  # ... which runs before this decode
    b = off.decode(Batch.from_tokens([6], pos0=257))
    assert ctx.n_defrag == 1 and off.n_defrag == 0
    assert ctx.cells.n_kv() == ctx.cells.used == 158 and off.cells.n_kv() == 256
    assert np.array_equal(a, b)
