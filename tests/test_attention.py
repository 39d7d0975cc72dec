"""Flash attention over the KV cache vs a float64 numpy reference with an explicit masked softmax."""

import numba
import numpy as np
import pytest

from pyrt.errors import InvalidArgumentError
from pyrt.kv.cache import KVCache
from pyrt.ops.attention import attention, flash_attn_rows

TYPES = ["f32", "f16", "bf16", "q8_0"]
TOL = {"f32": 2e-5, "f16": 2e-5, "bf16": 2e-5, "q8_0": 2e-5}  # vs the reference on the *stored* rows


def _dequant(cache, buf, type_name, n):
    """Stored cache rows -> float64, independently of the kernel."""
    if buf is None:
        return None
    if type_name == "f32":
        return buf.astype(np.float64)
    if type_name == "f16":
        return buf.astype(np.float64)
    if type_name == "bf16":
        return (buf.astype(np.uint32) << 16).view(np.float32).astype(np.float64)
    blocks = buf.reshape(buf.shape[0], -1, 34)
    d = blocks[:, :, :2].copy().view(np.float16).astype(np.float64)  # [rows, nb, 1]
    qs = blocks[:, :, 2:].view(np.int8).astype(np.float64)  # [rows, nb, 32]
    return (d * qs).reshape(buf.shape[0], n)


def reference(q, kr, vr, cell_pos, cell_seq, q_pos, q_seq, scale, n_head_kv, dv, n_swa=0, softcap=0.0, v_off=0):
    """q [n_tok, n_head, dk], kr/vr [n_kv, row] float64 -> [n_tok, n_head, dv] float64."""
    n_tok, n_head, dk = q.shape
    n_gqa = n_head // n_head_kv
    out = np.zeros((n_tok, n_head, dv))
    for t in range(n_tok):
        vis = np.array([((int(cell_seq[c]) >> int(q_seq[t])) & 1) == 1 and cell_pos[c] <= q_pos[t]
                        and not (n_swa > 0 and q_pos[t] - cell_pos[c] >= n_swa) for c in range(len(cell_pos))],
                       dtype=bool)
        if not vis.any():
            continue
        for h in range(n_head):
            g = h // n_gqa
            K = kr[:, g * dk:(g + 1) * dk]
            V = vr[:, v_off + g * dv:v_off + (g + 1) * dv]
            s = K @ q[t, h].astype(np.float64) * scale
            if softcap > 0:
                s = softcap * np.tanh(s / softcap)
            s = np.where(vis, s, -np.inf)
            p = np.exp(s - s.max())
            out[t, h] = p @ V / p.sum()
    return out


def _fill(cache, rng, n_cells, seqs, positions):
    cells = cache.cells.find_slot(positions, seqs)
    for il in range(cache.n_layer):
        k = rng.standard_normal((n_cells, cache.n_embd_k[il])).astype(np.float32)
        v = None if cache.v[il] is None else rng.standard_normal((n_cells, cache.n_embd_v[il])).astype(np.float32)
        cache.store(il, cells, k, v)
    return cells


def _check(cache, il, q, q_pos, q_seq, scale, n_swa=0, softcap=0.0, **kw):
    out = attention(q, cache, il, q_pos, q_seq, scale, n_swa=n_swa, softcap=softcap, **kw)
    n_kv = cache.cells.n_kv()
    dk = q.shape[2]
    n_head_kv = kw.get("n_head_kv") or cache.n_embd_k[il] // dk
    kr = _dequant(cache, cache.k[il][:n_kv], cache.type_k, cache.n_embd_k[il])
    if cache.v[il] is None:
        vr, dv = kr, kw["head_dim_v"]
    else:
        vr, dv = _dequant(cache, cache.v[il][:n_kv], cache.type_v, cache.n_embd_v[il]), cache.n_embd_v[il] // n_head_kv
    ref = reference(q, kr, vr, cache.cells.pos_array()[:n_kv], cache.cells.seq_array()[:n_kv], q_pos, q_seq,
                    scale, n_head_kv, dv, n_swa, softcap, kw.get("v_offset", 0))
    assert out.shape == (q.shape[0], q.shape[1] * dv) and out.dtype == np.float32
    assert np.all(np.isfinite(out))
    np.testing.assert_allclose(out.reshape(ref.shape), ref, atol=TOL[cache.type_k] * 10, rtol=1e-4)
    return out


