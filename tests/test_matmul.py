"""pyrt.ops.matmul: every weight type's kernels vs float64 references, both dispatch paths,
thread-count independence, get_rows/dequantize, and the validation errors."""

import numba
import numpy as np
import pytest
from gguf import GGMLQuantizationType as T
from gguf.quants import dequantize as gguf_dequantize
from gguf.quants import quantize

from pyrt.errors import InvalidArgumentError, UnsupportedError
from pyrt.formats.qtypes import DOT_TYPES, get_qtype
from pyrt.ops import matmul as mm
from pyrt.ops import paths


# NMSE of matmul(x, W_q) against x @ W (unquantized weights and activations), per type; measured
# on these shapes: F32 1e-14, F16 8e-8, BF16 5e-6, Q8_0 5e-5, Q5_0 1.8e-3, Q4_0 9e-3. For k-quants W
# is the dequantized random weight, so only the Q8_K activation error is left (4e-5 .. 1e-4).
NMSE = {"F32": 5e-14, "F16": 4e-7, "BF16": 2e-5, "Q8_0": 1.5e-4, "Q5_0": 4e-3, "Q4_0": 1.5e-2,
        "Q6_K": 3e-4, "Q5_K": 2e-4, "Q4_K": 2e-4}
TYPES = [T.F32, T.F16, T.BF16, T.Q8_0, T.Q4_0, T.Q5_0]
K_TYPES = [T.Q4_K, T.Q5_K, T.Q6_K]
ALL = TYPES + K_TYPES
N_IN, N_OUT = 512, 48


def _case(t, n_tok=3, seed=0, n_in=N_IN, n_out=N_OUT):
    rng = np.random.default_rng(seed + int(t))
    w = rng.standard_normal((n_out, n_in)).astype(np.float32)
    x = rng.standard_normal((n_tok, n_in)).astype(np.float32)
    if t in K_TYPES:  # gguf cannot quantize k-quants: random blocks with sane f16 scales
        raw = random_k_blocks(rng, t, n_out, n_in)
        w = gguf_dequantize(raw, t).reshape(n_out, n_in)
    else:
        raw = quantize(w, t).view(np.uint8).reshape(n_out, -1)
    raw.flags.writeable = False
    return w, x, raw


def random_k_blocks(rng, t, n_out, n_in):
    """[n_out, row_bytes] uint8 of random k-quant blocks whose f16 d (and dmin) lie in [1e-3, 1e-2]."""
    bs, ts = {T.Q4_K: (256, 144), T.Q5_K: (256, 176), T.Q6_K: (256, 210)}[t]
    nb = n_in // bs
    raw = rng.integers(0, 256, (n_out, nb, ts), dtype=np.uint8)
    d = rng.uniform(1e-3, 1e-2, (n_out, nb, 2)).astype(np.float16).view(np.uint8)
    if t == T.Q6_K:
        raw[..., 208:210] = d[..., :2]
    else:
        raw[..., 0:4] = d
    return raw.reshape(n_out, nb * ts)


def _activations_as_seen(x, qt):
    """The activations the dot kernel multiplies with, in float64 (quantize, then dequantize)."""
    if qt.dot_type is None:
        return x.astype(np.float64)
    if qt.dot_type in ("F16", "BF16"):
        xq = mm._quantize_activations(x, qt).copy()
        if qt.dot_type == "F16":
            return xq.view(np.float16).astype(np.float64)
        return (xq.astype(np.uint32) << 16).view(np.float32).astype(np.float64)
    xq = mm._quantize_activations(x, qt).copy()
    if qt.dot_type == "Q8_0":
        return gguf_dequantize(xq, T.Q8_0).reshape(x.shape).astype(np.float64)
    # Q8_K: f32 d, int8 qs[256], int16 bsums[16]
    blocks = xq.reshape(x.shape[0], -1, 292)
    d = blocks[..., :4].copy().view(np.float32).astype(np.float64)
    q = blocks[..., 4:260].copy().view(np.int8).astype(np.float64)
    return (d * q).reshape(x.shape)


@pytest.mark.parametrize("t", ALL)
def test_dot_path_vs_reference(t):
    qt = get_qtype(t)
    w, x, raw = _case(t)
    wd = gguf_dequantize(raw, t).reshape(w.shape).astype(np.float64)
    out = mm.matmul(x, raw, t, path="dot")
    xs = _activations_as_seen(x, qt)
    ref = xs @ wd.T
    bound = 2e-6 * (np.abs(xs) @ np.abs(wd).T) + 1e-30
    assert np.all(np.abs(out - ref) <= bound), np.max(np.abs(out - ref) / bound)
    exact = x.astype(np.float64) @ w.astype(np.float64).T  # k-quants: w is already the dequantized weight
    nmse = np.sum((out - exact) ** 2) / np.sum(exact ** 2)
    assert nmse < NMSE[qt.name], nmse


