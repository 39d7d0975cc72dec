"""Norm, RoPE and activation kernels against float64 numpy references."""

import numba
import numpy as np
import pytest

from pyrt.errors import InvalidArgumentError
from pyrt.ops import basic


def _nmse(a, b):
    return float(np.sum((a.astype(np.float64) - b) ** 2) / np.sum(b.astype(np.float64) ** 2))


@pytest.mark.boundscheck
def test_rms_norm():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((5, 96)).astype(np.float32) * 3
    w = rng.standard_normal(96).astype(np.float32)
    ref = x / np.sqrt(np.mean(x.astype(np.float64) ** 2, axis=1, keepdims=True) + 1e-6) * w
    np.testing.assert_allclose(basic.rms_norm(x, w, 1e-6), ref, rtol=2e-6, atol=2e-6)
    y = x.copy()
    basic.rms_norm(y, w, 1e-6, out=y)  # in place
    np.testing.assert_allclose(y, ref, rtol=2e-6, atol=2e-6)
    h = x.reshape(5, 3, 32).copy()
    basic.rms_norm_heads(h, w[:32].copy(), 1e-6)
    xr = x.reshape(5, 3, 32).astype(np.float64)
    ref_h = xr / np.sqrt(np.mean(xr ** 2, axis=2, keepdims=True) + 1e-6) * w[:32]
    np.testing.assert_allclose(h, ref_h, rtol=2e-6, atol=2e-6)
    with pytest.raises(InvalidArgumentError):
        basic.rms_norm(x, w[:10].copy(), 1e-6)
    with pytest.raises(InvalidArgumentError):
        basic.rms_norm(x.astype(np.float64), w, 1e-6)


def _rope_ref(x, pos, n_rot, base, scale, neox, factors=None):
    x = x.astype(np.float64).copy()
    half = n_rot // 2
    i = np.arange(half)
    theta = pos[:, None] * scale * base ** (-2.0 * i / n_rot)
    if factors is not None:
        theta = theta / factors
    c, s = np.cos(theta)[:, None, :], np.sin(theta)[:, None, :]
    if neox:
        a, b = x[..., :half].copy(), x[..., half:n_rot].copy()
        x[..., :half], x[..., half:n_rot] = a * c - b * s, a * s + b * c
    else:
        a, b = x[..., 0:n_rot:2].copy(), x[..., 1:n_rot:2].copy()
        x[..., 0:n_rot:2], x[..., 1:n_rot:2] = a * c - b * s, a * s + b * c
    return x


