"""KV state save/restore: bit-identical round trips (every cache type, with and without V, many lengths,
several sequences, fragmented targets), validation that never touches the cache (fuzzed files, other
models and cache types, no room), the seeds' regressions, and identical next-token logits."""

import struct

import numpy as np
import pytest
from test_defrag import V_LAYOUTS, decode, fill_cache, make_ctx, tiny_llama  # noqa: F401

from pyrt.errors import StateError
from pyrt.kv import state
from pyrt.kv.cache import KVCache

TYPES = ["f32", "f16", "bf16", "q8_0", "q8_KV"]
N_UBATCH = 32


def snapshot(cache):
    """Everything a restore could change: cell arrays, counters and every buffer's bytes."""
    pos, seq, delta = cache.cells.get_state()
    bufs = [b.tobytes() for b in cache.k] + [None if b is None else b.tobytes() for b in cache.v]
    return pos.tobytes(), seq.tobytes(), delta.tobytes(), cache.cells.used, cache.cells.head, \
        cache.cells.has_shift, bufs


def contents(cache, seq_id=None):
    """{(pos, seqs): rows} of the used cells (of one sequence: seqs reduced to that bit)."""
    pos, seqs = cache.cells.pos_array(), cache.cells.seq_array()
    out = {}
    for c in np.flatnonzero(pos >= 0):
        s = int(seqs[c])
        if seq_id is not None:
            if not (s >> seq_id) & 1:
                continue
            s = 0
        out[(int(pos[c]), s)] = [(cache.k[il][c].tobytes(), None if cache.v[il] is None else cache.v[il][c].tobytes())
                                 for il in range(cache.n_layer)]
    return out


def new_cache(type_k, type_v, v_layout="kv", size=4096, n_seq_max=4):
    return KVCache(2, size, [64, 64], V_LAYOUTS[v_layout], type_k, type_v, n_seq_max=n_seq_max,
                   head_dim_k=32, head_dim_v=32)


