"""KVCache buffers and row stores: bit-exact conversions per cache type, K-only caches, sizes and the size line."""

import gguf
import numpy as np
import pytest

from pyrt.errors import InvalidArgumentError, UnsupportedError
from pyrt.kv.cache import KVCache


def _edge_values(rng, n):
    """Random normals over many magnitudes plus f16/bf16 edge cases (ties, subnormals, overflow, inf)."""
    x = (rng.standard_normal(n) * np.exp2(rng.integers(-30, 20, n))).astype(np.float32)
    # exact ties between f16 neighbours: subnormal (k + 1/2) * 2^-24, normal value + half an ulp
    ties = ((np.arange(0, 1024, dtype=np.float32) + np.float32(0.5)) * np.float32(2.0**-24)).astype(np.float32)
    f16_ties = (np.arange(0x0400, 0x7C00, 7, dtype=np.uint32).astype(np.uint16).view(np.float16)
                .astype(np.float32).view(np.uint32) + (1 << 12)).view(np.float32)
    special = np.array([0.0, -0.0, np.inf, -np.inf, 65504.0, 65519.99, 65520.0, 1e-8, -3e-8, 6.1e-5, 5.96e-8,
                        2.98e-8, 2.99e-8, 1e38, -1e38, 1.0 + 2**-11, 1.0 + 3 * 2**-11], np.float32)
    return np.concatenate([x, ties, f16_ties, special, -f16_ties]).astype(np.float32)


def _bf16_ref(x):
    u = x.view(np.uint32).astype(np.uint64)
    nan = (u & 0x7FFFFFFF) > 0x7F800000
    r = (u + (0x7FFF + ((u >> 16) & 1))) >> 16
    return np.where(nan, (u >> 16) | 64, r).astype(np.uint16)


def _q8_0_ref(x):
    """numpy transcription of ggml's quantize_row_q8_0_ref: rows [n, k] f32 -> [n, k/32*34] uint8."""
    blocks = x.reshape(x.shape[0], -1, 32).astype(np.float32)
    amax = np.abs(blocks).max(axis=-1, keepdims=True)
    d = (amax / np.float32(127)).astype(np.float32)
    with np.errstate(divide="ignore"):
        idv = np.where(d != 0, np.float32(1) / d, np.float32(0)).astype(np.float32)
    x0 = (blocks * idv).astype(np.float32)
    qs = (np.sign(x0) * np.floor(np.abs(x0).astype(np.float64) + 0.5)).astype(np.int8)  # roundf
    out = np.concatenate([d.astype(np.float16).view(np.uint8).reshape(x.shape[0], -1, 2),
                          qs.view(np.uint8)], axis=-1)
    return out.reshape(x.shape[0], -1)


@pytest.mark.boundscheck
def test_f32_and_f16_roundtrip():
    rng = np.random.default_rng(0)
    x = _edge_values(rng, 4000)
    n = 64
    x = np.concatenate([x, np.zeros((-len(x)) % n, np.float32)]).reshape(-1, n)
    rows = x.shape[0]
    cells = rng.permutation(rows).astype(np.int32)
    for t in ("f32", "f16"):
        cache = KVCache(1, rows, [n], [n], t, t)
        cache.store(0, cells, x, -x)

        got_k, got_v = cache.k[0][cells], cache.v[0][cells]
        if t == "f32":
            assert np.array_equal(got_k.view(np.uint32), x.view(np.uint32))
        else:
            assert got_k.dtype == np.float16
            with np.errstate(over="ignore"):
                ref_k, ref_v = x.astype(np.float16), (-x).astype(np.float16)
            assert np.array_equal(got_k.view(np.uint16), ref_k.view(np.uint16))
            assert np.array_equal(got_v.view(np.uint16), ref_v.view(np.uint16))
    nan = np.full((1, n), np.nan, np.float32)
    cache = KVCache(1, 2, [n], [n], "f16", "f16")
    cache.store(0, np.array([1], np.int32), nan, nan)
    assert np.all(np.isnan(cache.k[0][1])) and np.all(cache.k[0][0] == 0)


def test_bf16_matches_ggml_rounding():
    rng = np.random.default_rng(1)
    x = _edge_values(rng, 4000)
    specials = np.array([0x7FC00001, 0x7F800001, 0xFFC12345, 0x3F808000, 0x3F818000, 0x3F80FFFF, 0x7F7FFFFF],
                        np.uint32).view(np.float32)
    x = np.concatenate([x, specials])
    n = 32
    x = np.concatenate([x, np.zeros((-len(x)) % n, np.float32)]).reshape(-1, n)
    cache = KVCache(1, x.shape[0], [n], [None], "bf16", "f16")
    cache.store(0, np.arange(x.shape[0], dtype=np.int32), x)
    assert cache.k[0].dtype == np.uint16
    assert np.array_equal(cache.k[0], _bf16_ref(x))


