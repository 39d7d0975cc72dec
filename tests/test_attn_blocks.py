"""The register-blocked attention blocks (pyrt._kernels.attn_blocks) against float64 numpy: the 4 x 4 score block
and the 4-row value accumulation, at lengths that exercise every vector step and scalar tail, in both widths
(16 lanes: AVX-512 targets; 8 lanes: AVX2 targets; either compiles on any x86 target with FMA)."""

from __future__ import annotations

import numpy as np
import pytest
from numba import njit

from pyrt._kernels.attn_blocks import BLOCKS
from pyrt._kernels.simd import HAS_FMA

pytestmark = pytest.mark.skipif(not HAS_FMA, reason="the blocks' vector FMAs need a target with FMA")
WIDTHS = sorted(BLOCKS)


def _wrappers(w):
    dot4x4, pv4 = BLOCKS[w]

    @njit(cache=False)
    def dot(s, q, k):
        dot4x4(s.ctypes.data, s.strides[0], q.ctypes.data, q.strides[0], k.ctypes.data, k.strides[0], q.shape[1])

    @njit(cache=False)
    def pv(a, p, v, nc):
        pv4(a.ctypes.data, a.strides[0], p.ctypes.data, p.strides[0], v.ctypes.data, v.strides[0], nc, a.shape[1])

    return dot, pv


_FNS = {w: _wrappers(w) for w in WIDTHS}


@pytest.mark.parametrize("w", WIDTHS)
@pytest.mark.parametrize("n", [0, 1, 7, 8, 9, 15, 16, 17, 96, 577])
def test_dot4x4_matches_float64(n, w):
    rng = np.random.default_rng(n)
    q = rng.standard_normal((4, n + 3)).astype(np.float32)[:, :n]  # row stride wider than the row
    k = rng.standard_normal((4, n + 5)).astype(np.float32)[:, :n]
    s = np.full((4, 9), np.nan, np.float32)
    _FNS[w][0](s, q, k)
    ref = q.astype(np.float64) @ k.astype(np.float64).T
    np.testing.assert_allclose(s[:, :4], ref, rtol=1e-5, atol=1e-5 * np.sqrt(n + 1))
    assert np.isnan(s[:, 4:]).all()  # writes nothing past the block


@pytest.mark.parametrize("w", WIDTHS)
def test_dot4x4_rows_do_not_depend_on_the_block(w):
    """A row's score has the same bits whichever of the 4 block rows / cells it sits in."""
    rng = np.random.default_rng(1)
    q = rng.standard_normal((4, 200)).astype(np.float32)
    k = rng.standard_normal((4, 200)).astype(np.float32)
    s = np.empty((4, 4), np.float32)
    _FNS[w][0](s, q, k)
    s2 = np.empty((4, 4), np.float32)
    _FNS[w][0](s2, np.ascontiguousarray(q[::-1]), np.ascontiguousarray(k[::-1]))
    assert np.array_equal(s, s2[::-1, ::-1])


@pytest.mark.parametrize("w", WIDTHS)
@pytest.mark.parametrize("n", [1, 8, 15, 16, 17, 63, 64, 65, 130, 512])
@pytest.mark.parametrize("nc", [0, 1, 5, 32])
def test_pv4_matches_float64(n, nc, w):
    rng = np.random.default_rng(n * 100 + nc)
    a = rng.standard_normal((4, n + 7)).astype(np.float32)
    a0 = a.copy()
    p = rng.random((4, nc + 2)).astype(np.float32)
    v = rng.standard_normal((max(nc, 1), n + 11)).astype(np.float32)
    _FNS[w][1](a[:, :n], p, v, nc)
    ref = a0[:, :n].astype(np.float64) + p[:, :nc].astype(np.float64) @ v[:nc, :n].astype(np.float64)
    np.testing.assert_allclose(a[:, :n], ref, rtol=1e-5, atol=1e-5 * np.sqrt(nc + 1))
    assert np.array_equal(a[:, n:], a0[:, n:])  # columns past n untouched


