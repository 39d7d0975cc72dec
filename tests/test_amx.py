"""AMX-INT8 prompt matmuls (pyrt._kernels.amx_matmul): for Q8_0/Q4_0/Q5_0 weights the same bits as the AVX tiles
(matmul_q8_0.matmul_q); for Q4_K/Q5_K/Q6_K the same bits as the row dots (quants_k.matmul_k) and close to the
float64 product of the dequantized weights and Q8_K activations; and what ops.matmul runs for prompts where the
CPU has AMX. Skipped with the reason where this CPU, its kernel or PYRT_NO_AMX gives no AMX."""

import numpy as np
import pytest
from gguf import GGMLQuantizationType as T
from gguf.quants import dequantize, quantize

from pyrt.ops import matmul as mm
from pyrt.ops import paths
from pyrt._kernels import amx, amx_k, amx_matmul, codes
from pyrt._kernels import matmul_q8_0 as ql

KINDS = {"q8_0": (T.Q8_0, codes.Q8_0), "q4_0": (T.Q4_0, codes.Q4_0), "q5_0": (T.Q5_0, codes.Q5_0)}
K_KINDS = {"q4_k": (T.Q4_K, codes.Q4_K), "q5_k": (T.Q5_K, codes.Q5_K), "q6_k": (T.Q6_K, codes.Q6_K)}


def _why_no_amx():
    if not amx.HAS_AMX_TARGET:
        return "the CPU Numba compiles for has no AMX-INT8 (or PYRT_NO_SIMD is set)"
    if not amx.enable():
        return "AMX unavailable here: PYRT_NO_AMX is set, or the kernel refused the tile data state"
    return None


pytestmark = pytest.mark.skipif(_why_no_amx() is not None, reason=str(_why_no_amx()))