@pytest.mark.parametrize("type_k,type_v", [("f32", "f32"), ("f16", "f16"), ("bf16", "bf16"), ("q8_0", "q8_0"),
                                           ("f16", "q8_0")])
@pytest.mark.parametrize("n_tok", [13, 40])  # 40 >= BLAS_MIN_TOKENS: the matrix-product prompt path
def test_gqa_multi_seq_causal_and_swa(type_k, type_v, n_tok):
    rng = np.random.default_rng(1)
    n_head, n_head_kv, dk = 8, 2, 64
    cache = KVCache(1, 96, [n_head_kv * dk], [n_head_kv * dk], type_k, type_v, n_seq_max=3)
    # three interleaved sequences of different lengths, then a hole and a shared (multi-seq) run
    seqs = np.array([0, 1, 2] * 20, np.int32)
    pos = np.repeat(np.arange(20), 3).astype(np.int32)
    _fill(cache, rng, 60, seqs, pos)
    cache.cells.seq_rm(1, 5, 9)
    cells = cache.cells.find_slot_mask(np.arange(30, 40, dtype=np.int32), np.full(10, 0b101, np.uint64))
    cache.store(0, cells, rng.standard_normal((10, n_head_kv * dk)).astype(np.float32),
                rng.standard_normal((10, n_head_kv * dk)).astype(np.float32))
    q = rng.standard_normal((n_tok, n_head, dk)).astype(np.float32)
    q_seq = rng.integers(0, 3, n_tok).astype(np.int32)
    q_pos = rng.integers(0, 45, n_tok).astype(np.int32)
    scale = 1.0 / np.sqrt(dk)
    _check(cache, 0, q, q_pos, q_seq, scale)
    _check(cache, 0, q, q_pos, q_seq, scale, n_swa=6)
    _check(cache, 0, q, q_pos, q_seq, scale, softcap=2.0)


@pytest.mark.boundscheck
def test_queries_that_see_nothing_give_zeros():
    rng = np.random.default_rng(2)
    cache = KVCache(1, 16, [32], [32], "f32", "f32", n_seq_max=2)
    _fill(cache, rng, 8, np.zeros(8, np.int32), np.arange(10, 18, dtype=np.int32))
    q = rng.standard_normal((3, 2, 16)).astype(np.float32)
    # seq 1 has no cells; pos 5 is before every cell of seq 0; the third query sees cells 10..12
    out = _check(cache, 0, q, np.array([20, 5, 12], np.int32), np.array([1, 0, 0], np.int32), 0.25)
    assert np.all(out[:2] == 0) and np.any(out[2] != 0)
    empty = KVCache(1, 16, [32], [32], "f16", "f16")
    assert np.all(attention(q, empty, 0, np.zeros(3, np.int32), np.zeros(3, np.int32), 0.25) == 0)


@pytest.mark.boundscheck
def test_k_only_cache_reads_v_from_k_rows():
    rng = np.random.default_rng(3)
    # MLA-like: one kv head, K row = 64 values, V = 32 values at column offset 32
    cache = KVCache(1, 40, [64], [None], "q8_0", "f16")
    _fill(cache, rng, 40, np.zeros(40, np.int32), np.arange(40, dtype=np.int32))
    q = rng.standard_normal((5, 4, 64)).astype(np.float32)
    _check(cache, 0, q, np.array([0, 7, 20, 39, 39], np.int32), np.zeros(5, np.int32), 0.125,
           n_head_kv=1, head_dim_v=32, v_offset=32)


