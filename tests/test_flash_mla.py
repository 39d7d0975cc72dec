"""FlashMLA kernel (pyrt.ops.mla.flash_mla) against float64 numpy: absorbed == decompressed == naive MLA.

Random latent cache rows [k_pe | c_kv] in every MLA cache type, masks from positions and sequences,
KV splits for decode, and the algebra of absorption (q_nope . W_UK against c_kv, output through W_UV).
"""

from __future__ import annotations

import os

import gguf
import numpy as np
import pytest
from mla_reference import naive_latent

from pyrt.errors import InvalidArgumentError, UnsupportedError
from pyrt.kv.cache import KVCache
from pyrt.ops import mla, paths
from pyrt.ops.attention import flash_attn_rows

H, C, R, DN, DV = 4, 64, 32, 32, 32


def _cache(type_k, rows):
    cache = KVCache(1, rows.shape[0], [R + C], [0], type_k, type_k, n_seq_max=2, head_dim_k=R + C, head_dim_v=0)
    cache.store(0, np.arange(rows.shape[0], dtype=np.int32), rows, None)
    return cache, cache.k_values(0, np.arange(rows.shape[0]))  # what the cache holds, as f32


def _q_seen(q, type_k):
    """The queries as the f32 items' scores take them: over a q8_0 cache quantized to Q8_0 per (token, head) row
    (llama.cpp's q8_0 K dots its Q8_0-quantized Q), as gguf quantizes; unchanged over the other caches."""
    if type_k != "q8_0":
        return q
    flat = q.reshape(-1, q.shape[-1])
    return gguf.quants.dequantize(gguf.quants.quantize(flat, gguf.GGMLQuantizationType.Q8_0),
                                  gguf.GGMLQuantizationType.Q8_0).reshape(q.shape).astype(np.float32)


def _one_thread(fn, *args):
    """fn(*args) with Numba's parallel loops on one thread."""
    import numba
    old = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        return fn(*args)
    finally:
        numba.set_num_threads(old)