def _case(rng, t, n_tok, n_out, n_in):
    w = (rng.standard_normal((n_out, n_in)) * 0.05).astype(np.float32)
    w[0, :32] = 0.0  # an all-zero block (scale 0)
    raw = quantize(w, t).view(np.uint8).reshape(n_out, -1)
    x = rng.standard_normal((n_tok, n_in)).astype(np.float32)
    x[0, 32:64] = 0.0
    xq = np.empty((n_tok, n_in // 32 * 34), np.uint8)
    ql.quantize_rows_q8_0(xq, x)
    return raw, xq


def _amx(raw, xq, kind):
    out = np.full((xq.shape[0], raw.shape[0]), np.nan, np.float32)
    amx_matmul.matmul_q_amx(out, raw, xq, kind, amx.config_bytes())
    return out


@pytest.mark.parametrize("name", list(KINDS))
@pytest.mark.parametrize("n_tok", [1, 15, 16, 17, 40, 64])
def test_amx_matches_avx_tiles_bit_exact(name, n_tok):
    t, kind = KINDS[name]
    rng = np.random.default_rng(n_tok)
    raw, xq = _case(rng, t, n_tok, 48, 256)
    ref = np.empty((n_tok, 48), np.float32)
    ql.matmul_q(ref, raw, xq, kind, ql.TILE_BYTES, ql.CHUNK_BYTES)
    got = _amx(raw, xq, kind)
    assert np.array_equal(got.view(np.uint32), ref.view(np.uint32))


@pytest.mark.parametrize("name", list(KINDS))
def test_amx_close_to_float64(name):
    t, kind = KINDS[name]
    rng = np.random.default_rng(5)
    raw, xq = _case(rng, t, 37, 32, 2048)
    wd = dequantize(raw, t).reshape(32, 2048).astype(np.float64)
    xd = np.empty((37, 2048), np.float32)
    ql.dequant_rows_q8_0(xd, xq)
    ref = xd.astype(np.float64) @ wd.T
    got = _amx(raw, xq, kind)
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())


@pytest.mark.parametrize("name", list(KINDS))
def test_ops_matmul_prompt_runs_amx(name):
    """ops.matmul for a prompt batch gives the AMX kernel's bits, including an n_out that is not a multiple
    of 16 (the last rows are one-row dots)."""
    t, kind = KINDS[name]
    rng = np.random.default_rng(9)
    n_tok, n_out, n_in = 70, 53, 512
    w = (rng.standard_normal((n_out, n_in)) * 0.05).astype(np.float32)
    raw = quantize(w, t).view(np.uint8).reshape(n_out, -1)
    x = rng.standard_normal((n_tok, n_in)).astype(np.float32)
    xq = np.empty((n_tok, n_in // 32 * 34), np.uint8)
    ql.quantize_rows_q8_0(xq, x)
    ref = np.empty((n_tok, n_out), np.float32)
    ql.matmul_q(ref, raw, xq, kind, ql.TILE_BYTES, ql.CHUNK_BYTES)
    with paths.using(amx_min_tokens=32):
        got = mm.matmul(x, raw, int(t))
        assert mm.quantized_path(int(t), n_tok) and not mm.dot_path(int(t), n_tok)
    assert np.array_equal(got.view(np.uint32), ref.view(np.uint32))


def _k_case(name, n_tok, n_out, n_in, seed):
    from test_quants_k import q8k, rand_blocks
    raw = rand_blocks(name, n_out, n_in, seed, edge=False)
    raw[1, :] = 0  # an all-zero row (d = dmin = 0)
    rng = np.random.default_rng(seed + 1)
    x = rng.standard_normal((n_tok, n_in)).astype(np.float32)
    x[0, :256] = 0.0  # an all-zero activation block (d = 0)
    return raw, x, q8k(x)


def _bits(a):
    """The bits of a with -0.0 as +0.0."""
    return (a + np.float32(0.0)).view(np.uint32)


def _f64_ref(raw, t, xq, n_out, n_in):
    from test_quants_k import dequant_q8_k_f64
    wd = dequantize(raw, t).reshape(n_out, n_in).astype(np.float64)
    return dequant_q8_k_f64(xq) @ wd.T


@pytest.mark.parametrize("name", list(K_KINDS))
@pytest.mark.parametrize("n_tok,n_out,n_in", [(1, 16, 256), (15, 32, 512), (16, 48, 256), (37, 53, 2048),
                                              (70, 16, 768)])
def test_amx_k_quants_close_to_float64(name, n_tok, n_out, n_in):
    """Q4_K/Q5_K: d*sc*q - dmin*m per 32-value sub-block; Q6_K: d*sc*(q - 32) per 16 values; against Q8_K
    activations, every row count (n_out % 16 != 0: the zero-padded last tile) and token count (the
    zero-padded last token tile)."""
    t, kind = K_KINDS[name]
    raw, _, xq = _k_case(name, n_tok, n_out, n_in, n_tok + n_out)
    ref = _f64_ref(raw, t, xq, n_out, n_in)
    got = _amx(raw, xq, kind)
    assert np.isfinite(got).all()
    np.testing.assert_allclose(got, ref, rtol=2e-6, atol=2e-6 * np.abs(ref).max())
    assert np.all(got[:, 1] == 0.0)


@pytest.mark.parametrize("name", list(K_KINDS))
@pytest.mark.parametrize("n_tok,n_out,n_in", [(1, 16, 256), (15, 32, 512), (16, 48, 256), (37, 53, 2048),
                                              (70, 16, 768)])
def test_amx_k_quants_same_bits_as_row_dot(name, n_tok, n_out, n_in):
    """The tiles fold each super-block's exact integer sums as the row dots do (fma(d*dx, S), then
    fma(-dmin*dx, M)): a prompt on AMX gives the bits a token-by-token decode gives (zeros compared by value:
    the kernels' fastmath leaves the sign of an exact zero, an all-zero row's, unspecified). Q4_K/Q5_K with
    n_tok >= amx_k.CHAIN_MIN_TOKENS (37, 70) run the chained products, fewer tokens the per-sub-block tiles."""
    assert 16 < amx_k.CHAIN_MIN_TOKENS <= 37
    from pyrt._kernels import quants_k as qk
    t, kind = K_KINDS[name]
    raw, _, xq = _k_case(name, n_tok, n_out, n_in, n_tok * 7 + n_out)
    got = _amx(raw, xq, kind)
    for i in range(n_tok):
        dot = np.empty((1, n_out), np.float32)
        qk.matmul_k(dot, raw, np.ascontiguousarray(xq[i:i + 1]), kind)
        assert np.array_equal(_bits(got[i]), _bits(dot[0])), i


@pytest.mark.parametrize("name", list(K_KINDS))
def test_amx_k_quants_rows_do_not_depend_on_batching(name):
    """A token's result is the same bits whatever the other tokens and the thread count."""
    import numba
    t, kind = K_KINDS[name]
    raw, _, xq = _k_case(name, 40, 32, 512, 3)
    full = _amx(raw, xq, kind)
    old = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        one = _amx(raw, np.ascontiguousarray(xq[17:18]), kind)
    finally:
        numba.set_num_threads(old)
    assert np.array_equal(one.view(np.uint32), full[17:18].view(np.uint32))


@pytest.mark.parametrize("name", list(K_KINDS))
def test_ops_matmul_k_quant_prompt_runs_amx(name):
    """ops.matmul for a K-quant prompt batch takes the AMX path on the Q8_K rows its dot kernel reads (the
    MoE experts' route through quantized_rows/matmul_quantized too), with the dot kernel's bits."""
    from pyrt._kernels import quants_k as qk
    t, kind = K_KINDS[name]
    n_tok, n_out, n_in = 40, 48, 512
    raw, x, xq = _k_case(name, n_tok, n_out, n_in, 11)
    with paths.using(amx_min_tokens_k=12, amx_min_tokens=64):  # the K-quants' own threshold
        assert mm.quantized_path(int(t), n_tok) and not mm.dot_path(int(t), n_tok)
        assert mm.dot_path(int(t), 11) and not mm.dot_path(int(t), 12)
        got = mm.matmul(x, raw, int(t))
        via_rows = mm.matmul_quantized(mm.quantized_rows(x, int(t)), raw, int(t), n_in)
    assert np.array_equal(got.view(np.uint32), _amx(raw, xq, kind).view(np.uint32))
    assert np.array_equal(via_rows.view(np.uint32), got.view(np.uint32))
    dot = np.empty((n_tok, n_out), np.float32)
    qk.matmul_k(dot, raw, xq, kind)
    assert np.array_equal(_bits(got), _bits(dot))


def test_transpose_rows_matches_numpy():
    """The pack's register transpose (16 rows x 8 or 16 words) against numpy's transpose."""
    from numba import njit
    from pyrt._kernels.amx import pack_q4_0, BLOCK_TILE
    rng = np.random.default_rng(2)
    w = np.zeros((16, 2 * 18), np.uint8)
    w[:, 2:18] = rng.integers(0, 256, (16, 16), dtype=np.uint8)
    w[:, 20:36] = rng.integers(0, 256, (16, 16), dtype=np.uint8)

    @njit
    def run(w, out, dw):
        pack_q4_0(w.ctypes.data, w.strides[0], 2, out.ctypes.data, dw.ctypes.data)

    out = np.zeros(2 * BLOCK_TILE + 64, np.uint8)
    base = (-out.ctypes.data) % 64
    dw = np.zeros(32, np.float32)
    run(w, out[base:], dw)
    for b in range(2):
        qs = w[:, 2 + 18 * b:18 + 18 * b]
        vals = np.concatenate([qs & 15, qs >> 4], axis=1).astype(np.int16) - 8  # [16 rows, 32]
        tile = out[base + b * BLOCK_TILE: base + (b + 1) * BLOCK_TILE].view(np.int8).reshape(8, 16, 4)
        assert np.array_equal(tile.astype(np.int16), vals.reshape(16, 8, 4).transpose(1, 0, 2))