@pytest.mark.parametrize("type_k", TYPES)
@pytest.mark.parametrize("v_layout", list(V_LAYOUTS))
def test_roundtrip_every_type_and_length(type_k, v_layout):
    rng = np.random.default_rng(11)
    type_v = "q8_0" if type_k == "q8_KV" else type_k
    for n in (1, 7, N_UBATCH - 1, N_UBATCH + 1, 3000):
        src = new_cache(type_k, type_v, v_layout)
        fill_cache(src, rng, np.arange(n), np.zeros(n))
        if n > 2:  # a second sequence sharing a prefix, a fragmented cache
            src.cells.seq_cp(0, 1, 0, n // 2)
            src.cells.seq_rm(0, n // 3, n // 2)
            fill_cache(src, rng, np.arange(5), np.full(5, 2))
        data = state.save_state(src, tokens=range(n), arch="llama", n_rot=32)
        k_rows = sum(src.row_bytes_k(il) + src.row_bytes_v(il) for il in range(2))
        assert len(data) > src.cells.used * k_rows  # every row is in the file (seed 002: partial restore)
        dst = new_cache(type_k, type_v, v_layout)
        fill_cache(dst, rng, np.arange(17), np.full(17, 3))  # a full restore replaces everything
        toks = state.load_state(dst, data, arch="llama", n_rot=32)
        assert toks == list(range(n))
        assert contents(dst) == contents(src)
        assert dst.cells.used == src.cells.used and dst.cells.n_kv() == src.cells.used  # compact
        # cells keep their order, so the restored cache saves to the same bytes
        assert state.save_state(dst, tokens=range(n), arch="llama", n_rot=32) == data


@pytest.mark.parametrize("type_k", ["f16", "q8_KV"])
@pytest.mark.parametrize("v_layout", ["kv", "k_only"])
def test_sequence_roundtrip_into_fragmented_cache(type_k, v_layout):
    rng = np.random.default_rng(12)
    src = new_cache(type_k, type_k, v_layout, size=512)
    fill_cache(src, rng, np.arange(150), np.ones(150))
    src.cells.seq_cp(1, 2, 0, 40)  # cells shared with seq 2 are saved too
    data = state.save_state(src, tokens=[5, 6], seq_id=1, arch="llama", n_rot=32)
    want = contents(src, seq_id=1)
    dst = new_cache(type_k, type_k, v_layout, size=512)
    fill_cache(dst, rng, np.arange(400), np.zeros(400))
    for p in range(0, 400, 3):  # every third cell freed: the only run of 150 free cells is gone
        dst.cells.seq_rm(0, p, p + 1)
    fill_cache(dst, rng, np.arange(10), np.ones(10))  # the old seq 1 is replaced
    keep0 = contents(dst, seq_id=0)
    assert dst.size - dst.cells.used >= 150
    toks = state.load_state(dst, data, seq_id=1, arch="llama", n_rot=32)
    assert toks == [5, 6]
    assert contents(dst, seq_id=1) == want
    assert contents(dst, seq_id=0) == keep0
    assert dst.cells.seq_count(1) == 150


def _fuzz_cases(data, rng):
    n = len(data)
    offs = sorted(set(np.linspace(0, n - 1, 60).astype(int).tolist() + list(range(0, 80, 3))))
    for o in offs:
        yield f"truncated at {o}", data[:o]
    yield "trailing byte", data + b"\0"
    for o in rng.choice(n, 80, replace=False):
        b = bytearray(data)
        b[o] ^= 1 << int(rng.integers(8))
        yield f"bit flip at {o}", bytes(b)
    b = bytearray(data)
    b[:4] = b"GGSN"
    yield "magic", bytes(b)
    b = bytearray(data)
    b[4:8] = struct.pack("<I", state.VERSION + 1)
    yield "version", bytes(b)
    yield "empty", b""
    yield "garbage", bytes(rng.integers(0, 256, 4096, dtype=np.uint8))


@pytest.mark.boundscheck
def test_fuzzed_files_raise_and_leave_cache_unchanged():
    rng = np.random.default_rng(13)
    src = new_cache("q8_0", "f16", size=256)
    fill_cache(src, rng, np.arange(40), np.zeros(40))
    full = state.save_state(src, tokens=range(40), arch="llama", n_rot=32)
    seq = state.save_state(src, tokens=range(40), seq_id=0, arch="llama", n_rot=32)
    dst = new_cache("q8_0", "f16", size=256)
    fill_cache(dst, rng, np.arange(30), np.ones(30))
    before = snapshot(dst)
    n = 0
    for data, seq_id in ((full, -1), (seq, 2)):
        for what, bad in _fuzz_cases(data, rng):
            with pytest.raises(StateError):
                state.load_state(dst, bad, seq_id=seq_id, arch="llama", n_rot=32)
            assert snapshot(dst) == before, what
            n += 1
    assert n > 300
    # the good files still load
    state.load_state(dst, seq, seq_id=2, arch="llama", n_rot=32)
    assert dst.cells.seq_count(2) == 40


def test_mismatches_are_clear_errors_and_leave_cache_unchanged(tmp_path):
    rng = np.random.default_rng(14)
    src = new_cache("f16", "f16", size=128)
    fill_cache(src, rng, np.arange(100), np.zeros(100))
    full = state.save_state(src, arch="llama", n_rot=32)
    seq = state.save_state(src, seq_id=0, arch="llama", n_rot=32)
    cases = [
        (new_cache("f16", "f16", size=128), dict(arch="qwen2", n_rot=32), full, -1, "architecture"),
        (new_cache("f16", "f16", size=128), dict(arch="llama", n_rot=16), full, -1, "rope dims"),
        (new_cache("q8_0", "f16", size=128), dict(arch="llama", n_rot=32), full, -1, "cache type"),
        (new_cache("f16", "bf16", size=128), dict(arch="llama", n_rot=32), full, -1, "cache type"),
        (new_cache("f16", "f16", "k_only", size=128), dict(arch="llama", n_rot=32), full, -1, "V cache"),
        (KVCache(2, 128, [128, 128], [128, 128], "f16", "f16", n_seq_max=4), dict(arch="llama", n_rot=32), full, -1,
         "another model"),
        (KVCache(3, 128, [64] * 3, [64] * 3, "f16", "f16", n_seq_max=4), dict(arch="llama", n_rot=32), full, -1,
         "layers"),
        (new_cache("f16", "f16", size=64), dict(arch="llama", n_rot=32), full, -1, "do not fit"),
        (new_cache("f16", "f16", size=128), dict(arch="llama", n_rot=32), seq, -1, "sequence id"),
        (new_cache("f16", "f16", size=128), dict(arch="llama", n_rot=32), full, 1, "without a sequence"),
        (new_cache("f16", "f16", size=128, n_seq_max=1), dict(arch="llama", n_rot=32), seq, 3, "out of range"),
    ]
    for dst, fp, data, seq_id, msg in cases:
        fill_cache(dst, rng, np.arange(10), np.zeros(10))
        before = snapshot(dst)
        with pytest.raises(StateError, match=msg):
            state.load_state(dst, data, seq_id=seq_id, **fp)
        assert snapshot(dst) == before, msg
    # not enough free cells for a sequence: 100 needed, 128 - 60 free
    dst = new_cache("f16", "f16", size=128)
    fill_cache(dst, rng, np.arange(60), np.ones(60))
    before = snapshot(dst)
    with pytest.raises(StateError, match="free"):
        state.load_state(dst, seq, seq_id=2, arch="llama", n_rot=32)
    assert snapshot(dst) == before
    # ... but replacing seq 1 itself frees its cells first
    state.load_state(dst, seq, seq_id=1, arch="llama", n_rot=32)
    assert dst.cells.seq_count(1) == 100
    with pytest.raises(StateError, match="cannot read"):
        state.load_file(tmp_path / "missing.bin", dst)


def test_k_only_rows_sized_from_the_cache_row_not_the_heads():
    """Seed 002 (ik #436): an MLA-like K-only cache of one 576-wide row per cell must save and restore
    576-value rows (not n_head_kv * head_dim) for contexts longer than a batch."""
    rng = np.random.default_rng(15)
    for t in ("f16", "q8_0", "q8_KV"):
        src = KVCache(2, 3000, [576, 576], [None, None], t, t, head_dim_k=576)
        fill_cache(src, rng, np.arange(2500), np.zeros(2500))
        data = state.save_state(src, arch="deepseek2", n_rot=64)
        row = {"f16": 1152, "q8_0": 612, "q8_KV": 584}[t]
        assert src.row_bytes_k(0) == row
        hdr = state._HDR.size + 4 + len("deepseek2") + state._TYPES.size + 2 * state._LAYER.size
        assert len(data) == hdr + 2500 * (4 + 8 + 4) + 2 * 2500 * row + 4
        dst = KVCache(2, 3000, [576, 576], [None, None], t, t, head_dim_k=576)
        state.load_state(dst, data, arch="deepseek2", n_rot=64)
        assert contents(dst) == contents(src)


def test_file_roundtrip(tmp_path):
    rng = np.random.default_rng(16)
    src = new_cache("bf16", "q8_KV", size=128)
    fill_cache(src, rng, np.arange(50), np.zeros(50))
    n = state.save_file(tmp_path / "s.bin", src, tokens=[1, 2], arch="x")
    assert (tmp_path / "s.bin").stat().st_size == n
    dst = new_cache("bf16", "q8_KV", size=128)
    assert state.load_file(tmp_path / "s.bin", dst, arch="x") == [1, 2]
    assert contents(dst) == contents(src)


@pytest.mark.parametrize("type_k,type_v", [("f16", "f16"), ("q8_0", "q8_0"), ("q8_KV", "q8_0")])
def test_context_next_token_logits_identical(tiny_llama, type_k, type_v):  # noqa: F811
    from pyrt.runtime.context import Batch
    rng = np.random.default_rng(17)
    toks = rng.integers(3, 500, 300).tolist()
    ctx = make_ctx(tiny_llama, type_k, type_v, n_ctx=512, n_ubatch=N_UBATCH)
    decode(ctx, toks[:N_UBATCH + 1], 0)
    decode(ctx, toks[:80], 0, seq=1)
    ctx.seq_rm(0, 5, 12)  # holes, then a shift (saved after the K-shift is applied)
    ctx.seq_add(1, 40, -1, -10)
    ctx.seq_rm(1, 30, 40)
    full = ctx.save_state(tokens=toks[:N_UBATCH + 1])
    seq1 = ctx.save_state(tokens=toks[:70], seq_id=1)
    ref0 = ctx.decode(Batch.from_tokens([9], pos0=N_UBATCH + 1))
    ref1 = ctx.decode(Batch.from_tokens([9], pos0=70, seq_id=1))

    other = make_ctx(tiny_llama, type_k, type_v, n_ctx=512, n_ubatch=N_UBATCH)
    decode(other, toks[:200], 0, seq=1)  # replaced by the full restore
    assert other.load_state(full) == toks[:N_UBATCH + 1]
    assert np.array_equal(other.decode(Batch.from_tokens([9], pos0=N_UBATCH + 1)), ref0)
    assert np.array_equal(other.decode(Batch.from_tokens([9], pos0=70, seq_id=1)), ref1)

    frag = make_ctx(tiny_llama, type_k, type_v, n_ctx=512, n_ubatch=N_UBATCH)
    decode(frag, toks[:300], 0, seq=0)
    for p in range(0, 300, 2):
        frag.seq_rm(0, p, p + 1)
    assert frag.load_state(seq1, seq_id=1) == toks[:70]
    assert np.array_equal(frag.decode(Batch.from_tokens([9], pos0=70, seq_id=1)), ref1)