def test_decode_equals_prefill_and_thread_independence():
    rng = np.random.default_rng(4)
    n_head, n_head_kv, dk = 4, 1, 64
    for type_k in TYPES:
        cache = KVCache(1, 64, [n_head_kv * dk], [n_head_kv * dk], type_k, type_k)
        _fill(cache, rng, 33, np.zeros(33, np.int32), np.arange(33, dtype=np.int32))
        q = rng.standard_normal((33, n_head, dk)).astype(np.float32)
        pos, seq = np.arange(33, dtype=np.int32), np.zeros(33, np.int32)
        full = attention(q, cache, 0, pos, seq, 0.125)
        last = attention(q[32:], cache, 0, pos[32:], seq[32:], 0.125)
        np.testing.assert_allclose(last[0], full[32], rtol=1e-5, atol=1e-6)
        _check(cache, 0, q, pos, seq, 0.125)
    # a long cache so that decode splits the KV range; results must not depend on the thread count
    cache = KVCache(1, 2048, [2 * dk], [2 * dk], "f16", "f16")
    _fill(cache, rng, 2000, np.zeros(2000, np.int32), np.arange(2000, dtype=np.int32))
    for n_tok in (1, 40):
        q = rng.standard_normal((n_tok, 8, dk)).astype(np.float32)
        pos = np.arange(2000 - n_tok, 2000, dtype=np.int32)
        outs = []
        for nt in (1, 2):
            numba.set_num_threads(min(nt, numba.config.NUMBA_NUM_THREADS))
            outs.append(attention(q, cache, 0, pos, np.zeros(n_tok, np.int32), 0.125))
        numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)
        assert np.array_equal(outs[0], outs[1])
        _check(cache, 0, q, pos, np.zeros(n_tok, np.int32), 0.125)


def test_validation():
    cache = KVCache(1, 8, [32], [32], "f16", "f16")
    q = np.zeros((2, 2, 16), np.float32)
    with pytest.raises(InvalidArgumentError):
        attention(q.astype(np.float64), cache, 0, np.zeros(2, np.int32), np.zeros(2, np.int32), 1.0)
    with pytest.raises(InvalidArgumentError):
        attention(q, cache, 1, np.zeros(2, np.int32), np.zeros(2, np.int32), 1.0)
    with pytest.raises(InvalidArgumentError):
        attention(q, cache, 0, np.zeros(3, np.int32), np.zeros(2, np.int32), 1.0)
    with pytest.raises(InvalidArgumentError):
        attention(q, cache, 0, np.zeros(2, np.int32), np.array([0, 64], np.int32), 1.0)
    with pytest.raises(InvalidArgumentError):
        attention(np.zeros((2, 3, 16), np.float32), cache, 0, np.zeros(2, np.int32), np.zeros(2, np.int32), 1.0)
    with pytest.raises(InvalidArgumentError):
        attention(q, cache, 0, np.zeros(2, np.int32), np.zeros(2, np.int32), 1.0, n_swa=-1)
    with pytest.raises(InvalidArgumentError):
        flash_attn_rows(q, cache.k[0], "f16", cache.v[0][:4], "f16", np.zeros(8, np.int32),
                        np.zeros(8, np.uint64), np.zeros(2, np.int32), np.zeros(2, np.int32), 1.0, 2, 16)
    with pytest.raises(InvalidArgumentError):
        attention(q, cache, 0, np.zeros(2, np.int32), np.zeros(2, np.int32), 1.0, out=np.zeros((2, 31), np.float32))


def test_prompt_path_edge_cases_match_reference():
    """The matrix-product path (>= BLAS_MIN_TOKENS queries): invisible rows, K-only caches, q8_KV."""
    from pyrt.ops.attention import BLAS_MIN_TOKENS
    rng = np.random.default_rng(9)
    n = BLAS_MIN_TOKENS + 3
    cache = KVCache(1, 16, [32], [32], "f32", "f32", n_seq_max=2)
    _fill(cache, rng, 8, np.zeros(8, np.int32), np.arange(10, 18, dtype=np.int32))
    q = rng.standard_normal((n, 2, 16)).astype(np.float32)
    q_pos = rng.integers(0, 25, n).astype(np.int32)
    q_seq = rng.integers(0, 2, n).astype(np.int32)
    out = _check(cache, 0, q, q_pos, q_seq, 0.25)
    blind = (q_seq == 1) | (q_pos < 10)
    assert blind.any() and np.all(out[blind] == 0)
    kcache = KVCache(1, 60, [64], [None], "f16", "f16")
    _fill(kcache, rng, 60, np.zeros(60, np.int32), np.arange(60, dtype=np.int32))
    q = rng.standard_normal((n, 4, 64)).astype(np.float32)
    _check(kcache, 0, q, rng.integers(0, 60, n).astype(np.int32), np.zeros(n, np.int32), 0.125,
           n_head_kv=1, head_dim_v=32, v_offset=32)


