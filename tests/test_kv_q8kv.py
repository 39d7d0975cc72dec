"""q8_KV cache rows (ik_llama.cpp: per head row f32 d = amax/127, int32 sum, int8 q): the store against a
numpy transcription, attention reading them (also as V at an offset of a K-only row), size lines."""

import numpy as np
import pytest
from test_attention import reference

from pyrt.errors import InvalidArgumentError
from pyrt.kv.cache import KVCache, row_bytes
from pyrt.ops.attention import attention


def q8_kv_ref(x, seg):
    """rows [m, n] f32 -> [m, n/seg*(8+seg)] uint8."""
    m, n = x.shape
    xs = x.reshape(m, n // seg, seg)
    amax = np.abs(xs).max(axis=-1, keepdims=True)
    d = (amax / np.float32(127)).astype(np.float32)
    with np.errstate(divide="ignore"):
        idv = np.where(d != 0, np.float32(1) / d, np.float32(0)).astype(np.float32)
    q = np.clip(np.rint((xs * idv).astype(np.float32).astype(np.float64)), -127, 127).astype(np.int8)
    s = q.astype(np.int32).sum(axis=-1, keepdims=True)
    out = np.concatenate([d.view(np.uint8).reshape(m, -1, 4), s.astype("<i4").view(np.uint8).reshape(m, -1, 4),
                          q.view(np.uint8)], axis=-1)
    return out.reshape(m, -1)


def dequant_q8_kv(buf, seg):
    """-> [m, n] f32 (q * d in f32, as the kernels)."""
    m = buf.shape[0]
    b = buf.reshape(m, -1, 8 + seg)
    d = b[:, :, :4].copy().view(np.float32)
    return (d * b[:, :, 8:].view(np.int8).astype(np.float32)).reshape(m, -1)


@pytest.mark.boundscheck
def test_store_matches_reference_and_dequant():
    rng = np.random.default_rng(31)
    x = (rng.standard_normal((40, 128)) * np.exp2(rng.integers(-10, 10, (40, 1)))).astype(np.float32)
    x[3] = 0.0
    x[4, :64] = np.linspace(-127, 127, 64)
    cells = rng.permutation(50)[:40].astype(np.int32)
    cache = KVCache(1, 50, [128], [128], "q8_KV", "q8_KV", head_dim_k=64, head_dim_v=32)
    cache.store(0, cells, x, -x)
    assert cache.k[0].shape == (50, 2 * 72) and cache.v[0].shape == (50, 4 * 40)
    assert np.array_equal(cache.k[0][cells], q8_kv_ref(x, 64))
    assert np.array_equal(cache.v[0][cells], q8_kv_ref(-x, 32))
    assert np.array_equal(cache.k_values(0, cells), dequant_q8_kv(cache.k[0][cells], 64))
    err = np.abs(cache.k_values(0, cells) - x).max(axis=1)
    assert np.all(err <= np.abs(x).max(axis=1) / 127 * 0.5 + 1e-30)
    assert row_bytes("q8_KV", 576) == 584 and row_bytes("q8_KV", 1024, 128) == 8 * 136


def test_attention_reads_q8_kv_and_k_only_rows():
    rng = np.random.default_rng(32)
    n_kv, dk = 90, 64
    cache = KVCache(2, 128, [128, 576], [128, None], "q8_KV", "q8_KV", n_seq_max=2,
                    head_dim_k=[64, 576], head_dim_v=[64, 0])
    seq = rng.integers(0, 2, n_kv).astype(np.int32)
    pos = rng.permutation(n_kv).astype(np.int32)
    cells = cache.cells.find_slot(pos, seq)
    cache.store(0, cells, rng.standard_normal((n_kv, 128)).astype(np.float32),
                rng.standard_normal((n_kv, 128)).astype(np.float32))
    cache.store(1, cells, rng.standard_normal((n_kv, 576)).astype(np.float32))
    q_pos, q_seq = np.array([30, 89, 89], np.int32), np.array([0, 1, 0], np.int32)
    cp, cs = cache.cells.pos_array()[:n_kv], cache.cells.seq_array()[:n_kv]
    q = rng.standard_normal((3, 4, dk)).astype(np.float32)
    got = attention(q, cache, 0, q_pos, q_seq, 0.125).reshape(3, 4, dk)
    ref = reference(q, dequant_q8_kv(cache.k[0][:n_kv], 64), dequant_q8_kv(cache.v[0][:n_kv], 64), cp, cs,
                    q_pos, q_seq, 0.125, 2, dk)
    np.testing.assert_allclose(got, ref, atol=2e-5, rtol=1e-4)
    # MLA-like layer: one 576 row, K = all of it, V = its last 512 values (one segment: header at the row start)
    q = rng.standard_normal((3, 8, 576)).astype(np.float32)
    got = attention(q, cache, 1, q_pos, q_seq, 0.05, v_offset=64).reshape(3, 8, 512)
    kr = dequant_q8_kv(cache.k[1][:n_kv], 576)
    ref = reference(q, kr, kr, cp, cs, q_pos, q_seq, 0.05, 1, 512, v_off=64)
    np.testing.assert_allclose(got, ref, atol=2e-5, rtol=1e-4)
    with pytest.raises(InvalidArgumentError):  # a head across two q8_KV rows
        attention(rng.standard_normal((1, 2, 96)).astype(np.float32), cache, 0, q_pos[:1], q_seq[:1], 0.1,
                  n_head_kv=1)


def test_size_lines():
    cache = KVCache(2, 1024, [576, 576], [None, None], "q8_KV", "f16", head_dim_k=576)
    assert cache.size_report() == \
        f"KV self size  = {2 * 1024 * 584 / 2**20:7.2f} MiB, K (q8_KV): {2 * 1024 * 584 / 2**20:7.2f} MiB, " \
        f"V (f16):    0.00 MiB"
