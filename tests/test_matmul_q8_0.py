"""Legacy/float block formats: dequantizers bit-exact vs gguf, the Q8_0 activation quantizer vs a
transcription of llama.cpp's x86 quantize_row_q8_0, portable vs host SIMD block dots, the registry."""

import os
import subprocess
import sys

import numpy as np
import pytest
from gguf import GGML_QUANT_SIZES
from gguf import GGMLQuantizationType as T
from gguf.quants import dequantize, quantize
from numba import njit, types

from pyrt._kernels import matmul_q8_0 as ql
from pyrt._kernels import simd, dots_q8_0
from pyrt.errors import InvalidArgumentError, UnsupportedError
from pyrt.formats.qtypes import SUPPORTED_TYPES, get_qtype, row_bytes

LEGACY = {"f32": T.F32, "f16": T.F16, "bf16": T.BF16, "q8_0": T.Q8_0, "q4_0": T.Q4_0, "q5_0": T.Q5_0}
EDGE_F16 = np.array([0.0, -0.0, 6e-8, -6e-8, 1e-4, 65504.0, -65504.0, np.inf, -np.inf, np.nan, 1.0], np.float16)


def _bits_equal(a, b):
    return a.shape == b.shape and np.array_equal(a.view(np.uint32), b.view(np.uint32))