@pytest.mark.parametrize("t", ALL)
def test_blas_path_vs_reference_and_dot(t):
    # the BLAS path multiplies the activations as the integer kernel sees them (rounded through
    # Q8_0/Q8_K/F16/BF16), so both paths compute the same sum up to f32 rounding
    w, x, raw = _case(t, n_tok=5)
    wd = gguf_dequantize(raw, t).reshape(w.shape).astype(np.float64)
    out = mm.matmul(x, raw, t, path="blas")
    xs = _activations_as_seen(x, get_qtype(t))
    ref = xs @ wd.T
    bound = 2e-6 * (np.abs(xs) @ np.abs(wd).T) + 1e-30
    assert np.all(np.abs(out - ref) <= bound), np.max(np.abs(out - ref) / bound)
    dot = mm.matmul(x, raw, t, path="dot")
    assert np.all(np.abs(dot - out) <= 2 * bound)


@pytest.mark.boundscheck
def test_dispatch_picks_paths_by_n_tok(monkeypatch):
    t = T.Q4_0
    th = 40  # the table's value depends on the CPU (NEVER for the Q8_0-family blocks on AMD)
    monkeypatch.setitem(mm.BLAS_MIN_TOKENS, "Q4_0", th)
    w, x, raw = _case(t, n_tok=th)
    small = x[: th - 1].copy()
    with paths.using(amx=False):  # (where the CPU has AMX, prompts take it: test_amx.py)
        assert np.array_equal(mm.matmul(small, raw, t), mm.matmul(small, raw, t, path="dot"))
        assert np.array_equal(mm.matmul(x, raw, t), mm.matmul(x, raw, t, path="blas"))
        assert not np.array_equal(mm.matmul(x, raw, t, path="dot"), mm.matmul(x, raw, t, path="blas"))


@pytest.mark.parametrize("t", [T.Q4_0, T.Q5_0, T.Q8_0, T.F16])
def test_dot_path_rows_independent_of_batch(t):
    """Token t of a batch is bit-identical to the same token alone (4-token groups + remainder)."""
    _, x, raw = _case(t, n_tok=7)
    full = mm.matmul(x, raw, t, path="dot")
    for i in range(7):
        assert np.array_equal(full[i:i + 1], mm.matmul(x[i:i + 1].copy(), raw, t, path="dot"))


@pytest.mark.boundscheck
@pytest.mark.parametrize("t", [T.Q4_0, T.Q5_0, T.Q8_0, T.Q4_K, T.Q5_K, T.Q6_K])
def test_dot_path_every_token_count_matches_one_token(t):
    """For 1..19 tokens (NT_WIDE-, NT- and 4-token passes, zero-padded 4-token passes for 2-3 leftover tokens,
    one-token passes; k-quants: 4-token passes, padded ones for 2-3 leftover tokens), each token's outputs are
    bit-identical to that token alone; n_out = 45 leaves 5 rows outside the 8-row tiles."""
    _, x, raw = _case(t, n_tok=19, n_out=45)
    one = np.stack([mm.matmul(x[i:i + 1].copy(), raw, t, path="dot")[0] for i in range(19)])
    for n_tok in range(1, 20):
        out = mm.matmul(x[:n_tok].copy(), raw, t, path="dot")
        assert np.array_equal(out.view(np.uint32), one[:n_tok].view(np.uint32)), n_tok


@pytest.mark.parametrize("t", [T.Q4_0, T.Q5_0, T.Q8_0])
def test_dot_path_rows_independent_of_pairing(t):
    """A row's result does not depend on which row it is paired with (two-row dots) or whether it
    runs alone (odd tile remainder): dropping the first row shifts every pairing."""
    _, x, raw = _case(t, n_tok=6, n_out=47)
    for n_tok in (1, 3, 6):
        xt = x[:n_tok].copy()
        full = mm.matmul(xt, raw, t, path="dot")
        assert np.array_equal(full[:, 1:], mm.matmul(xt, raw[1:], t, path="dot"))
        assert np.array_equal(full[:, 2:], mm.matmul(xt, raw[2:], t, path="dot"))


