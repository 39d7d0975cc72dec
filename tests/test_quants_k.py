"""k-quant kernels: dequant bit-exact vs gguf-py, Q8_K quantization bit-exact vs llama.cpp's reference (numpy
transcription, and libggml when llama-cpp-python is installed), matmuls vs float64 references."""

import ctypes
import glob
import os

import numba
import numpy as np
import pytest
from gguf import GGMLQuantizationType as T
from gguf.quants import dequantize

from pyrt._kernels import quants_k as qk
from pyrt._kernels import tiles_k

TYPES = {
    "q4_k": (T.Q4_K, qk.BLOCK_BYTES_Q4_K, qk.dequant_rows_q4_k, qk.matmul_q4_k, qk.KIND_Q4_K),
    "q5_k": (T.Q5_K, qk.BLOCK_BYTES_Q5_K, qk.dequant_rows_q5_k, qk.matmul_q5_k, qk.KIND_Q5_K),
    "q6_k": (T.Q6_K, qk.BLOCK_BYTES_Q6_K, qk.dequant_rows_q6_k, qk.matmul_q6_k, qk.KIND_Q6_K),
}
Q8K = qk.BLOCK_BYTES_Q8_K
TILED = ["q4_k", "q5_k", "q6_k"]  # the formats with prompt tiles (tiles_k.matmul_k_tiles)


def rand_blocks(name, n_rows, n_in, seed, edge=False):
    """Random k-quant rows [n_rows, n_in/256*bb] uint8 with sane f16 scales; edge=True plants extreme values."""
    rng = np.random.default_rng(seed)
    _, bb, _, _, _ = TYPES[name]
    nb = n_in // 256
    w = rng.integers(0, 256, (n_rows, nb, bb), dtype=np.uint8)
    n_d = 1 if name == "q6_k" else 2
    d = rng.uniform(1e-3, 2e-2, (n_rows, nb, n_d)) * rng.choice([-1.0, 1.0], (n_rows, nb, n_d))
    d = d.astype(np.float16)
    if edge:
        flat = d.reshape(-1)
        specials = np.array([0.0, -0.0, 65504.0, -65504.0, 6e-8, -6e-8, 6.1e-5, 1e-6], np.float16)
        flat[: len(specials)] = specials[: len(flat)]
        w[0, 0, :] = 0xFF
        if nb > 1:
            w[0, 1, :] = 0x00
    d = d.view(np.uint8).reshape(n_rows, nb, 2 * n_d)
    if name == "q6_k":
        w[..., 208:210] = d
    else:
        w[..., 0:4] = d
    return np.ascontiguousarray(w.reshape(n_rows, nb * bb))


def dequant_q8_k_f64(xq):
    """[n, nb*292] uint8 Q8_K rows -> [n, nb*256] float64."""
    b = xq.reshape(xq.shape[0], -1, Q8K)
    d = np.ascontiguousarray(b[..., 0:4]).view(np.float32).astype(np.float64)
    qs = b[..., 4:260].view(np.int8).astype(np.float64)
    return (d * qs).reshape(xq.shape[0], -1)