@pytest.mark.parametrize("type_k", ["f32", "f16", "bf16", "q8_0"])
@pytest.mark.parametrize("n_tok,n_cells", [(1, 700), (5, 97), (40, 130)])
def test_flash_mla_matches_float64(type_k, n_tok, n_cells):
    rng = np.random.default_rng(7 + n_tok)
    rows = rng.standard_normal((n_cells, R + C)).astype(np.float32)
    cache, held = _cache(type_k, rows)
    cell_pos = np.arange(n_cells, dtype=np.int32) // 2  # two sequences interleaved
    cell_seq = np.where(np.arange(n_cells) % 2 == 0, 1, 2).astype(np.uint64)
    q_pos = np.sort(rng.integers(0, n_cells // 2, n_tok)).astype(np.int32)
    q_seq = rng.integers(0, 2, n_tok).astype(np.int32)
    q = (0.3 * rng.standard_normal((n_tok, H, R + C))).astype(np.float32)
    kv_idx = np.arange(n_cells, dtype=np.int32)
    out = mla.flash_mla(q, cache.k[0], type_k, cell_pos, cell_seq, kv_idx, q_pos, q_seq, 0.125, R)
    ref = naive_latent(_q_seen(q, type_k), held, R, cell_pos, cell_seq, q_pos, q_seq, 0.125)
    nmse = ((out - ref) ** 2).sum() / (ref ** 2).sum()
    assert out.shape == (n_tok, H, C)
    assert nmse < 1e-10 if type_k == "f32" else nmse < 1e-9, nmse
    if type_k == "q8_0":  # the quantized queries are what the reference must take: unquantized it is far off
        exact_q = naive_latent(q, held, R, cell_pos, cell_seq, q_pos, q_seq, 0.125)
        assert ((out - exact_q) ** 2).sum() / (exact_q ** 2).sum() > 1e-8


@pytest.mark.boundscheck
@pytest.mark.parametrize("n_tok,n_cells", [(1, 203), (6, 77), (3, 5)])
def test_flash_mla_q8_0_scores_any_scan_order(n_tok, n_cells):
    """A q8_0 cache's integer scores in any scan order: runs of adjacent cells (8 cache rows read in place), cells
    out of order (their rows copied side by side) and a tile's last cells one by one, all against float64 with
    the Q8_0 queries; a decoded token's KV splits merge to the same result on one thread."""
    rng = np.random.default_rng(11 + n_tok)
    rows = rng.standard_normal((n_cells, R + C)).astype(np.float32)
    cache, held = _cache("q8_0", rows)
    cell_pos = np.arange(n_cells, dtype=np.int32)
    cell_seq = np.ones(n_cells, dtype=np.uint64)
    q_pos = np.arange(n_cells - n_tok, n_cells, dtype=np.int32)
    q_seq = np.zeros(n_tok, dtype=np.int32)
    q = (0.3 * rng.standard_normal((n_tok, H, R + C))).astype(np.float32)
    head = min(40, n_cells)
    kv_idx = np.concatenate([np.arange(head), head + rng.permutation(n_cells - head)]).astype(np.int32)
    kv_idx[head // 2:head] = kv_idx[head // 2:head][::-1].copy()
    args = (q, cache.k[0], "q8_0", cell_pos, cell_seq, kv_idx, q_pos, q_seq, 0.125, R)
    out = mla.flash_mla(*args)
    ref = naive_latent(_q_seen(q, "q8_0"), held, R, cell_pos, cell_seq, q_pos, q_seq, 0.125)
    assert ((out - ref) ** 2).sum() / (ref ** 2).sum() < 1e-9
    assert np.array_equal(out, _one_thread(mla.flash_mla, *args))


def test_absorbed_equals_decompressed_equals_naive():
    """Absorbed attention over the latent cache == per-head decompressed MHA == float64 naive MLA."""
    rng = np.random.default_rng(3)
    n_tok, n_cells = 6, 50
    c_kv = rng.standard_normal((n_cells, C)).astype(np.float32)
    k_pe = rng.standard_normal((n_cells, R)).astype(np.float32)
    kv_b = (0.2 * rng.standard_normal((H, DN + DV, C))).astype(np.float32)  # per head [W_UK; W_UV]
    q_nope = rng.standard_normal((n_tok, H, DN)).astype(np.float32)
    q_pe = rng.standard_normal((n_tok, H, R)).astype(np.float32)
    cell_pos = np.arange(n_cells, dtype=np.int32)
    cell_seq = np.ones(n_cells, dtype=np.uint64)
    q_pos = np.arange(n_cells - n_tok, n_cells, dtype=np.int32)
    q_seq = np.zeros(n_tok, dtype=np.int32)
    scale = 1.0 / np.sqrt(DN + R)
    # naive float64 MHA with the decompressed keys and values
    w = kv_b.astype(np.float64)
    k_nope = np.einsum("hdc,nc->nhd", w[:, :DN], c_kv)
    v = np.einsum("hdc,nc->nhd", w[:, DN:], c_kv)
    s = (np.einsum("thd,nhd->thn", q_nope.astype(np.float64), k_nope)
         + np.einsum("thr,nr->thn", q_pe.astype(np.float64), k_pe)) * scale
    s = np.where(cell_pos[None, None, :] <= q_pos[:, None, None], s, -np.inf)
    p = np.exp(s - s.max(axis=2, keepdims=True))
    p /= p.sum(axis=2, keepdims=True)
    ref = np.einsum("thn,nhd->thd", p, v)  # [n_tok, H, DV]
    # absorbed
    rows = np.concatenate([k_pe, c_kv], axis=1)
    q_abs = np.einsum("thd,hdc->thc", q_nope, kv_b[:, :DN])
    qa = np.concatenate([q_pe, q_abs], axis=2).astype(np.float32)
    o_lat = mla.flash_mla(qa, rows, "f32", cell_pos, cell_seq, np.arange(n_cells, dtype=np.int32), q_pos, q_seq,
                          scale, R)
    absorbed = np.einsum("thc,hdc->thd", o_lat, kv_b[:, DN:])
    # decompressed through the standard flash-attention kernel
    kf = np.concatenate([k_nope, np.repeat(k_pe[:, None, :], H, axis=1)], axis=2).astype(np.float32)
    qf = np.concatenate([q_nope, q_pe], axis=2)
    dec = flash_attn_rows(qf, kf.reshape(n_cells, -1), "f32", v.astype(np.float32).reshape(n_cells, -1), "f32",
                          cell_pos, cell_seq, q_pos, q_seq, scale, H, DV).reshape(n_tok, H, DV)
    for got in (absorbed, dec):
        assert ((got - ref) ** 2).sum() / (ref ** 2).sum() < 1e-10
    assert ((absorbed - dec) ** 2).sum() / (dec ** 2).sum() < 1e-10


def test_split_merge_is_exact_and_thread_independent():
    rng = np.random.default_rng(11)
    n_cells = 2048  # decode: split into several KV ranges
    rows = rng.standard_normal((n_cells, R + C)).astype(np.float32)
    q = rng.standard_normal((1, H, R + C)).astype(np.float32)
    cp = np.arange(n_cells, dtype=np.int32)
    cs = np.ones(n_cells, dtype=np.uint64)
    assert mla.choose_tiles(1, H, n_cells)[2] > 1
    args = (q, rows, "f32", cp, cs, np.arange(n_cells, dtype=np.int32), np.array([n_cells]), np.array([0]), 0.1, R)
    a = mla.flash_mla(*args)
    assert np.array_equal(a, _one_thread(mla.flash_mla, *args))
    ref = naive_latent(q, rows, R, cp, cs, np.array([n_cells]), np.array([0]), 0.1)
    assert ((a - ref) ** 2).sum() / (ref ** 2).sum() < 1e-10


def test_invisible_query_gets_zeros_and_bad_inputs_raise():
    rows = np.ones((4, R + C), np.float32)
    q = np.ones((1, H, R + C), np.float32)
    out = mla.flash_mla(q, rows, "f32", np.array([5, 6, 7, 8], np.int32), np.ones(4, np.uint64),
                        np.arange(4, dtype=np.int32), np.array([1]), np.array([0]), 1.0, R)
    assert not out.any()
    with pytest.raises(UnsupportedError):
        mla.check_cache_type("q8_KV")
    with pytest.raises(InvalidArgumentError):
        mla.flash_mla(q, rows, "f32", np.zeros(4, np.int32), np.ones(4, np.uint64), np.array([4], np.int32),
                      np.array([1]), np.array([0]), 1.0, R)
    with pytest.raises(InvalidArgumentError):
        mla.flash_mla(q[:, :, :10], rows, "f32", np.zeros(4, np.int32), np.ones(4, np.uint64),
                      np.arange(4, dtype=np.int32), np.array([1]), np.array([0]), 1.0, R)


def _q_rows(rng, n_rows, n_in, ggml_type):
    """Random raw rows of a Q8_0/Q4_0/Q5_0 weight (real f16 scales, random quants), read-only like mapped weights."""
    from pyrt.formats.qtypes import get_qtype
    qt = get_qtype(ggml_type)
    nb = n_in // 32
    w = rng.integers(0, 256, (n_rows, nb, qt.type_size), dtype=np.uint8)
    w[:, :, :2] = (rng.random((n_rows, nb)) * 0.02 + 0.001).astype(np.float16).view(np.uint8).reshape(n_rows, nb, 2)
    w = w.reshape(n_rows, nb * qt.type_size)
    w.flags.writeable = False
    return w


@pytest.mark.boundscheck
@pytest.mark.parametrize("n_head,n_cells", [(8, 40), (8, 700), (6, 40), (4, 1)])
def test_fused_decode_equals_three_calls(n_head, n_cells):
    """MLADecode (W_UK, FlashMLA, W_UV in one kernel: one region per group of 4 heads for few cells, three
    regions otherwise) gives exactly what matmul_id + flash_mla + matmul_id give."""
    from gguf import GGMLQuantizationType as T
    from pyrt.ops import matmul as mm
    rng = np.random.default_rng(n_head * 1000 + n_cells)
    Cw, Dn, Dv = 64, 64, 32
    k_b = _q_rows(rng, n_head * Cw, Dn, int(T.Q8_0))           # [H*C, Dn] W_UK^T rows per head
    v_b = _q_rows(rng, n_head * (Dn + Dv), Cw, int(T.Q4_0))    # kv_b-like: head h's V rows at h*(Dn+Dv)+Dn
    v_row0 = np.arange(n_head, dtype=np.int64) * (Dn + Dv) + Dn
    dec = mla.MLADecode.build(k_b, int(T.Q8_0), v_b, v_row0, int(T.Q4_0), n_head, Cw, Dn, Dv)
    rows = rng.standard_normal((n_cells, R + Cw)).astype(np.float32).astype(np.float16)
    cp = np.arange(n_cells, dtype=np.int32)
    cs = np.ones(n_cells, dtype=np.uint64)
    idx = np.arange(n_cells, dtype=np.int32)
    q_nope = rng.standard_normal((n_head, Dn)).astype(np.float32)
    q_pe = rng.standard_normal((n_head, R)).astype(np.float32)
    pos, seq = np.array([n_cells], np.int32), np.array([0], np.int32)
    got = dec(q_nope, q_pe, rows, "f16", cp, cs, idx, pos, seq, 0.05)
    qa = np.empty((1, n_head, R + Cw), np.float32)
    qa[0, :, :R] = q_pe
    qa[0, :, R:] = mm.matmul_id(q_nope, k_b, int(T.Q8_0), np.arange(n_head, dtype=np.int64) * Cw,
                                np.arange(n_head), Cw)
    o_lat = mla.flash_mla(qa, rows, "f16", cp, cs, idx, pos, seq, 0.05, R)
    want = mm.matmul_id(o_lat[0], v_b, int(T.Q4_0), v_row0, np.arange(n_head), Dv)
    np.testing.assert_array_equal(got, want)


def _amx_runs():
    from pyrt._kernels.attention_mla_amx import HAS_AMX_BF16
    from pyrt.ops.matmul import amx_enabled
    return HAS_AMX_BF16 and amx_enabled()


amx_only = pytest.mark.skipif(not _amx_runs(), reason="AMX-BF16 tiles: the CPU or kernel does not offer them here")


@pytest.fixture
def bf16_tiles(monkeypatch):
    """FlashMLA's tile configuration without the AMX-FP16 byte: f16 caches on the AMX-BF16 items, whatever the
    CPU declares."""
    monkeypatch.setattr(mla, "_AMX_CFG", [mla.amx_config()[:64]])


@amx_only
@pytest.mark.parametrize("type_k", ["f16", "bf16", "q8_0"])
@pytest.mark.parametrize("n_head,n_tok,n_cells", [(16, 1, 700), (16, 5, 97), (32, 9, 130), (16, 1, 31)])
def test_flash_mla_amx_matches_float64(bf16_tiles, type_k, n_head, n_tok, n_cells):
    """The AMX-BF16 items (16-row groups, two bf16 terms per operand) against float64, masks and splits
    included, and against the f32 items; f32 caches keep the f32 items."""
    rng = np.random.default_rng(3 + n_tok + n_head)
    rows = rng.standard_normal((n_cells, R + C)).astype(np.float32)
    cache, held = _cache(type_k, rows)
    cell_pos = np.arange(n_cells, dtype=np.int32) // 2
    cell_seq = np.where(np.arange(n_cells) % 2 == 0, 1, 2).astype(np.uint64)
    q_pos = np.sort(rng.integers(0, n_cells // 2, n_tok)).astype(np.int32)
    q_seq = rng.integers(0, 2, n_tok).astype(np.int32)
    if n_tok > 1:
        q_pos[0] = -1  # a query that sees no cell gets zeros
    q = (0.3 * rng.standard_normal((n_tok, n_head, R + C))).astype(np.float32)
    kv_idx = rng.permutation(n_cells).astype(np.int32)  # any scan order
    args = (q, cache.k[0], type_k, cell_pos, cell_seq, kv_idx, q_pos, q_seq, 0.125, R)
    assert mla.amx_config().size == 64
    out = mla.flash_mla(*args)
    with paths.using(amx=False):
        assert mla.amx_config().size == 0
        f32 = mla.flash_mla(*args)
    ref = naive_latent(q, held, R, cell_pos, cell_seq, q_pos, q_seq, 0.125)
    ref_f32 = naive_latent(_q_seen(q, type_k), held, R, cell_pos, cell_seq, q_pos, q_seq, 0.125)
    assert not np.array_equal(out, f32)  # the tiles ran
    if n_tok > 1:
        assert np.array_equal(out[0], np.zeros_like(out[0]))
    for got, want in ((out, ref), (f32, ref_f32)):
        assert ((got - want) ** 2).sum() / (want ** 2).sum() < 1e-9


@amx_only
def test_flash_mla_amx_split_is_thread_independent(bf16_tiles):
    rng = np.random.default_rng(5)
    n_cells, n_head = 3000, 16
    rows = rng.standard_normal((n_cells, R + C)).astype(np.float16)
    q = rng.standard_normal((1, n_head, R + C)).astype(np.float32)
    cp = np.arange(n_cells, dtype=np.int32)
    cs = np.ones(n_cells, dtype=np.uint64)
    args = (q, rows, "f16", cp, cs, np.arange(n_cells, dtype=np.int32), np.array([n_cells]), np.array([0]), 0.1, R)
    a = mla.flash_mla(*args)
    assert np.array_equal(a, _one_thread(mla.flash_mla, *args))
    ref = naive_latent(q, rows.astype(np.float32), R, cp, cs, np.array([n_cells]), np.array([0]), 0.1)
    assert ((a - ref) ** 2).sum() / (ref ** 2).sum() < 1e-9


@pytest.mark.boundscheck
@amx_only
@pytest.mark.parametrize("type_k", ["f16", "bf16"])
@pytest.mark.parametrize("n_cells", [45, 700])
def test_flash_mla_amx_decode_items_equal_whole_row_items(bf16_tiles, n_cells, type_k):
    """A decoded token's items (one 16-row group over f16 or bf16 rows: K and V converted block by block into
    L1-sized tiles) give the bits of the whole-row items that two copies of the token take (two groups)."""
    rng = np.random.default_rng(11)
    rows = rng.standard_normal((n_cells, R + C)).astype(np.float32)
    if type_k == "f16":
        rows = rows.astype(np.float16)
    else:
        rows = (rows.view(np.uint32) >> 16).astype(np.uint16)  # bf16 bits
    cp = np.arange(n_cells, dtype=np.int32) // 2
    cs = np.where(np.arange(n_cells) % 3 == 0, 2, 1).astype(np.uint64)  # a third of the cells: another sequence
    kv_idx = rng.permutation(n_cells).astype(np.int32)
    q = (0.3 * rng.standard_normal((1, 16, R + C))).astype(np.float32)
    p = np.array([n_cells // 3], np.int32)  # sees part of the cells: partial and empty tiles
    one = mla.flash_mla(q, rows, type_k, cp, cs, kv_idx, p, np.array([0]), 0.125, R)
    two = mla.flash_mla(np.concatenate([q, q]), rows, type_k, cp, cs, kv_idx, np.concatenate([p, p]),
                        np.array([0, 0]), 0.125, R)
    assert np.array_equal(two[0], one[0]) and np.array_equal(two[1], one[0])
    held = rows.astype(np.float32) if type_k == "f16" else (rows.astype(np.uint32) << 16).view(np.float32)
    ref = naive_latent(q, held, R, cp, cs, p, np.array([0]), 0.125)
    assert ((one - ref) ** 2).sum() / (ref ** 2).sum() < 1e-9


def _amx16_runs():
    """The AMX-FP16 items can run here: AMX-BF16 items can, and the CPU declares AMX-FP16 or one product in a
    child process gives the right sums (a CPU without the instruction kills the child, not the tests)."""
    if not _amx_runs():
        return False
    from pyrt._kernels import attention_mla_amx16 as A16
    return A16.HAS_AMX_FP16_CPU or A16.probe_child() is True


amx16_only = pytest.mark.skipif(not _amx16_runs(), reason="AMX-FP16 tiles: the CPU does not run tdpfp16ps")


@pytest.fixture
def amx16(monkeypatch):
    """FlashMLA's tile configuration with the AMX-FP16 byte, whatever PYRT_AMX_FP16 says."""
    cfg = mla.amx_config()[:64]
    monkeypatch.setattr(mla, "_AMX_CFG", [np.concatenate([cfg, np.ones(1, np.uint8)])])
    return cfg


@pytest.mark.boundscheck
@amx16_only
@pytest.mark.parametrize("n_head,n_tok,n_cells,order", [(16, 1, 700, "scan"), (16, 1, 700, "any"), (16, 5, 97, "any"),
                                                        (32, 9, 130, "scan"), (16, 1, 31, "any")])
def test_flash_mla_amx16_matches_float64(amx16, n_head, n_tok, n_cells, order):
    """The AMX-FP16 items over an f16 cache (cache rows as tile operands, consecutive cells straight from the
    cache, others through a copy; Q and P as two f16 terms) against float64, masks and an empty query included:
    about 1e-14 where the bf16 items give 1e-11."""
    rng = np.random.default_rng(3 + n_tok + n_head)
    rows = rng.standard_normal((n_cells, R + C)).astype(np.float16)
    cell_pos = np.arange(n_cells, dtype=np.int32) // 2
    cell_seq = np.where(np.arange(n_cells) % 2 == 0, 1, 2).astype(np.uint64)
    q_pos = np.sort(rng.integers(0, n_cells // 2, n_tok)).astype(np.int32)
    q_seq = rng.integers(0, 2, n_tok).astype(np.int32)
    if n_tok > 1:
        q_pos[0] = -1
    q = (0.3 * rng.standard_normal((n_tok, n_head, R + C))).astype(np.float32)
    q[0, 0, 5] = 3e-6  # a query term below f16's normal range before its scaling
    kv_idx = (np.arange(n_cells) if order == "scan" else rng.permutation(n_cells)).astype(np.int32)
    args = (q, rows, "f16", cell_pos, cell_seq, kv_idx, q_pos, q_seq, 0.125, R)
    out = mla.flash_mla(*args)
    ref = naive_latent(q, rows.astype(np.float32), R, cell_pos, cell_seq, q_pos, q_seq, 0.125)
    with paths.using(amx=False):
        f32 = mla.flash_mla(*args)
    assert not np.array_equal(out, f32)
    if n_tok > 1:
        assert np.array_equal(out[0], np.zeros_like(out[0]))
    assert ((out - ref) ** 2).sum() / (ref ** 2).sum() < 1e-12
    assert np.array_equal(out, _one_thread(mla.flash_mla, *args))  # splits merged in a fixed order


@amx16_only
def test_amx16_is_only_for_f16_caches(amx16):
    """bf16 and q8_0 caches keep the bf16 items (their values are not f16 operands): the same bits as without the
    AMX-FP16 byte."""
    rng = np.random.default_rng(2)
    rows = rng.standard_normal((300, R + C)).astype(np.float32)
    q = rng.standard_normal((1, 16, R + C)).astype(np.float32)
    cp, cs = np.arange(300, dtype=np.int32), np.ones(300, np.uint64)
    for type_k in ("bf16", "q8_0"):
        cache, _ = _cache(type_k, rows)
        args = (q, cache.k[0], type_k, cp, cs, np.arange(300, dtype=np.int32), np.array([299]), np.array([0]), 0.1, R)
        with_byte = mla.flash_mla(*args)
        mla._AMX_CFG[0] = amx16
        assert np.array_equal(with_byte, mla.flash_mla(*args))
        mla._AMX_CFG[0] = np.concatenate([amx16, np.ones(1, np.uint8)])


def _amx16_in_child(value, cache, stored=None):
    """(amx_fp16(), amx_config().size, the stored verdict or None) in a child process with PYRT_AMX_FP16=value
    (None: unset), PYRT_CACHE=cache and, where stored is given, that verdict in place first."""
    import subprocess
    import sys
    env = {k: v for k, v in os.environ.items() if k != "PYRT_AMX_FP16"}
    env["PYRT_CACHE"] = str(cache)
    if value is not None:
        env["PYRT_AMX_FP16"] = value
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PYRT_CACHE", str(cache))
        path = mla.amx_fp16_verdict_path()
    if stored is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(stored)
    code = "from pyrt.ops import mla; print(mla.amx_fp16() if mla.amx_config().size else 'x', mla.amx_config().size)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    on, size = out.stdout.split()
    return on, int(size), (path.read_text() if path is not None and path.exists() else None)


@pytest.mark.parametrize("value", [None, "0", "1"])
def test_amx_fp16_switch(value, tmp_path):
    """The AMX-FP16 items run where the CPU runs the instruction (declared, or the probe in a child), unless
    PYRT_AMX_FP16=0; a probe's verdict is stored in the cache folder (PYRT_CACHE) for later processes."""
    on, size, stored = _amx16_in_child(value, tmp_path)
    if not _amx_runs():
        assert (on, size, stored) == ("x", 0, None)
        return
    want = value != "0" and _amx16_runs()
    assert (on, size) == (str(want), 65 if want else 64)
    from pyrt._kernels import attention_mla_amx16 as A16
    probed = value != "0" and not A16.HAS_AMX_FP16_CPU
    assert stored == (("1\n" if want else "0\n") if probed else None)


@pytest.mark.skipif(not _amx_runs(), reason="AMX-BF16 tiles: the CPU has none or the kernel refused them")
def test_amx_fp16_stored_verdict(tmp_path):
    """A stored verdict decides without a probe (a planted 0 turns the items off where the CPU does not declare
    AMX-FP16); PYRT_AMX_FP16=1 probes again and replaces it; an unreadable verdict is probed again."""
    from pyrt._kernels import attention_mla_amx16 as A16
    runs = _amx16_runs()
    on, _, stored = _amx16_in_child(None, tmp_path, stored="0\n")
    assert on == str(A16.HAS_AMX_FP16_CPU) and stored == "0\n"
    if A16.HAS_AMX_FP16_CPU:
        return
    want = "1\n" if runs else "0\n"
    assert _amx16_in_child("1", tmp_path)[::2] == (str(runs), want)
    assert _amx16_in_child(None, tmp_path, stored="garbage")[::2] == (str(runs), want)


@pytest.mark.parametrize("child", [True, False, None])
def test_amx_fp16_keeps_only_verdicts(child, tmp_path, monkeypatch):
    """amx_fp16 on a CPU that does not declare AMX-FP16 (any machine: the probe's child is replaced): a verdict
    (the product ran right, or wrong sums / SIGILL) is stored and then read instead of probing; a child that could
    not tell (None) stores nothing and says no for this process."""
    from pyrt._kernels import attention_mla_amx16 as A16
    calls = []
    monkeypatch.setattr(A16, "HAS_AMX_FP16_CPU", False)
    monkeypatch.setattr(A16, "probe_child", lambda: calls.append(1) or child)
    monkeypatch.setenv("PYRT_CACHE", str(tmp_path))
    monkeypatch.delenv("PYRT_AMX_FP16", raising=False)
    path = mla.amx_fp16_verdict_path()
    if path is None:
        pytest.skip("no /proc/cpuinfo: no CPU key to keep a verdict under")
    assert mla.amx_fp16() is bool(child)
    assert path.read_text() == ("1\n" if child else "0\n") if child is not None else not path.exists()
    assert mla.amx_fp16() is bool(child)
    assert len(calls) == (1 if child is not None else 2)
    monkeypatch.setenv("PYRT_AMX_FP16", "0")
    assert mla.amx_fp16() is False and len(calls) == (1 if child is not None else 2)


def _bf16_terms(x):
    """float32 x -> (hi, lo) as uint16: hi its bits >> 16, lo the rest rounded to bf16 (half up)."""
    b = x.view(np.uint32)
    rest = (x - (b & np.uint32(0xFFFF0000)).view(np.float32)).view(np.uint32)
    return (b >> 16).astype(np.uint16), ((rest.astype(np.uint64) + 0x8000) >> 16).astype(np.uint16)


def test_value_words_and_probability_tiles_hold_the_terms():
    """The layouts of the value products: an f16 row's hi/lo terms and blocked value words (lo, hi) (exact:
    hi + lo is the value, zeros and subnormals too), and p_dup's A tiles (the transpose of P^T's terms, each
    in both halves of a word), for a group at a row stride wider than one group."""
    from numba import njit

    from pyrt._kernels import attention_mla_amx as A

    rng = np.random.default_rng(5)
    dw, v_off, T = 96, 32, A.TILE
    rows = (rng.standard_normal((T, dw)) * 10.0 ** rng.integers(-7, 4, (T, dw))).astype(np.float16)
    rows[0, :5] = 0
    rows[1, 40] = -0.0
    kh, kl = np.zeros((T, dw), np.uint16), np.zeros((T, dw), np.uint16)
    w = np.zeros(((dw - v_off) // 16, T, 16), np.uint32)

    @njit
    def words(kh, kl, w, rows, dw, v_off):
        for j in range(rows.shape[0]):
            A.f16_row_words(kh.ctypes.data + j * kh.strides[0], kl.ctypes.data + j * kl.strides[0],
                            w.ctypes.data + j * 64, rows.ctypes.data + j * rows.strides[0], dw, v_off)

    words(kh, kl, w, rows.view(np.uint16), np.int64(dw), np.int64(v_off))
    x = rows.astype(np.float32)
    hi, lo = _bf16_terms(x)
    assert np.array_equal(kh, hi) and np.array_equal(kl, lo)
    back = (hi.astype(np.uint32) << 16).view(np.float32) + (lo.astype(np.uint32) << 16).view(np.float32)
    assert np.array_equal(back, x)
    want = lo[:, v_off:].astype(np.uint32) | (hi[:, v_off:].astype(np.uint32) << 16)  # [T, dw - v_off]
    assert np.array_equal(w, want.reshape(T, -1, 16).transpose(1, 0, 2))
    w2 = np.zeros_like(w)

    @njit
    def from_terms(w, kh, kl, v_off, dv):
        for j in range(kh.shape[0]):
            A.words_u16(w.ctypes.data + j * 64, kl.ctypes.data + j * kl.strides[0] + 2 * v_off,
                        kh.ctypes.data + j * kh.strides[0] + 2 * v_off, dv)

    from_terms(w2, kh, kl, np.int64(v_off), np.int64(dw - v_off))
    assert np.array_equal(w2, w)
    if A.HAS_CVT_BF16:  # the block-by-block conversions of a decoded token
        bh, bl = np.zeros((T, 32), np.uint16), np.zeros((T, 32), np.uint16)
        bw = np.zeros((2, T, 16), np.uint32)

        @njit
        def block(bh, bl, bw, rows, o, with_words):
            for j in range(rows.shape[0]):
                src = rows.ctypes.data + j * rows.strides[0] + 2 * o
                if with_words:
                    A.f16_row_words32(bh.ctypes.data + j * 64, bl.ctypes.data + j * 64, bw.ctypes.data + j * 64, src)
                else:
                    A.f16_row_terms32(bh.ctypes.data + j * 64, bl.ctypes.data + j * 64, src)

        block(bh, bl, bw, rows.view(np.uint16), np.int64(v_off), True)
        assert np.array_equal(bh, hi[:, v_off:v_off + 32]) and np.array_equal(bl, lo[:, v_off:v_off + 32])
        assert np.array_equal(bw, w[:2])
        block(bh, bl, bw, rows.view(np.uint16), np.int64(0), False)
        assert np.array_equal(bh, hi[:, :32]) and np.array_equal(bl, lo[:, :32])

    b16 = (x.view(np.uint32) >> 16).astype(np.uint16)  # bf16 rows: the values are their own hi terms
    bh, bw = np.zeros((T, 32), np.uint16), np.zeros((2, T, 16), np.uint32)

    @njit
    def bf16_block(bh, bw, rows, o, with_words):
        for j in range(rows.shape[0]):
            A.bf16_row32(bh.ctypes.data + j * 64, bw.ctypes.data + j * 64 if with_words else 0,
                         rows.ctypes.data + j * rows.strides[0] + 2 * o)

    bf16_block(bh, bw, b16, np.int64(64), True)
    assert np.array_equal(bh, b16[:, 64:96])
    assert np.array_equal(bw, (b16[:, 64:96].astype(np.uint32) << 16).reshape(T, 2, 16).transpose(1, 0, 2))
    bf16_block(bh, bw, b16, np.int64(0), False)
    assert np.array_equal(bh, b16[:, :32]) and np.array_equal(bw[0], b16[:, 64:80].astype(np.uint32) << 16)

    st = rng.random((T, 48)).astype(np.float32)  # P^T of three groups; the middle one
    st[3, 20] = 0.0
    tiles = np.zeros((4, 16, 16), np.uint32)

    @njit
    def dup(tiles, st, g):
        A.p_dup(tiles.ctypes.data, st.ctypes.data + g * 64, st.strides[0])

    dup(tiles, st, np.int64(1))
    for h in range(2):
        for k, t in enumerate(_bf16_terms(np.ascontiguousarray(st[16 * h:16 * h + 16, 16:32].T))):
            assert np.array_equal(tiles[2 * h + k], t.astype(np.uint32) * np.uint32(0x10001))


def _heads_ref(q, rows, dv, cp, cs, q_pos, q_seq, scale):
    """float64 attention of each head over its own rows [n_vis, n_head, w] (K first, V the last dv values)."""
    n_tok, n_head, dk = q.shape
    out = np.zeros((n_tok, n_head, dv))
    r64 = rows.astype(np.float64)
    for t in range(n_tok):
        vis = ((cs >> np.uint64(q_seq[t])) & np.uint64(1)).astype(bool) & (cp <= q_pos[t])
        if not vis.any():
            continue
        for h in range(n_head):
            s = r64[vis, h, :dk] @ q[t, h].astype(np.float64) * scale
            p = np.exp(s - s.max())
            out[t, h] = p @ r64[vis, h, -dv:] / p.sum()
    return out.reshape(n_tok, n_head * dv)


@amx_only
@pytest.mark.parametrize("n_head,dk,dv,n_tok,n_vis", [(16, 192, 128, 1, 40), (16, 192, 128, 5, 97),
                                                      (16, 192, 128, 17, 300), (4, 64, 32, 130, 260),
                                                      (2, 96, 64, 40, 1100)])
def test_heads_attention_amx_matches_float64(n_head, dk, dv, n_tok, n_vis):
    """The decompressed prompt attention on AMX-BF16 tiles (each head its own f32 rows, queries padded to
    16-row groups, splits where there are few items) against float64 and the BLAS matrix products: two
    sequences, cells in any scan order, a query that sees no cell."""
    from pyrt.ops.attention import attention_matrix
    rng = np.random.default_rng(11 + n_tok)
    rows = rng.standard_normal((n_vis, n_head, dk + dv)).astype(np.float32)
    cp = rng.permutation(n_vis).astype(np.int32) // 2
    cs = np.where(rng.integers(0, 2, n_vis) == 0, 1, 3).astype(np.uint64)
    q_pos = np.sort(rng.integers(0, n_vis // 2, n_tok)).astype(np.int32)
    q_seq = rng.integers(0, 2, n_tok).astype(np.int32)
    if n_tok > 1:
        q_pos[0] = -1
    q = (0.3 * rng.standard_normal((n_tok, n_head, dk))).astype(np.float32)
    assert mla.heads_amx_takes(dk, dv, "f16") and not mla.heads_amx_takes(dk, dv, "f32")
    out = mla.heads_attention_amx(q, rows, dv, cp, cs, q_pos, q_seq, 0.1)
    ref = _heads_ref(q, rows, dv, cp, cs, q_pos, q_seq, 0.1)
    blas = attention_matrix(q, np.ascontiguousarray(rows[:, :, :dk]).reshape(n_vis, -1),
                            np.ascontiguousarray(rows[:, :, dk:]).reshape(n_vis, -1), cp, cs, q_pos, q_seq, 0.1,
                            n_head, dv)
    assert out.shape == (n_tok, n_head * dv)
    if n_tok > 1:
        assert np.array_equal(out[0], np.zeros_like(out[0]))
    assert ((out - ref) ** 2).sum() / (ref ** 2).sum() < 1e-9
    assert ((blas - ref) ** 2).sum() / (ref ** 2).sum() < 1e-9
    assert not np.array_equal(out, blas)


@amx_only
def test_heads_attention_amx_thread_independent_and_checked():
    rng = np.random.default_rng(2)
    n_vis, n_head, dk, dv = 3000, 2, 64, 32  # two items: the cells are split and merged
    rows = rng.standard_normal((n_vis, n_head, dk + dv)).astype(np.float32)
    q = rng.standard_normal((3, n_head, dk)).astype(np.float32)
    cp = np.arange(n_vis, dtype=np.int32)
    cs = np.ones(n_vis, np.uint64)
    args = (q, rows, dv, cp, cs, np.array([n_vis] * 3), np.zeros(3, np.int32), 0.1)
    a = mla.heads_attention_amx(*args)
    assert np.array_equal(a, _one_thread(mla.heads_attention_amx, *args))
    with pytest.raises(InvalidArgumentError):
        mla.heads_attention_amx(q, rows[:, :1], dv, cp, cs, np.array([n_vis] * 3), np.zeros(3, np.int32), 0.1)
    with pytest.raises(InvalidArgumentError):
        mla.heads_attention_amx(q, rows, dv, cp[:-1], cs, np.array([n_vis] * 3), np.zeros(3, np.int32), 0.1)
    with pytest.raises(InvalidArgumentError):
        mla.heads_attention_amx(q, rows, dv, cp, cs, np.array([n_vis] * 3), np.array([0, 64, 0]), 0.1)
    with pytest.raises(UnsupportedError):
        mla.heads_attention_amx(q[:, :, :48], rows, 48, cp, cs, np.array([n_vis] * 3), np.zeros(3, np.int32), 0.1)


def test_head_rows():
    rng = np.random.default_rng(4)
    pe = rng.standard_normal((7, 3)).astype(np.float32)
    kv = rng.standard_normal((7, 2, 5)).astype(np.float32)
    got = mla.head_rows(pe, kv)
    np.testing.assert_array_equal(got[:, :, :3], np.broadcast_to(pe[:, None, :], (7, 2, 3)))
    np.testing.assert_array_equal(got[:, :, 3:], kv)
    with pytest.raises(InvalidArgumentError):
        mla.head_rows(pe[:6], kv)


def test_exp_neg_ir_matches_exp_neg():
    """The vector exp of the AMX items' softmax (softmax.exp_neg_ir) against exp_neg and float64: within 8 ulp of
    exp_neg and 2e-6 of exp, exactly 1 at 0 and 0 for -inf and below -87."""
    from numba import njit, types
    from numba.extending import intrinsic

    from pyrt._kernels.simd import _F32, _vec
    from pyrt._kernels.softmax import exp_neg, exp_neg_ir

    @intrinsic
    def exp16(typingctx, dst, src):
        def codegen(context, builder, signature, args):
            t = _vec(_F32, 16).as_pointer()
            x = builder.load(builder.inttoptr(args[1], t), align=4)
            builder.store(exp_neg_ir(builder, x), builder.inttoptr(args[0], t), align=4)
            return context.get_dummy_value()
        return types.none(types.int64, types.int64), codegen

    @njit
    def run(x):
        out = np.empty_like(x)
        for i in range(0, x.size, 16):
            exp16(out.ctypes.data + 4 * i, x.ctypes.data + 4 * i)
        ref = np.empty_like(x)
        for i in range(x.size):
            ref[i] = exp_neg(x[i])
        return out, ref

    rng = np.random.default_rng(3)
    x = np.concatenate([-rng.exponential(8.0, 4064), [0.0, -0.0, -np.inf, -87.0, -86.99, -87.01, -100.0, -1e30,
                                                      -1e-30, -0.5, -1.0, -np.log(2), -20.0, -60.0, -86.0, -3e-8,
                                                      -88.0, -87.5, -0.25, -2.0, -4.0, -8.0, -16.0, -32.0, -64.0,
                                                      -1e-6, -1e-3, -5.5, -7.25, -9.125, -11.0, -13.0]])
    x = x.astype(np.float32)
    out, ref = run(x)
    assert out[x == 0].tolist() == [1.0, 1.0] and np.all(out[x < -87] == 0) and np.all(out[x == -np.inf] == 0)
    ok = x >= -87
    ulp = np.abs(out[ok].view(np.int32).astype(np.int64) - ref[ok].view(np.int32).astype(np.int64))
    assert ulp.max() <= 8  # the range reduction's roundings differ with the FMAs
    e = np.exp(x[ok].astype(np.float64))
    assert np.all(np.abs(out[ok] - e) <= 2e-6 * e)


@pytest.mark.parametrize("n_head, nt, nc", [(16, 1, 32), (16, 2, 19), (32, 1, 7), (1, 16, 32), (1, 32, 25)])
def test_softmax_t_matches_float64(n_head, nt, nc):
    """The AMX items' online softmax over transposed scores (attention_mla_amx.softmax_t) against float64: the
    probabilities (cells past nc and masked cells 0), the running max and sum, the accumulators rescaled where
    the max moved; rows that see no cell of the tile keep m, l and acc; two tiles in a row."""
    from numba import njit

    from pyrt._kernels.attention_mla_amx import TILE, softmax_t

    @njit
    def step(st, mask_t, nc, nt, n_head, scale, m, l, acc):
        softmax_t(st.ctypes.data, st.strides[0], st.shape[1], nc, mask_t.ctypes.data, nt, n_head, scale,
                  m.ctypes.data, l.ctypes.data, acc.ctypes.data, acc.strides[0], acc.shape[1])

    rng = np.random.default_rng(nc + 7 * n_head)
    Rn, dv = nt * n_head, 48
    m = np.full(Rn, -np.inf, np.float32)
    l = np.zeros(Rn, np.float32)
    acc = np.zeros((Rn, dv), np.float32)
    m64, l64, acc64 = m.astype(np.float64), l.astype(np.float64), acc.astype(np.float64)
    tok = np.arange(Rn) // n_head
    for tile in range(2):
        st = rng.standard_normal((TILE, Rn)).astype(np.float32) * 4 + 3 * tile
        mask_t = np.where(rng.random((TILE, nt)) < 0.3, -np.inf, 0.0).astype(np.float32)
        mask_t[:, 0] = -np.inf  # token 0 sees no cell: its rows stay as they were
        s64 = st.astype(np.float64) * 0.5 + mask_t[:, tok]
        s64[nc:] = -np.inf
        mx = s64.max(axis=0)
        seen = mx > -np.inf
        m_new = np.where(seen, np.maximum(m64, mx), m64)
        with np.errstate(invalid="ignore"):  # -inf - -inf where a row has seen nothing yet
            alpha = np.where(seen, np.exp(np.where(np.isinf(m64), -np.inf, m64 - m_new)), 1.0)
            p = np.where(seen, np.exp(s64 - np.where(seen, m_new, 0.0)), 0.0)
        l64 = l64 * alpha + p.sum(axis=0)
        acc64 = acc64 * alpha[:, None]
        m64 = m_new
        step(st, mask_t, nc, nt, n_head, np.float32(0.5), m, l, acc)
        assert np.allclose(st, p, rtol=3e-6, atol=1e-30)
        assert np.array_equal(m, m64.astype(np.float32)) and np.allclose(l, l64, rtol=1e-5)
        assert np.allclose(acc, acc64, rtol=3e-6)
        acc64 = acc64 + p[:nc].T @ rng.standard_normal((nc, dv))  # the value products, as the items add them
        acc[:] = acc64