def test_q8_0_bit_exact_and_dequantizes_with_gguf():
    rng = np.random.default_rng(2)
    n = 128
    x = (rng.standard_normal((50, n)) * np.exp2(rng.integers(-12, 12, (50, 1)))).astype(np.float32)
    x[3] = 0.0  # all-zero blocks: d = 0, q = 0
    x[4, :32] = 1e-30  # d underflows to 0 in f16
    x[5] = np.round(x[5] * 4) / 4  # many exact ties of x/d
    x[6, :32] = np.linspace(-127, 127, 32)  # q = x exactly with d = 1
    cells = rng.permutation(64)[:50].astype(np.int32)
    cache = KVCache(2, 64, [n, n], [n, n], "q8_0", "q8_0")
    cache.store(1, cells, x, x[::-1].copy())
    assert cache.k[1].shape == (64, n // 32 * 34) and cache.k[1].dtype == np.uint8
    assert np.array_equal(cache.k[1][cells], _q8_0_ref(x))
    assert np.array_equal(cache.v[1][cells], _q8_0_ref(x[::-1].copy()))
    assert not cache.k[0].any()  # other layer untouched
    assert np.array_equal(cache.k[1][cells], gguf.quants.quantize(x, gguf.GGMLQuantizationType.Q8_0))
    deq = gguf.quants.dequantize(cache.k[1][cells], gguf.GGMLQuantizationType.Q8_0)
    assert deq.shape == x.shape
    ok = np.abs(x).max(axis=1) > 1e-20
    np.testing.assert_allclose(deq[ok], x[ok], atol=np.abs(x[ok]).max() / 100)


@pytest.mark.boundscheck
def test_q8_0_row_decode_equals_gguf_dequantize():
    """decode_row of q8_0 rows (the vector path into contiguous rows, the scalar one into strided rows) at any
    block offset: exactly gguf's dequantize."""
    from pyrt._kernels.kv import KIND_Q8_0, decode_row
    rng = np.random.default_rng(4)
    x = (rng.standard_normal((6, 192)) * np.exp2(rng.integers(-10, 10, (6, 1)))).astype(np.float32)
    rows = gguf.quants.quantize(x, gguf.GGMLQuantizationType.Q8_0)
    want = gguf.quants.dequantize(rows, gguf.GGMLQuantizationType.Q8_0).astype(np.float32)
    for r in range(6):
        for e0, n in ((0, 192), (64, 128), (32, 32)):
            flat = np.full(n, np.nan, np.float32)
            decode_row(flat, rows[r], e0, n, KIND_Q8_0, 0)
            strided = np.full((n, 2), np.nan, np.float32)
            decode_row(strided[:, 0], rows[r], e0, n, KIND_Q8_0, 0)
            assert np.array_equal(flat, want[r, e0:e0 + n]) and np.array_equal(strided[:, 0], flat)
            assert np.isnan(strided[:, 1]).all()


@pytest.mark.boundscheck
def test_k_only_cache_and_sizes():
    cache = KVCache(3, 256, [128, 128, 64], [None, 0, None], "q8_0", "f16", n_seq_max=4)
    assert all(v is None for v in cache.v)
    assert cache.k_bytes() == 256 * 34 * (4 + 4 + 2) and cache.v_bytes() == 0
    assert cache.total_bytes() == cache.k_bytes()
    assert cache.size_report() == "KV self size  =    0.08 MiB, K (q8_0):    0.08 MiB, V (f16):    0.00 MiB"
    cells = cache.cells.find_slot(np.arange(3), np.array([0, 1, 3]))
    cache.store(2, cells, np.ones((3, 64), np.float32))
    with pytest.raises(InvalidArgumentError):
        cache.store(2, cells, np.ones((3, 64), np.float32), np.ones((3, 64), np.float32))

    big = KVCache(16, 4096, [1024] * 16, [1024] * 16, "f16", "f16")
    assert big.k_bytes() == big.v_bytes() == 16 * 4096 * 1024 * 2
    assert big.size_report() == "KV self size  =  256.00 MiB, K (f16):  128.00 MiB, V (f16):  128.00 MiB"
    mixed = KVCache(1, 100, [96], [64], "bf16", "q8_0")
    assert mixed.k[0].shape == (100, 96) and mixed.v[0].shape == (100, 68)
    assert mixed.total_bytes() == 100 * (96 * 2 + 68)
    for c in (cache, big, mixed):  # every buffer starts on a cache line, zeroed, C-contiguous and writable
        for b in c.k + [v for v in c.v if v is not None]:
            assert b.ctypes.data % 64 == 0 and b.flags.c_contiguous and b.flags.writeable
    assert not big.k[3].any() and not mixed.v[0].any()


def test_kernel_scratch_on_cache_lines():
    """simd.empty_lined / zeros_lined: n elements from a 64-byte boundary whatever Numba's 32-byte alignment
    gives (zeros_lined zeroed), for every element size and length."""
    from numba import njit

    from pyrt._kernels.simd import LINE, empty_lined, zeros_lined

    @njit
    def lined(n):
        a, b, c = zeros_lined(n, np.uint8), empty_lined(n, np.uint16), zeros_lined(n, np.float32)
        d = zeros_lined(n * 3, np.float64).reshape((n, 3))
        return (np.array([a.ctypes.data % LINE, b.ctypes.data % LINE, c.ctypes.data % LINE, d.ctypes.data % LINE]),
                a.size + b.size + c.size + d.shape[0], a.sum() + c.sum() + d.sum())

    for n in (0, 1, 7, 16, 33, 1000):
        for _ in range(5):
            offs, sizes, total = lined(n)
            assert not offs.any() and sizes == 4 * n and total == 0


def test_store_validation():
    cache = KVCache(1, 8, [64], [64], "q8_0", "f32")
    rows = np.zeros((2, 64), np.float32)
    with pytest.raises(InvalidArgumentError):
        cache.store(0, np.array([0, 8], np.int32), rows, rows)
    with pytest.raises(InvalidArgumentError):
        cache.store(0, np.array([0, 1], np.int32), rows.astype(np.float64), rows)
    with pytest.raises(InvalidArgumentError):
        cache.store(0, np.array([0, 1], np.int32), rows[:, :32], rows)
    with pytest.raises(InvalidArgumentError):
        cache.store(0, np.array([0, 1], np.int32), rows, None)
    with pytest.raises(InvalidArgumentError):
        cache.store(1, np.array([0, 1], np.int32), rows, rows)
    with pytest.raises(InvalidArgumentError):
        KVCache(1, 8, [48], [48], "q8_0", "f16")  # not a whole number of q8_0 blocks
    with pytest.raises(UnsupportedError):
        KVCache(1, 8, [64], [64], "q4_0", "f16")
    with pytest.raises(InvalidArgumentError):
        KVCache(1, 8, [64], [64], "f16", "f16", n_seq_max=65)


def test_move_rows_and_clear():
    rng = np.random.default_rng(3)
    cache = KVCache(2, 8, [32, 32], [32, 32], "q8_0", "bf16")
    x = rng.standard_normal((8, 32)).astype(np.float32)
    for il in range(2):
        cache.store(il, np.arange(8, dtype=np.int32), x, x)
    k0, v1 = cache.k[0].copy(), cache.v[1].copy()
    cache.move_rows(np.array([6, 7]), np.array([1, 2]))
    assert np.array_equal(cache.k[0][[1, 2]], k0[[6, 7]]) and np.array_equal(cache.v[1][[1, 2]], v1[[6, 7]])
    assert np.array_equal(cache.k[0][0], k0[0])
    cache.clear()
    assert cache.cells.used == 0 and not cache.k[0].any() and not cache.v[1].any()


@pytest.mark.parametrize("type_name", ["f32", "f16", "bf16", "q8_0"])
def test_decode_tile_equals_decode_row(type_name):
    """The attention's tile decoder gives decode_row's bits for the visible cells (rows in scan order, a head's
    slice of each row) and leaves the other rows of the tile as they were; NaN and inf halves included."""
    from pyrt._kernels import kv as kvk
    from pyrt.ops.attention import _KINDS, rows_view
    rng = np.random.default_rng(3)
    n_cells, width, e0, n = 40, 128, 64, 64
    cache = KVCache(1, n_cells, [width], [width], type_name, type_name)
    x = rng.standard_normal((n_cells, width)).astype(np.float32) * 4
    if type_name in ("f16", "bf16", "f32"):
        x[3, e0:e0 + 4] = [np.inf, -np.inf, np.nan, 6.0e-8]
    cache.store(0, np.arange(n_cells, dtype=np.int32), x, x)
    buf = rows_view(cache.k[0], type_name)
    kv_idx = rng.permutation(n_cells).astype(np.int32)
    cvis = rng.random(16) < 0.7
    tile = np.full((16, n), 7.0, np.float32)
    kvk.decode_tile(tile, buf, kv_idx, 8, 13, cvis, e0, n, _KINDS[type_name], 1)
    for j in range(16):
        want = np.full(n, 7.0, np.float32)
        if j < 13 and cvis[j]:
            kvk.decode_row(want, buf[kv_idx[8 + j]], e0, n, _KINDS[type_name], 1)
        np.testing.assert_array_equal(tile[j].view(np.uint32), want.view(np.uint32))