def test_attention_matrix_on_strided_rows():
    """The matrix-product path on f32 K/V views (DeepSeek2's decompressed heads): the float64 reference,
    queries of two sequences, unsorted cells, no visible cell, and shape checks."""
    from pyrt.ops.attention import attention_matrix
    rng = np.random.default_rng(21)
    n_vis, H, dk, dv, n_tok = 50, 4, 24, 16, 37
    Kc = rng.standard_normal((n_vis, H * dk)).astype(np.float32)
    Vc = rng.standard_normal((n_vis, H * dv)).astype(np.float32)
    cp = rng.permutation(n_vis).astype(np.int32)
    cs = np.where(np.arange(n_vis) % 3 == 0, 3, 1).astype(np.uint64)     # cells of seq 0, some shared with seq 1
    q = rng.standard_normal((n_tok, H, dk)).astype(np.float32)
    q_pos = rng.integers(-1, n_vis, n_tok).astype(np.int32)                # -1: sees nothing
    q_seq = (np.arange(n_tok) % 2).astype(np.int32)
    Vs = np.concatenate([Kc, Vc], axis=1)[:, H * dk:]                     # a strided view, as a K-only cache's V
    out = attention_matrix(q, Kc, Vs, cp, cs, q_pos, q_seq, 0.3, H, dv)
    ref = reference(q, Kc.astype(np.float64), Vc.astype(np.float64), cp, cs, q_pos, q_seq, 0.3, H, dv)
    np.testing.assert_allclose(out.reshape(ref.shape), ref, atol=1e-5, rtol=1e-4)
    assert np.all(out.reshape(ref.shape)[q_pos < 0] == 0.0)
    with pytest.raises(InvalidArgumentError):
        attention_matrix(q, Kc[:-1], Vc, cp, cs, q_pos, q_seq, 0.3, H, dv)
    with pytest.raises(InvalidArgumentError):
        attention_matrix(q, Kc, Vc, cp, cs, q_pos, q_seq + 64, 0.3, H, dv)
    empty = attention_matrix(q, Kc[:0], Vc[:0], cp[:0], cs[:0], q_pos, q_seq, 0.3, H, dv)
    assert empty.shape == (n_tok, H * dv) and not empty.any()