def _random_blocks(rng, t, n_rows, n):
    """Fully random bytes (any scale bit pattern incl. inf/nan/subnormal), some scales forced to edges."""
    bs, ts = GGML_QUANT_SIZES[t]
    raw = rng.integers(0, 256, (n_rows, n // bs * ts), dtype=np.uint8)
    if bs > 1:
        blocks = raw.reshape(n_rows, -1, ts)
        k = min(len(EDGE_F16), blocks.shape[1])
        blocks[0, :k, :2] = EDGE_F16[:k].view(np.uint8).reshape(k, 2)
    return raw


@pytest.mark.parametrize("name", list(LEGACY))
def test_dequant_random_bits_exact(name):
    rng = np.random.default_rng(1)
    t = LEGACY[name]
    raw = _random_blocks(rng, t, 7, 256)
    out = np.empty((7, 256), np.float32)
    getattr(ql, "dequant_rows_" + name)(out, raw)
    with np.errstate(invalid="ignore", over="ignore"):  # inf/nan scales on purpose
        ref = dequantize(raw, t).reshape(7, 256)
    assert _bits_equal(out, ref)


@pytest.mark.parametrize("name", list(LEGACY))
def test_dequant_real_shape_exact(name):
    rng = np.random.default_rng(2)
    t = LEGACY[name]
    w = (rng.standard_normal((3, 5632)) * 0.02).astype(np.float32)
    raw = quantize(w, t).view(np.uint8).reshape(3, -1)
    out = np.empty((3, 5632), np.float32)
    getattr(ql, "dequant_rows_" + name)(out, raw)
    assert _bits_equal(out, dequantize(raw, t).reshape(3, 5632))


def test_dequant_f16_all_bit_patterns():
    raw = np.arange(65536, dtype=np.uint16).view(np.uint8).reshape(1, -1)
    out = np.empty((1, 65536), np.float32)
    ql.dequant_rows_f16(out, raw)
    ref = np.arange(65536, dtype=np.uint16).view(np.float16).astype(np.float32).reshape(1, -1)
    assert _bits_equal(out, ref)


def q8_0_x86_reference(x):
    """numpy transcription of ggml-cpu/arch/x86 quantize_row_q8_0 (AVX2 path). x [n_rows, n] f32."""
    xb = x.reshape(x.shape[0], -1, 32)
    amax = np.abs(xb).max(axis=-1, keepdims=True)
    d = (amax / np.float32(127)).astype(np.float32)
    with np.errstate(divide="ignore", over="ignore"):
        idv = np.where(amax != 0, np.float32(127) / amax, np.float32(0)).astype(np.float32)
        d16 = d.astype(np.float16)  # round to nearest even, overflow to inf (as F16C)
    q = np.rint(xb * idv).astype(np.int8)  # _MM_ROUND_NEAREST: ties to even
    out = np.concatenate([d16.view(np.uint8), q.view(np.uint8)], axis=-1)
    return out.reshape(x.shape[0], -1)


def _quantize_q8_0(x):
    dst = np.empty((x.shape[0], x.shape[1] // 32 * 34), np.uint8)
    ql.quantize_rows_q8_0(dst, x)
    return dst


@pytest.mark.boundscheck
def test_quantize_q8_0_bit_exact_x86():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((5, 2048)).astype(np.float32) * np.float32(3.0)
    x[0, :32] = 0.0                                        # zero block: d = 0, q = 0
    x[0, 32:64] = np.arange(32, dtype=np.float32) - 15.5    # amax 16.5 -> ties at .5 after scaling
    x[1, :32] = np.float32(127.0)
    x[1, 1:32:2] = np.float32(-0.5) + np.arange(16, dtype=np.float32)  # amax 127: id = 1, exact halves
    x[2, :32] = np.float32(1e-30)                          # d underflows in f16
    x[3, :32] *= np.float32(1e7)                            # d overflows f16 -> inf
    assert np.array_equal(_quantize_q8_0(x), q8_0_x86_reference(x))


def test_quantize_q8_0_close_to_ref():
    """llama.cpp's reference (gguf.quants) rounds ties away from zero and scales by 1/d: same d, q within 1."""
    rng = np.random.default_rng(4)
    x = rng.standard_normal((4, 1024)).astype(np.float32)
    ours = _quantize_q8_0(x).reshape(4, -1, 34)
    ref = quantize(x, T.Q8_0).view(np.uint8).reshape(4, -1, 34)
    assert np.array_equal(ours[..., :2], ref[..., :2])
    dq = ours[..., 2:].view(np.int8).astype(np.int32) - ref[..., 2:].view(np.int8).astype(np.int32)
    assert np.abs(dq).max() <= 1 and np.count_nonzero(dq) <= dq.size * 1e-3


# -------------------------------------------------------------- SIMD block dots: host vs portable IR


@njit(cache=False)
def _dots(kind, w, x, xc, nb):
    """Dots of weight row 0 with one activation row: [host-selected, portable IR, AVX2 (or portable)] one-row
    dots, then the 8-row tiles (rows 0..7, stride ws) in the same three modes: [3 + 8*m + j]."""
    out = np.empty((27,), np.float32)
    wp, ws = np.int64(w.ctypes.data), np.int64(w.strides[0])
    xp, cp = np.int64(x.ctypes.data), np.int64(xc.ctypes.data)
    dp = np.int64(out.ctypes.data)
    pf = np.int64(2048)
    if kind == 0:
        out[0] = dots_q8_0.dot_q8_0_q8_0(wp, xp, cp, nb, pf)
        out[1] = dots_q8_0.dot_q8_0_q8_0_generic(wp, xp, cp, nb, pf)
        out[2] = dots_q8_0.dot_q8_0_q8_0_avx2(wp, xp, cp, nb, pf)
        dots_q8_0.rows8_q8_0_q8_0(wp, ws, xp, 0, cp, 0, nb, dp + 12, 0, pf)
        dots_q8_0.rows8_q8_0_q8_0_generic(wp, ws, xp, 0, cp, 0, nb, dp + 44, 0, pf)
        dots_q8_0.rows8_q8_0_q8_0_avx2(wp, ws, xp, 0, cp, 0, nb, dp + 76, 0, pf)
    elif kind == 1:
        out[0] = dots_q8_0.dot_q4_0_q8_0(wp, xp, cp, nb, pf)
        out[1] = dots_q8_0.dot_q4_0_q8_0_generic(wp, xp, cp, nb, pf)
        out[2] = dots_q8_0.dot_q4_0_q8_0_avx2(wp, xp, cp, nb, pf)
        dots_q8_0.rows8_q4_0_q8_0(wp, ws, xp, 0, cp, 0, nb, dp + 12, 0, pf)
        dots_q8_0.rows8_q4_0_q8_0_generic(wp, ws, xp, 0, cp, 0, nb, dp + 44, 0, pf)
        dots_q8_0.rows8_q4_0_q8_0_avx2(wp, ws, xp, 0, cp, 0, nb, dp + 76, 0, pf)
    else:
        out[0] = dots_q8_0.dot_q5_0_q8_0(wp, xp, cp, nb, pf)
        out[1] = dots_q8_0.dot_q5_0_q8_0_generic(wp, xp, cp, nb, pf)
        out[2] = dots_q8_0.dot_q5_0_q8_0_avx2(wp, xp, cp, nb, pf)
        dots_q8_0.rows8_q5_0_q8_0(wp, ws, xp, 0, cp, 0, nb, dp + 12, 0, pf)
        dots_q8_0.rows8_q5_0_q8_0_generic(wp, ws, xp, 0, cp, 0, nb, dp + 44, 0, pf)
        dots_q8_0.rows8_q5_0_q8_0_avx2(wp, ws, xp, 0, cp, 0, nb, dp + 76, 0, pf)
    return out


@pytest.mark.parametrize("kind,t", [(0, T.Q8_0), (1, T.Q4_0), (2, T.Q5_0)])
def test_block_dot_host_and_portable(kind, t):
    """VNNI / AVX2 / portable block dots, one row at a time or 8 rows transposed, compute the same exact
    integer block sums and the same f32 arithmetic on them: identical bits everywhere."""
    rng = np.random.default_rng(5 + kind)
    for n in (32 * 37, 32 * 20, 32):  # odd and even block counts (2-block unroll + tail)
        w = quantize(rng.standard_normal((8, n)).astype(np.float32), t).view(np.uint8).reshape(8, -1)
        if t == T.Q8_0:
            w.reshape(8, -1, 34)[:, 0, 2:6] = [0x80, 0x81, 0x7F, 0]  # -128 (not produced by the quantizer), -127, 127, 0
        if t == T.Q5_0:  # all-ones / alternating high bits in a few blocks
            w.reshape(8, -1, 22)[:, 0, 2:6] = 0xFF
            w.reshape(8, -1, 22)[:, -1, 2:6] = [0xA5, 0x5A, 0x0F, 0xF0]
            if n > 64:  # one set high bit per row, a different one in each row (the tile transposes qh)
                qh = (1 << ((5 * np.arange(8) + 1) % 32)).astype(np.uint32)
                w.reshape(8, -1, 22)[:, 1, 2:6] = qh.view(np.uint8).reshape(8, 4)
        xq = _quantize_q8_0(rng.standard_normal((1, n)).astype(np.float32)).reshape(-1)
        # extreme activations: +-127 everywhere (maddubs saturation would show up here)
        xq_ext = xq.copy().reshape(-1, 34)
        xq_ext[:, 2:] = np.where(np.arange(32) % 3 == 0, 129, 127).astype(np.uint8)  # -127 / 127
        for x in (xq, xq_ext.reshape(-1)):
            xc = np.empty((1, n // 32, dots_q8_0.AUX_WORDS), np.int32)
            ql.x_aux_q8_0(xc, x.reshape(1, -1), np.int32({0: dots_q8_0.Q8_0_VNNI_BIAS, 1: 8, 2: 16}[kind]))
            wd = dequantize(w, t).reshape(8, n).astype(np.float64)
            xd = dequantize(x, T.Q8_0).astype(np.float64)
            ref = wd @ xd
            mag = np.abs(wd) @ np.abs(xd)
            res = _dots(kind, w, x, xc, np.int64(n // 32))
            assert abs(res[0] - ref[0]) <= 1e-5 * mag[0]
            assert res[0] == res[1] == res[2], res[:3]
            tiles = res[3:].reshape(3, 8)
            assert np.all(np.abs(tiles[0] - ref) <= 1e-5 * mag)
            assert tiles[0, 0] == res[0]
            one = [_dots(kind, np.ascontiguousarray(w[j:]), x, xc, np.int64(n // 32))[0] for j in range(1, 8)]
            assert _bits_equal(tiles[0, 1:], np.float32(one))
            assert _bits_equal(tiles[0], tiles[1]) and _bits_equal(tiles[0], tiles[2])


# one host-selected one-row dot and one 8-row tile per format (their compiled IR is what the test reads)
@njit(cache=False)
def _probe_q8_0(wp, ws, xp, cp, nb, dp, pf):
    dots_q8_0.rows8_q8_0_q8_0(wp, ws, xp, 0, cp, 0, nb, dp, 0, pf)
    return dots_q8_0.dot_q8_0_q8_0(wp, xp, cp, nb, pf)


@njit(cache=False)
def _probe_q4_0(wp, ws, xp, cp, nb, dp, pf):
    dots_q8_0.rows8_q4_0_q8_0(wp, ws, xp, 0, cp, 0, nb, dp, 0, pf)
    return dots_q8_0.dot_q4_0_q8_0(wp, xp, cp, nb, pf)


@njit(cache=False)
def _probe_q5_0(wp, ws, xp, cp, nb, dp, pf):
    dots_q8_0.rows8_q5_0_q8_0(wp, ws, xp, 0, cp, 0, nb, dp, 0, pf)
    return dots_q8_0.dot_q5_0_q8_0(wp, xp, cp, nb, pf)


@pytest.mark.parametrize("fmt,block_bytes", [("q8_0", 34), ("q4_0", 18), ("q5_0", 22)])
def test_weight_prefetch_covers_every_line(fmt, block_bytes):
    """A loop step of the block dots (UNROLL blocks of a row) prefetches one line per 64 bytes of the step: one
    prefetch per 68-byte Q8_0 step would leave every 17th line of the weight stream to a demand miss."""
    probe = {"q8_0": _probe_q8_0, "q4_0": _probe_q4_0, "q5_0": _probe_q5_0}[fmt]
    sig = (types.int64,) * 7
    probe.compile(sig)
    per_step = -(-block_bytes * dots_q8_0.UNROLL // 64)  # prefetches a row's step issues: one per 64 bytes
    assert per_step == (2 if fmt == "q8_0" else 1)
    # the tile's 8 rows and the row dot, each per loop step (the tail of an odd block count prefetches nothing)
    assert probe.inspect_llvm(sig).count("call void @llvm.prefetch") == per_step * (dots_q8_0.ROWS + 1)


@njit(cache=False)
def _f16_portable(h, f):
    a = np.empty(h.shape, np.float32)
    b = np.empty(f.shape, np.uint16)
    for i in range(h.shape[0]):
        a[i] = simd.f16_to_f32_portable(h[i])
    for i in range(f.shape[0]):
        b[i] = simd.f32_to_f16_portable(f[i])
    return a, b


def test_f16_conversions_portable():
    """The integer-only half conversions (targets without F16C) match numpy: all halves, and f32
    values around every half (ties, subnormals, overflow, inf); NaN -> quiet NaN with the payload."""
    h = np.arange(65536, dtype=np.uint16)
    hf = h.view(np.float16)
    fin = hf[np.isfinite(hf)].astype(np.float32)
    nxt = np.nextafter(fin, np.float32(np.inf))
    with np.errstate(over="ignore"):
        up = np.nextafter(hf[np.isfinite(hf)], np.float16(np.inf)).astype(np.float64)
    mid = (fin.astype(np.float64) + up) / 2  # exact ties between neighbouring halves
    rng = np.random.default_rng(11)
    f = np.concatenate([fin, nxt, mid[np.isfinite(mid)].astype(np.float32),
                        np.float32([1e-30, 7e4, 65520.0, 65519.99, np.inf, -np.inf]),
                        rng.standard_normal(4096).astype(np.float32) * np.float32(1e-5)])
    a, b = _f16_portable(h, f)
    ok = ~np.isnan(hf)
    assert np.array_equal(a[ok].view(np.uint32), hf[ok].astype(np.float32).view(np.uint32))
    assert np.all(np.isnan(a[~ok]))
    with np.errstate(over="ignore"):
        assert np.array_equal(b, f.astype(np.float16).view(np.uint16))
    nan = np.float32([np.nan, -np.nan]).view(np.uint32) | np.uint32(0x12345 << 3)
    _, bn = _f16_portable(h[:0], nan.view(np.float32))
    want = np.uint16(0x7E00) | ((nan >> 13) & 0x3FF).astype(np.uint16) | ((nan >> 16) & 0x8000).astype(np.uint16)
    assert np.array_equal(bn, want)


def test_x_aux_q8_0():
    rng = np.random.default_rng(9)
    xq = _quantize_q8_0(rng.standard_normal((3, 256)).astype(np.float32))
    xc = np.empty((3, 8, dots_q8_0.AUX_WORDS), np.int32)
    ql.x_aux_q8_0(xc, xq, np.int32(16))
    blocks = xq.reshape(3, 8, 34)
    q = blocks[..., 2:].view(np.int8).astype(np.int32)
    assert np.array_equal(xc[..., 0], -16 * q.sum(-1))
    dx = blocks[..., :2].copy().view(np.float16).astype(np.float32)  # [3, 8, 1]
    assert _bits_equal(xc[..., 1:].copy().view(np.float32), dx)


# -------------------------------------------------------------------------------- registry


def test_registry_sizes_match_gguf():
    assert {q.name for q in SUPPORTED_TYPES.values()} == {
        "F32", "F16", "BF16", "Q8_0", "Q4_0", "Q5_0", "Q4_K", "Q5_K", "Q6_K"}
    for q in SUPPORTED_TYPES.values():
        assert int(T[q.name]) == q.ggml_type
        assert GGML_QUANT_SIZES[T(q.ggml_type)] == (q.block_size, q.type_size)
        assert get_qtype(q.ggml_type) is q
    assert get_qtype(T.Q4_0).dot_type == "Q8_0" and get_qtype(T.Q6_K).dot_type == "Q8_K"
    assert row_bytes(T.Q4_0, 4096) == 4096 // 32 * 18 and row_bytes(T.F16, 7) == 14


def test_registry_errors():
    with pytest.raises(UnsupportedError, match=r"tensor type Q2_K is not supported \(supported: F32, F16"):
        get_qtype(T.Q2_K)
    with pytest.raises(UnsupportedError, match="not supported"):
        get_qtype(9999)
    with pytest.raises(InvalidArgumentError):
        row_bytes(T.Q4_0, 48)
    with pytest.raises(InvalidArgumentError):
        row_bytes(T.Q6_K, 0)


def test_registry_import_compiles_nothing():
    code = ("import sys, pyrt.formats.qtypes as q; q.get_qtype(2).row_bytes(64); "
            "assert not any(m.startswith('pyrt._kernels') for m in sys.modules), sorted(sys.modules)")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    subprocess.run([sys.executable, "-c", code], check=True, cwd=root)