@pytest.mark.boundscheck
@pytest.mark.parametrize("mode", [basic.ROPE_NORM, basic.ROPE_NEOX])
@pytest.mark.parametrize("n_rot", [64, 32])
def test_rope(mode, n_rot):
    rng = np.random.default_rng(1)
    pos = np.array([0, 1, 7, 100, 4095], dtype=np.int32)
    x = rng.standard_normal((5, 4, 64)).astype(np.float32)
    factors = rng.uniform(1, 4, n_rot // 2).astype(np.float32)
    for ff in (None, factors):
        rc = basic.RopeCache(pos, n_rot, 10000.0, 0.5, ff, mode)
        got = rc.apply(x.copy())
        ref = _rope_ref(x, pos.astype(np.float64), n_rot, 10000.0, 0.5, mode == basic.ROPE_NEOX, ff)
        np.testing.assert_allclose(got, ref, rtol=1e-5, atol=2e-5)
        assert np.array_equal(got[..., n_rot:], x[..., n_rot:])  # dims past n_rot untouched
    with pytest.raises(InvalidArgumentError):
        basic.RopeCache(pos, 63, 10000.0)


def test_activations():
    rng = np.random.default_rng(2)
    g = rng.standard_normal((3, 50)).astype(np.float32) * 4
    u = rng.standard_normal((3, 50)).astype(np.float32)
    gd, ud = g.astype(np.float64), u.astype(np.float64)
    ref = gd / (1 + np.exp(-gd)) * ud
    np.testing.assert_allclose(basic.swiglu(g.copy(), u), ref, rtol=1e-5, atol=1e-6)
    # the parallel kernel (rows split into chunks, each through a scratch row), in place or not, gives the
    # serial kernel's bits
    from pyrt._kernels import act
    gb = rng.standard_normal((131, 1000)).astype(np.float32) * 4
    ub = rng.standard_normal((131, 1000)).astype(np.float32)
    serial = np.empty_like(gb)
    act.swiglu_f32_serial(serial, gb, ub)
    gbd = gb.astype(np.float64)
    np.testing.assert_allclose(serial, gbd / (1 + np.exp(-gbd)) * ub, rtol=1e-5, atol=1e-6)
    out = np.empty_like(gb)
    act.swiglu_f32(out, gb, ub)
    assert np.array_equal(out, serial)
    assert np.array_equal(basic.swiglu(gb.copy(), ub), serial)
    # ggml (GGML_GELU_FP16): input rounded to f16, result rounded to f16; identity/zero outside (-10, 10)
    g[0, :4] = [-12.0, 12.0, -10.0, 10.0]
    gh = g.astype(np.float16).astype(np.float64)
    gelu = 0.5 * gh * (1 + np.tanh(np.sqrt(2 / np.pi) * gh * (1 + 0.044715 * gh * gh)))
    gelu = gelu.astype(np.float16).astype(np.float64)
    gd = g.astype(np.float64)
    gelu = np.where(gd <= -10, 0.0, np.where(gd >= 10, gd, gelu))
    got = basic.geglu_tanh(g.copy(), u)
    np.testing.assert_allclose(got, gelu * ud, rtol=1e-3, atol=1e-6)  # f16 ulp of double rounding
    exact = 0.5 * gd * (1 + np.tanh(np.sqrt(2 / np.pi) * gd * (1 + 0.044715 * gd * gd))) * ud
    np.testing.assert_allclose(got, exact, rtol=2e-3, atol=2e-3)  # and close to the exact function
    # the kernel rounds gate to f16 itself: numpy's table entry for every f16 in (-10, 10) and every midpoint
    # between two of them (ties to even), on both paths (serial below PARALLEL_MIN_ELEMS)
    h = np.arange(0, 0x4900, dtype=np.uint16).view(np.float16).astype(np.float32)  # [0, 10) on the f16 grid
    mid = (h[:-1] + h[1:]) / np.float32(2)                                           # exact in f32
    x = np.concatenate([h, mid, -h, -mid, [0.0, 0.0]]).astype(np.float32)  # 74752 = 2 x 37376
    want = basic._gelu_table()[x.astype(np.float16).view(np.uint16)]
    for rows in (x.reshape(2, -1), x[:64].reshape(2, -1)):
        assert np.array_equal(basic.geglu_tanh(rows.copy(), np.ones_like(rows)), want[:rows.size].reshape(rows.shape))


def test_thread_count_independent_and_serial_equals_parallel():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((300, 256)).astype(np.float32)  # above PARALLEL_MIN_ELEMS
    assert x.size >= basic.PARALLEL_MIN_ELEMS
    w = rng.standard_normal(256).astype(np.float32)
    outs = []
    for nt in (1, numba.config.NUMBA_NUM_THREADS):
        numba.set_num_threads(nt)
        outs.append(basic.rms_norm(x, w, 1e-5))
    numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)
    assert np.array_equal(outs[0], outs[1])
    small = np.concatenate([basic.rms_norm(x[i:i + 100].copy(), w, 1e-5) for i in range(0, 300, 100)])
    assert np.array_equal(small, outs[0])  # serial path (small inputs) == parallel path
    pos = np.arange(300, dtype=np.int32)
    q = rng.standard_normal((300, 4, 64)).astype(np.float32)
    for mode in (basic.ROPE_NORM, basic.ROPE_NEOX):
        big = basic.RopeCache(pos, 64, 1e4, 1.0, None, mode).apply(q.copy())
        parts = [basic.RopeCache(pos[i:i + 50], 64, 1e4, 1.0, None, mode).apply(q[i:i + 50].copy())
                 for i in range(0, 300, 50)]
        assert np.array_equal(np.concatenate(parts), big)
