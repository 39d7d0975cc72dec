"""AMX-INT8 prompt matmuls (pyrt._kernels.amx): for Q8_0/Q4_0/Q5_0 weights the same bits as the AVX tiles
(matmul_q8_0.matmul_q), close to a float64 reference, and what ops.matmul runs for prompts where the CPU has
AMX. Skipped with the reason where this CPU, its kernel or PYRT_NO_AMX gives no AMX."""

import numpy as np
import pytest
from gguf import GGMLQuantizationType as T
from gguf.quants import dequantize, quantize

from pyrt.ops import matmul as mm
from pyrt.ops import paths
from pyrt._kernels import amx, codes
from pyrt._kernels import matmul_q8_0 as ql

KINDS = {"q8_0": (T.Q8_0, codes.Q8_0), "q4_0": (T.Q4_0, codes.Q4_0), "q5_0": (T.Q5_0, codes.Q5_0)}


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
    amx.matmul_q_amx(out, raw, xq, kind, amx.config_bytes())
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