def quantize_q8_k_ref(x):
    """Plain numpy transcription of llama.cpp quantize_row_q8_K_ref, for f32 rows [n, k] -> [n, k/256*292] uint8."""
    n, k = x.shape
    out = np.zeros((n, k // 256, Q8K), np.uint8)
    for r in range(n):
        for b in range(k // 256):
            blk = x[r, 256 * b : 256 * (b + 1)].astype(np.float32)
            amax = np.float32(0.0)
            mx = np.float32(0.0)
            for v in blk:  # first strictly larger |x| wins
                if abs(v) > amax:
                    amax = np.float32(abs(v))
                    mx = v
            if amax == 0:
                continue
            iscale = np.float32(np.float32(-127.0) / mx)
            prod = (iscale * blk).astype(np.float32)
            val = (prod + np.float32(12582912.0)).astype(np.float32)
            q = (val.view(np.int32) & 0x007FFFFF) - 0x00400000
            q = np.minimum(127, q).astype(np.int8)
            bsums = q.astype(np.int32).reshape(16, 16).sum(axis=1).astype(np.int16)
            out[r, b, 0:4] = np.array([np.float32(1.0) / iscale], np.float32).view(np.uint8)
            out[r, b, 4:260] = q.view(np.uint8)
            out[r, b, 260:292] = bsums.view(np.uint8)
    return out.reshape(n, -1)


def q8k(x):
    xq = np.empty((x.shape[0], x.shape[1] // 256 * Q8K), np.uint8)
    qk.quantize_rows_q8_k(xq, x)
    return xq


# ------------------------------------------------------------------------------------------------ dequant


@pytest.mark.boundscheck
@pytest.mark.parametrize("name", list(TYPES))
def test_dequant_bit_exact(name):
    ty, _, deq, _, _ = TYPES[name]
    for seed, edge in ((1, False), (2, True)):
        w = rand_blocks(name, 5, 768, seed, edge)
        ref = dequantize(w, ty)
        out = np.empty((5, 768), np.float32)
        deq(out, w)
        np.testing.assert_array_equal(out.view(np.uint32), ref.view(np.uint32))


@pytest.mark.parametrize("name", list(TYPES))
def test_readonly_memmap_and_row_range(name, tmp_path):
    ty, _, deq, matmul, _ = TYPES[name]
    w = rand_blocks(name, 7, 512, 3)
    path = tmp_path / "w.bin"
    header = 24  # tensor data inside a file at an offset, as in a GGUF
    with open(path, "wb") as f:
        f.write(b"\0" * header)
        f.write(w.tobytes())
    mm = np.memmap(path, dtype=np.uint8, mode="r", offset=header, shape=w.shape)
    assert not mm.flags.writeable
    ref = dequantize(w, ty)
    out = np.empty((7, 512), np.float32)
    deq(out, mm)
    np.testing.assert_array_equal(out, ref)
    tile = np.empty((3, 512), np.float32)  # a row range into a preallocated tile
    deq(tile, mm[2:5])
    np.testing.assert_array_equal(tile, ref[2:5])
    xq = q8k(np.random.default_rng(8).standard_normal((2, 512)).astype(np.float32))
    got = np.empty((2, 7), np.float32)
    want = np.empty((2, 7), np.float32)
    matmul(got, mm, xq)
    matmul(want, w, xq)
    np.testing.assert_array_equal(got, want)


def test_dequant_shape_mismatch():
    w = rand_blocks("q4_k", 2, 512, 4)
    with pytest.raises(ValueError):
        qk.dequant_rows_q4_k(np.empty((2, 256), np.float32), w)


# ------------------------------------------------------------------------------------------------ Q8_K


def _q8k_inputs():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((4, 1024)).astype(np.float32)
    x[0, 256:512] = 0.0  # all-zero block
    x[1, :256] = rng.integers(-126, 126, 256) + 0.5  # ties after scaling by iscale = 1: round half to even
    x[1, 17] = -127.0
    x[1, 300] = 1e30  # huge max, most quants 0
    x[2, 512:768] *= 1e-30  # tiny values
    x[3, 768:] = rng.choice([-2.0, 2.0], 256).astype(np.float32)  # |max| ties: first one wins
    return x


@pytest.mark.boundscheck
def test_quantize_q8_k_bit_exact():
    x = _q8k_inputs()
    got = q8k(x)
    np.testing.assert_array_equal(got, quantize_q8_k_ref(x))
    b = got.reshape(4, 4, Q8K)
    qs = b[..., 4:260].view(np.int8)
    assert qs.min() >= -127 and qs.max() <= 127
    np.testing.assert_array_equal(b[1, 0, 4 + 17 : 4 + 18].view(np.int8), [-127])


def test_quantize_q8_k_parallel_same_bytes():
    x = np.random.default_rng(4).standard_normal((37, 512)).astype(np.float32)
    x[5] = 0.0
    par = np.empty((37, 2 * Q8K), np.uint8)
    qk.quantize_rows_q8_k_par(par, x)
    assert np.array_equal(par, q8k(x))


def test_quantize_q8_k_shape_mismatch():
    with pytest.raises(ValueError):
        qk.quantize_rows_q8_k(np.empty((1, 292), np.uint8), np.zeros((1, 300), np.float32))


# ------------------------------------------------------------------------------------------------ matmul


@pytest.mark.parametrize("name", list(TYPES))
@pytest.mark.parametrize("n_tok", [1, 3, 17])
def test_matmul_vs_f64(name, n_tok):
    ty, _, _, mm, _ = TYPES[name]
    n_out, n_in = 37, 768  # 37: a partial row tile
    w = rand_blocks(name, n_out, n_in, 10 + n_tok)
    wd = dequantize(w, ty).astype(np.float64)
    x = np.random.default_rng(20 + n_tok).standard_normal((n_tok, n_in)).astype(np.float32)
    xq = q8k(x)
    dst = np.full((n_tok, n_out), np.nan, np.float32)
    mm(dst, w, xq)
    ref = dequant_q8_k_f64(xq) @ wd.T
    scale = np.abs(dequant_q8_k_f64(xq)) @ np.abs(wd).T  # error bound relative to the sum of |terms|
    assert np.all(np.abs(dst - ref) <= 1e-5 * scale + 1e-30)
    ref_x = x.astype(np.float64) @ wd.T
    nmse = np.sum((dst - ref_x) ** 2) / np.sum(ref_x**2)
    assert nmse < 2e-3


@pytest.mark.boundscheck
@pytest.mark.parametrize("name", list(TYPES))
def test_matmul_portable_path_matches(name):
    """The SIMD row dot (and for Q4_K/Q5_K the prompt tiles) against the same kernels in portable IR."""
    _, _, _, _, kind = TYPES[name]
    w = rand_blocks(name, 19, 512, 30, edge=True)
    xq = q8k(np.random.default_rng(31).standard_normal((8, 512)).astype(np.float32))
    pairs = [(qk.matmul_k, qk._matmul_k_portable)]
    if name in TILED:
        pairs.append((qk.matmul_k_tiles, tiles_k.serial_tiles(False)))
    for simd, portable in pairs:
        a = np.empty((8, 19), np.float32)
        b = np.empty((8, 19), np.float32)
        simd(a, w, xq, kind)
        portable(b, w, xq, kind)
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5 * np.nanmax(np.abs(a)))


@pytest.mark.parametrize("name", list(TYPES))
@pytest.mark.parametrize("n_tok", [1, 4, 6])
@pytest.mark.parametrize("n_in", [256, 1024, 1280])
def test_row_dot_bits_equal_portable(name, n_tok, n_in):
    """The target's row dots (Q4_K on 512-bit vectors, two blocks a step, where the CPU has AVX-512BW; 256-bit
    AVX2 otherwise) give the portable IR's bits: each block's integer sums are exact, and both fold them into f32
    in one order. Rows of 1, 4 and 5 blocks (an odd block after the pairs); one token dots 29 rows in pairs and
    the odd last one alone (rows_k1)."""
    _, _, _, _, kind = TYPES[name]
    w = rand_blocks(name, 29, n_in, 50 + n_tok, edge=True)
    xq = q8k(np.random.default_rng(51 + n_tok).standard_normal((n_tok, n_in)).astype(np.float32))
    a = np.empty((n_tok, 29), np.float32)
    b = np.empty((n_tok, 29), np.float32)
    qk.matmul_k(a, w, xq, kind)
    qk._matmul_k_portable(b, w, xq, kind)
    np.testing.assert_array_equal(a, b)


@pytest.mark.skipif(numba.config.NUMBA_NUM_THREADS < 2, reason="needs 2 Numba threads")
@pytest.mark.parametrize("name", list(TYPES))
def test_matmul_thread_count_independent(name):
    _, _, _, mm, _ = TYPES[name]
    w = rand_blocks(name, 70, 512, 40)
    xq = q8k(np.random.default_rng(41).standard_normal((5, 512)).astype(np.float32))
    outs = []
    old = numba.get_num_threads()
    try:
        for n in (1, 2):
            numba.set_num_threads(n)
            d = np.empty((5, 70), np.float32)
            mm(d, w, xq)
            outs.append(d)
    finally:
        numba.set_num_threads(old)
    np.testing.assert_array_equal(outs[0], outs[1])


@pytest.mark.parametrize("name", list(TYPES))
def test_matmul_batch_equals_single_tokens(name):
    """Tokens dotted 4 at a time give bit-identical rows to the same tokens one by one (prefill == decode)."""
    _, _, _, mm, _ = TYPES[name]
    w = rand_blocks(name, 21, 512, 70)
    xq = q8k(np.random.default_rng(71).standard_normal((6, 512)).astype(np.float32))
    batch = np.empty((6, 21), np.float32)
    mm(batch, w, xq)
    for t in range(6):
        one = np.empty((1, 21), np.float32)
        mm(one, w, xq[t : t + 1])
        np.testing.assert_array_equal(one[0], batch[t])


@pytest.mark.boundscheck
@pytest.mark.parametrize("name", TILED)
@pytest.mark.parametrize("n_out,n_tok", [(37, 2), (37, 5), (8, 4), (70, 17), (3, 9)])
def test_tiles_same_bits_as_row_dot(name, n_out, n_tok):
    """The 8-row prompt tiles (partial row groups, token tails) give the row dot's bits, and are near the f64 sums."""
    ty, _, _, _, kind = TYPES[name]
    n_in = 768
    w = rand_blocks(name, n_out, n_in, 80 + n_tok, edge=True)
    xq = q8k(np.random.default_rng(81 + n_tok).standard_normal((n_tok, n_in)).astype(np.float32))
    tiles = np.full((n_tok, n_out), np.nan, np.float32)
    dots = np.full((n_tok, n_out), np.nan, np.float32)
    qk.matmul_k_tiles(tiles, w, xq, kind)
    qk.matmul_k(dots, w, xq, kind)
    np.testing.assert_array_equal(tiles, dots)
    wd = dequantize(w, ty).astype(np.float64)
    fin = np.all(np.isfinite(wd), axis=1)
    ref = dequant_q8_k_f64(xq) @ wd[fin].T
    scale = np.abs(dequant_q8_k_f64(xq)) @ np.abs(wd[fin]).T
    assert np.all(np.abs(tiles[:, fin] - ref) <= 1e-5 * scale + 1e-30)


@pytest.mark.parametrize("name", TILED)
@pytest.mark.parametrize("mode", tiles_k.MODES, ids=str)
@pytest.mark.parametrize("extreme", [False, True])
def test_every_tile_mode_gives_the_row_dots_bits(name, mode, extreme):
    """Each tile mode the host can run (vpdpbusd, AVX2 pmaddubsw, portable IR; the modes the CPU lacks are not
    listed) gives the row dot's bits: random rows with edge values, and all quants at their maximum against
    activations at -127 (the largest partial sums of every mode)."""
    _, bb, _, _, kind = TYPES[name]
    w = rand_blocks(name, 19, 768, 95, edge=True)
    x = np.random.default_rng(96).standard_normal((8, 768)).astype(np.float32)
    if extreme:
        blk = w.reshape(19, 3, bb)
        if name == "q6_k":
            blk[:, :, 0:192] = 0xFF
            blk[:, :, 192:208] = 127
        else:
            blk[:, :, 4:] = 0xFF
        x = -np.ones((8, 768), np.float32)
    xq = q8k(x)
    tiles = np.full((8, 19), np.nan, np.float32)
    dots = np.empty((8, 19), np.float32)
    tiles_k.serial_tiles(mode)(tiles, w, xq, kind)
    qk.matmul_k(dots, w, xq, kind)
    np.testing.assert_array_equal(tiles, dots)


@pytest.mark.boundscheck
@pytest.mark.parametrize("name", TILED)
def test_tiles_extreme_sums(name):
    """All quants at their maximum against activations at -127 (Q8_K's extreme): the largest 16-bit partial sums
    of a tile."""
    ty, bb, _, _, kind = TYPES[name]
    w = rand_blocks(name, 16, 512, 90)
    blk = w.reshape(16, 2, bb)
    if name == "q6_k":
        blk[:, :, 0:192] = 0xFF  # quants 63
        blk[:, :, 192:208] = 127  # int8 scales
    else:
        blk[:, :, 4:] = 0xFF  # scales, mins (63) and quants (15 / 31) at their maximum
    xq = q8k(-np.ones((8, 512), np.float32))
    assert np.all(xq.reshape(8, 2, Q8K)[:, :, 4:260].view(np.int8) == -127)
    tiles = np.empty((8, 16), np.float32)
    dots = np.empty((8, 16), np.float32)
    qk.matmul_k_tiles(tiles, w, xq, kind)
    qk.matmul_k(dots, w, xq, kind)
    np.testing.assert_array_equal(tiles, dots)
    ref = dequant_q8_k_f64(xq) @ dequantize(w, ty).astype(np.float64).T
    np.testing.assert_allclose(tiles, ref, rtol=1e-6)


def test_tiles_shape_mismatch():
    w = rand_blocks("q4_k", 8, 512, 94)
    with pytest.raises(ValueError):
        qk.matmul_k_tiles(np.empty((2, 8), np.float32), w, q8k(np.zeros((2, 256), np.float32)), qk.KIND_Q4_K)
    with pytest.raises(ValueError):
        qk.matmul_k_tiles(np.empty((2, 8), np.float32), w, q8k(np.zeros((2, 512), np.float32)), 0)


def test_matmul_rejects_non_contiguous_weights():
    w = rand_blocks("q4_k", 4, 512, 72)
    wide = np.zeros((4, 2 * w.shape[1]), np.uint8)
    wide[:, : w.shape[1]] = w
    xq = q8k(np.zeros((1, 512), np.float32))
    with pytest.raises(numba.core.errors.TypingError):
        qk.matmul_q4_k(np.empty((1, 4), np.float32), wide[:, : w.shape[1]], xq)


def test_matmul_shape_mismatch():
    w = rand_blocks("q6_k", 4, 512, 50)
    xq = q8k(np.zeros((1, 256), np.float32))
    with pytest.raises(ValueError):
        qk.matmul_q6_k(np.empty((1, 4), np.float32), w, xq)


# ------------------------------------------------------------------------------------------------ libggml oracle


def _libggml():
    try:
        import llama_cpp
    except Exception:
        return None
    libdir = os.path.join(os.path.dirname(llama_cpp.__file__), "lib")
    paths = sorted(glob.glob(os.path.join(libdir, "libggml-cpu.so*")))
    if not paths:
        return None
    try:
        lib = ctypes.CDLL(paths[0])
        lib.ggml_cpu_init()
        return lib
    except (OSError, AttributeError):
        return None


@pytest.mark.oracle
@pytest.mark.parametrize("name", list(TYPES))
def test_against_libggml(name):
    lib = _libggml()
    if lib is None:
        pytest.skip("llama-cpp-python (libggml-cpu) not installed")
    vp = ctypes.c_void_p
    qrow = lib.quantize_row_q8_K
    qrow.argtypes = [vp, vp, ctypes.c_int64]
    qrow.restype = None
    vdot = getattr(lib, f"ggml_vec_dot_{name[:2]}_K_q8_K")
    vdot.argtypes = [ctypes.c_int, vp, ctypes.c_size_t, vp, ctypes.c_size_t, vp, ctypes.c_size_t, ctypes.c_int]
    vdot.restype = None
    x = np.random.default_rng(60).standard_normal((2, 512)).astype(np.float32)
    x[1, :256] *= 1e3
    ours = q8k(x)
    theirs = np.zeros_like(ours)
    for t in range(2):
        qrow(x[t].ctypes.data, theirs[t].ctypes.data, 512)
    np.testing.assert_array_equal(ours, theirs)
    _, _, _, mm, _ = TYPES[name]
    w = rand_blocks(name, 9, 512, 61)
    dst = np.empty((2, 9), np.float32)
    mm(dst, w, ours)
    s = ctypes.c_float()
    for t in range(2):
        for r in range(9):
            vdot(512, ctypes.addressof(s), 0, w[r].ctypes.data, 0, ours[t].ctypes.data, 0, 1)
            assert abs(dst[t, r] - s.value) <= 1e-5 * max(1.0, abs(s.value)), (t, r, dst[t, r], s.value)