@pytest.mark.skipif(numba.config.NUMBA_NUM_THREADS < 2, reason="needs 2 Numba threads")
@pytest.mark.parametrize("t", [T.Q4_0, T.Q5_0, T.Q8_0, T.F16, T.BF16, T.F32, T.Q4_K])
def test_thread_count_independent(t):
    _, x, raw = _case(t, n_tok=4, n_out=101)
    res = {}
    old = numba.get_num_threads()
    try:
        for n in (1, 2):
            numba.set_num_threads(n)
            with paths.using(blas_tile_bytes=16 * N_IN * 4):  # several BLAS tiles over the workers
                res[n] = (mm.matmul(x, raw, t, path="dot"), mm.matmul(x, raw, t, path="blas"))
    finally:
        numba.set_num_threads(old)
    assert np.array_equal(res[1][0], res[2][0]) and np.array_equal(res[1][1], res[2][1])


@pytest.mark.parametrize("n_out,n_in,budget", [(1024, 640, 2 << 20), (256, 2048, 2 << 20), (101, 64, 16 * 64 * 4),
                                               (5, 64, 2 << 20), (0, 64, 2 << 20), (10000, 64, 100 * 64 * 4)])
def test_blas_tiles_cover_the_rows_in_near_equal_tiles(n_out, n_in, budget):
    """The BLAS path's tiles: consecutive, covering every row once, none over the byte budget (but 16 rows),
    at least BLAS_MIN_TILES of them where the matrix has that many 16-row groups, sizes within 16 rows."""
    with paths.using(blas_tile_bytes=budget):
        tiles = mm._blas_tiles(n_out, n_in)
    assert [r for t in tiles for r in range(*t)] == list(range(n_out))
    sizes = [r1 - r0 for r0, r1 in tiles]
    n_grp = -(-n_out // 16)
    assert len(tiles) >= min(n_grp, mm.BLAS_MIN_TILES)
    assert all(s <= max(16, budget // (4 * n_in)) for s in sizes)
    assert not sizes or max(sizes) - min(sizes) <= 16


def test_out_argument_and_odd_sizes():
    # F16 rows of a length that is not a multiple of the 32-lane vector step; n_out not a tile multiple
    t = T.F16
    w, x, raw = _case(t, n_tok=2, n_in=77, n_out=13)
    out = np.full((2, 13), np.nan, np.float32)
    assert mm.matmul(x, raw, t, out=out) is out
    ref = _activations_as_seen(x, get_qtype(t)) @ gguf_dequantize(raw, t).reshape(13, 77).astype(np.float64).T
    assert np.allclose(out, ref, rtol=1e-5, atol=1e-5)
    assert mm.matmul(x[:0], raw, t).shape == (0, 13)


@pytest.mark.boundscheck
@pytest.mark.parametrize("t", [T.Q4_0, T.Q5_0, T.Q8_0, T.F16, T.BF16, T.F32])
def test_get_rows_and_dequantize(t):
    _, _, raw = _case(t, n_out=20, n_in=64)
    full = gguf_dequantize(raw, t).reshape(20, 64)
    assert np.array_equal(mm.dequantize(raw, t, 64).view(np.uint32), full.view(np.uint32))
    ids = np.array([3, 0, 19, 3], np.int32)
    assert np.array_equal(mm.get_rows(raw, t, ids, 64).view(np.uint32), full[ids].view(np.uint32))
    assert mm.get_rows(raw, t, [], 64).shape == (0, 64)


def test_get_rows_k_quant():
    _, _, raw = _case(T.Q6_K, n_out=6, n_in=256)
    full = gguf_dequantize(raw, T.Q6_K).reshape(6, 256)
    assert np.array_equal(mm.get_rows(raw, T.Q6_K, [5, 1], 256), full[[5, 1]])


def test_validation_errors():
    _, x, raw = _case(T.Q4_0, n_tok=2)
    with pytest.raises(InvalidArgumentError):
        mm.matmul(x.astype(np.float64), raw, T.Q4_0)
    with pytest.raises(InvalidArgumentError):
        mm.matmul(np.asfortranarray(x), raw, T.Q4_0)
    with pytest.raises(InvalidArgumentError):
        mm.matmul(x[:, :256], raw, T.Q4_0)                    # row bytes do not match n_in
    with pytest.raises(InvalidArgumentError):
        mm.matmul(x, raw.view(np.int8), T.Q4_0)
    with pytest.raises(InvalidArgumentError):
        mm.matmul(x, raw[:, :-18][::2], T.Q4_0)
    with pytest.raises(InvalidArgumentError):
        mm.matmul(x, np.ascontiguousarray(raw[:, :18 * 15]), T.Q4_0)
    with pytest.raises(InvalidArgumentError):
        mm.matmul(x, raw, T.Q4_0, out=np.empty((2, N_OUT + 1), np.float32))
    with pytest.raises(InvalidArgumentError):
        mm.matmul(x, raw, T.Q4_0, path="fast")
    with pytest.raises(InvalidArgumentError):
        mm.matmul(np.ones((1, 48), np.float32), np.zeros((1, 27), np.uint8), T.Q4_0)  # 48 % 32
    with pytest.raises(UnsupportedError, match="Q2_K"):
        mm.matmul(x, raw, T.Q2_K)
    with pytest.raises(InvalidArgumentError, match="out of range"):
        mm.get_rows(raw, T.Q4_0, [0, N_OUT], N_IN)
    with pytest.raises(InvalidArgumentError, match="out of range"):
        mm.get_rows(raw, T.Q4_0, [-1], N_IN)
    with pytest.raises(InvalidArgumentError):
        mm.get_rows(raw, T.Q4_0, [0.5], N_IN)
    with pytest.raises(InvalidArgumentError):
        mm.dequantize(raw, T.Q4_0, 500)


def test_dot_types_registered():
    assert DOT_TYPES["Q8_0"].type_size == 34 and DOT_TYPES["Q8_K"].type_size == 292


@pytest.mark.boundscheck
@pytest.mark.parametrize("t", ALL)
def test_matmul_id_equals_per_group_matmul(t):
    """The grouped kernel gives each group exactly what a matmul over its slice of rows gives."""
    _, x, raw = _case(t, n_tok=3)
    n_out = 7  # odd: row pairs and a single row per tile
    w_row0 = np.array([0, 7, 20, 41, 3, 0])
    x_row = np.array([0, 2, 1, 1, 0, 2])
    y = mm.matmul_id(x, raw, t, w_row0, x_row, n_out)
    for g in range(len(w_row0)):
        ref = mm.matmul(x[x_row[g]:x_row[g] + 1], raw[w_row0[g]:w_row0[g] + n_out], t, path="dot")[0]
        np.testing.assert_array_equal(y[g], ref)
    # strided groups (MLA's W_UV heads inside attn_kv_b): every other block of 8 rows
    y = mm.matmul_id(x, raw, t, [8, 24, 40], [1, 1, 1], 8)
    for i, r0 in enumerate((8, 24, 40)):
        np.testing.assert_array_equal(y[i], mm.matmul(x[1:2], raw[r0:r0 + 8], t, path="dot")[0])


def test_matmul_id_validation():
    _, x, raw = _case(T.Q4_0, n_tok=2)
    for w0, xr, n in (([N_OUT - 3], [0], 4), ([-1], [0], 4), ([0], [2], 4), ([0], [-1], 4), ([0, 1], [0], 4),
                      ([0], [0], 0)):
        with pytest.raises(InvalidArgumentError):
            mm.matmul_id(x, raw, T.Q4_0, w0, xr, n)
    with pytest.raises(InvalidArgumentError):
        mm.matmul_id(x[:, :256], raw, T.Q4_0, [0], [0], 4)
    with pytest.raises(InvalidArgumentError):
        mm.matmul_id(x, raw, T.Q4_0, [0], [0], 4, out=np.empty((1, 5), np.float32))
    assert mm.matmul_id(x, raw, T.Q4_0, [], [], 4).shape == (0, 4)


@pytest.mark.boundscheck
@pytest.mark.parametrize("n_out", [37, 301])
@pytest.mark.parametrize("t", [T.Q4_0, T.Q5_0, T.Q8_0])
def test_cache_blocked_gemm_any_blocking(t, n_out):
    """The prompt-path gemm gives the same bits for every row tile / token chunk size (odd row counts,
    chunks that do not divide the tokens, one token group per chunk) as one token at a time; 301 rows: more
    8-row groups than MIN_ITEMS, dealt out unevenly (2 or 3 a work item, the last one partial)."""
    from pyrt._kernels import matmul_q8_0 as ql
    kind = {T.Q8_0: ql.KIND_Q8_0, T.Q4_0: ql.KIND_Q4_0, T.Q5_0: ql.KIND_Q5_0}[t]
    _, x, raw = _case(t, n_tok=23, n_out=n_out)
    xq = mm._quantize_activations(x, get_qtype(t)).copy()
    one = np.stack([mm.matmul(x[i:i + 1].copy(), raw, t, path="dot")[0] for i in range(23)])
    rb, tb = raw.shape[1], xq.shape[1] // 34 * (34 + ql.AUX_BYTES)
    for tile_bytes, chunk_bytes in [(ql.TILE_BYTES, ql.CHUNK_BYTES), (1, 1), (3 * rb, 2 * tb), (5 * rb, 9 * tb),
                                    (100 * rb, 4 * tb), (1000 * rb, 30 * tb)]:
        out = np.full((23, n_out), np.nan, np.float32)
        ql.matmul_q(out, raw, xq, kind, tile_bytes, chunk_bytes)
        assert np.array_equal(out, one), (tile_bytes, chunk_bytes)
