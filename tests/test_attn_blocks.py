"""The register-blocked attention blocks (pyrt._kernels.attn_blocks) against float64 numpy: the 4 x 4 score block
and the 4-row value accumulation, at lengths that exercise every vector step and scalar tail, in both widths
(16 lanes: AVX-512 targets; 8 lanes: AVX2 targets; either compiles on any x86 target with FMA); the blocks over
f32/f16/bf16 cache rows gathered by address against the f32 blocks over the same rows widened, bit for bit."""

from __future__ import annotations

import numpy as np
import pytest
from numba import njit

from pyrt._kernels import codes
from pyrt._kernels.attn_blocks import BLOCKS, GATHERED
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


def _gathered_wrappers(w, ek):
    dot_g, pv_g = GATHERED[w][ek]

    @njit(cache=False)
    def dot(s, q, ka, n):
        dot_g(s.ctypes.data, s.strides[0], q.ctypes.data, q.strides[0], ka.ctypes.data, 0, n)

    @njit(cache=False)
    def pv(a, p, va, off, nc):
        pv_g(a.ctypes.data, a.strides[0], p.ctypes.data, p.strides[0], va.ctypes.data, off, nc, a.shape[1])

    return dot, pv


KINDS = [codes.F32, codes.F16, codes.BF16]
_FNS_G = {w: {k: _gathered_wrappers(w, k) for k in KINDS} for w in WIDTHS}


def _rows(kind, x):
    """x f32 -> (cache rows of kind, as the kernels store them; the same values widened to f32)."""
    if kind == codes.F32:
        return x.view(np.uint32), x
    if kind == codes.F16:
        h = x.astype(np.float16)
        return h.view(np.uint16), h.astype(np.float32)
    b = (x.view(np.uint32) >> 16).astype(np.uint16)  # truncated bf16 bits: any bits are valid rows
    return b, (b.astype(np.uint32) << 16).view(np.float32)


@pytest.mark.parametrize("w", WIDTHS)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("n", [1, 7, 16, 17, 64, 130, 577])
def test_gathered_blocks_equal_f32_blocks_on_widened_rows(w, kind, n):
    """dot4x4 / pv4 over cache rows of kind at arbitrary addresses (out of order, one row twice, a byte offset into
    the value rows) give the bits of the f32 blocks over those rows widened to f32 and laid side by side."""
    rng = np.random.default_rng(n * 7 + kind)
    off = 3                                               # elements of each value row before the values
    raw, wide = _rows(kind, rng.standard_normal((9, n + off + 5)).astype(np.float32))
    order = np.array([5, 0, 8, 5, 2, 7, 1], np.int64)     # cells in scan order: shuffled, one repeated
    addr = raw.ctypes.data + order * raw.strides[0]
    dot_g, pv_g = _FNS_G[w][kind]
    dot_f, pv_f = _FNS[w]
    q = rng.standard_normal((4, n)).astype(np.float32)
    s = np.full((4, 6), np.nan, np.float32)
    dot_g(s, q, addr[:4].copy(), n)
    s_ref = np.empty((4, 4), np.float32)
    dot_f(s_ref, q, np.ascontiguousarray(wide[order[:4], :n]))
    assert np.array_equal(s[:, :4], s_ref) and np.isnan(s[:, 4:]).all()
    a = rng.standard_normal((4, n)).astype(np.float32)
    a_ref = a.copy()
    p = rng.random((4, 8)).astype(np.float32)
    pv_g(a, p, addr.copy(), off * raw.itemsize, len(order))
    pv_f(a_ref, p, np.ascontiguousarray(wide[order, off:off + n]), len(order))
    assert np.array_equal(a, a_ref)