@pytest.mark.parametrize("n_head_kv", [4, 2])
def test_attention_matrix_heads_and_shared_rope_key(n_head_kv):
    """MLA's decompressed prompt attention on the matrix path: K and V as [n_vis, n_head_kv, d] views into kv_b's
    [k_nope | v] rows, plus one rope key per cell shared by every head (a strided view of the latent rows),
    against the float64 reference over the concatenated [k_nope | k_rope] heads; shape checks."""
    from pyrt.ops.attention import attention_matrix
    rng = np.random.default_rng(5 + n_head_kv)
    n_vis, H, dn, dr, dv, n_tok = 70, 4, 24, 8, 16, 40
    kv = rng.standard_normal((n_vis, n_head_kv, dn + dv)).astype(np.float32)
    lat = rng.standard_normal((n_vis, dr + 20)).astype(np.float32)                 # [k_rope | latent]
    q = rng.standard_normal((n_tok, H, dn + dr)).astype(np.float32)
    cp = np.arange(n_vis, dtype=np.int32)
    cs = np.where(np.arange(n_vis) % 4 == 0, 3, 1).astype(np.uint64)
    q_pos = np.sort(rng.integers(-1, n_vis, n_tok)).astype(np.int32)
    q_seq = (np.arange(n_tok) % 2).astype(np.int32)
    out = attention_matrix(q[:, :, :dn], kv[:, :, :dn], kv[:, :, dn:], cp, cs, q_pos, q_seq, 0.2, n_head_kv, dv,
                           q_rope=np.ascontiguousarray(q[:, :, dn:]), k_rope=lat[:, :dr])
    k_full = np.concatenate([kv[:, :, :dn], np.repeat(lat[:, None, :dr], n_head_kv, axis=1)], axis=2)
    ref = reference(q, k_full.reshape(n_vis, -1).astype(np.float64),
                    kv[:, :, dn:].reshape(n_vis, -1).astype(np.float64), cp, cs, q_pos, q_seq, 0.2, n_head_kv, dv)
    np.testing.assert_allclose(out.reshape(ref.shape), ref, atol=1e-5, rtol=1e-4)
    q_pe = np.ascontiguousarray(q[:, :, dn:])
    bad = [dict(q_rope=q_pe),                                                         # k_rope missing
           dict(q_rope=q_pe, k_rope=lat[:-1, :dr]),                                    # one rope key short
           dict(q_rope=q_pe[:, :, :-1], k_rope=lat[:, :dr]),                           # widths differ
           dict(q_rope=q_pe.astype(np.float64), k_rope=lat[:, :dr])]
    for kw in bad:
        with pytest.raises(InvalidArgumentError):
            attention_matrix(q[:, :, :dn], kv[:, :, :dn], kv[:, :, dn:], cp, cs, q_pos, q_seq, 0.2, n_head_kv, dv,
                             **kw)
    with pytest.raises(InvalidArgumentError):                                       # head width differs
        attention_matrix(q[:, :, :dn], kv[:, :, :dn - 1], kv[:, :, dn:], cp, cs, q_pos, q_seq, 0.2, n_head_kv, dv)
    with pytest.raises(InvalidArgumentError):                                       # values not contiguous
        attention_matrix(q[:, :, :dn], kv[:, :, :dn], kv[:, :, dn::2], cp, cs, q_pos, q_seq, 0.2, n_head_kv,
                         dv // 2)


def test_blas_pool_runs_each_item_once_and_hands_back_an_error():
    """The BLAS pool's workers take items as they free up: every item runs exactly once on any thread count, an
    item's exception reaches the caller, the items not yet taken are dropped, and the pool serves the next map."""
    import threading
    import time
    from pyrt.backends.cpu import BlasPool
    pool = BlasPool()
    for nt in (1, 2, 3):
        seen, lock = [], threading.Lock()

        def fn(i):
            with lock:
                seen.append(i)
        pool.map(fn, nt, list(range(37)))
        assert sorted(seen) == list(range(37))
    ran = []

    def bad(i):
        ran.append(i)
        if i == 3:
            raise ValueError("item 3")
        time.sleep(0.001)
    with pytest.raises(ValueError, match="item 3"):
        pool.map(bad, 2, list(range(1000)))
    assert 3 in ran and len(ran) < 50
    out = []
    pool.map(out.append, 2, [1, 2])
    assert sorted(out) == [1, 2]


@pytest.mark.parametrize("n_kv,n_split,tile", [(4097, 16, 32), (4096, 16, 32), (8207, 16, 32), (300, 4, 32),
                                              (513, 2, 64), (96, 8, 32), (1, 1, 32), (7, 3, 4)])
def test_kv_splits_cover_the_cells_in_tiles_of_equal_share(n_kv, n_split, tile):
    """split_partials' bounds: in scan order from 0 to n_kv, on tile boundaries (the last one excepted), and the
    splits' tile counts within one of each other (a decoded token's items are equal work for the threads)."""
    from pyrt._kernels.softmax import split_partials
    bounds, pm, pl, pacc = split_partials(n_kv, n_split, tile, 1, 16, 64)
    assert bounds.shape == (n_split + 1,) and bounds[0] == 0 and bounds[-1] == n_kv
    assert np.all(np.diff(bounds) >= 0)
    assert np.all(bounds[:-1] % tile == 0)
    tiles = -(-np.diff(bounds) // tile)
    assert tiles.sum() == -(-n_kv // tile) and tiles.max() - tiles.min() <= 1
    assert pacc.shape == ((n_split if n_split > 1 else 0), 1, 16, 64)
