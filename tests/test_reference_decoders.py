"""The scalar reference block decoders: bit-exact against gguf-py under numba.njit, and compilable to PTX as
CUDA device functions (cc 8.0 and 9.0) without a GPU."""

import numba
import numpy as np
import pytest
from gguf import GGMLQuantizationType as T
from gguf.quants import dequantize

from pyrt._kernels import reference as ref

SCALE_OFFSETS = {"Q8_0": (0,), "Q4_0": (0,), "Q5_0": (0,), "Q4_K": (0, 2), "Q5_K": (0, 2), "Q6_K": (208,)}


@pytest.fixture(scope="module")
def cpu():
    return ref.specialise(numba.njit)


@numba.njit
def _decode_rows(decode, dst, src, n_blocks, bs, ts):
    for b in range(n_blocks):
        decode(dst, b * bs, src, b * ts)


def random_blocks(name, n_blocks, seed):
    """Random blocks whose f16 scales are any finite f16 (subnormals, zeros and signs included)."""
    rng = np.random.default_rng(seed)
    bs, ts = ref.BLOCK[name]
    w = rng.integers(0, 256, (n_blocks, ts), dtype=np.uint8)
    for off in SCALE_OFFSETS.get(name, ()):
        h = rng.integers(0, 1 << 16, n_blocks, dtype=np.uint16)
        h = np.where((h & 0x7C00) == 0x7C00, h & 0xBFFF, h).astype(np.uint16)  # no inf/nan scales
        h[:4] = np.array([0x0000, 0x8000, 0x0001, 0x7BFF], np.uint16)[: n_blocks]
        w[:, off:off + 2] = h.view(np.uint8).reshape(n_blocks, 2)
    return w.reshape(-1)


def same_bits(a, b):
    a, b = a.view(np.uint32), b.view(np.uint32)
    nan_a = (a & 0x7F800000 == 0x7F800000) & (a & 0x7FFFFF != 0)
    nan_b = (b & 0x7F800000 == 0x7F800000) & (b & 0x7FFFFF != 0)
    return np.array_equal(nan_a, nan_b) and np.array_equal(a[~nan_a], b[~nan_b])


@pytest.mark.parametrize("name", list(ref.BLOCK))
def test_decode_bit_exact_vs_gguf(cpu, name):
    bs, ts = ref.BLOCK[name]
    n_blocks = 4096 if bs == 1 else 64
    src = random_blocks(name, n_blocks, seed=hash(name) % 1000)
    if bs == 1:  # every bit pattern class: zeros, subnormals, inf, nan
        src[:ts * 4] = 0
        src[ts:ts * 2] = 0xFF
    dst = np.full(n_blocks * bs, np.nan, np.float32)
    _decode_rows(cpu.DECODE_BLOCK[name], dst, src, n_blocks, bs, ts)
    want = dequantize(src, T[name]).astype(np.float32).reshape(-1)
    assert want.shape == dst.shape
    assert same_bits(dst, want), f"{name}: {np.flatnonzero(dst.view(np.uint32) != want.view(np.uint32))[:8]}"


def test_f16_conversion_every_value(cpu):
    @numba.njit
    def conv(f, out):
        for h in range(1 << 16):
            out[h] = f(h)
    out = np.empty(1 << 16, np.float32)
    conv(cpu.f16_bits_to_f32, out)
    assert same_bits(out, np.arange(1 << 16, dtype=np.uint16).view(np.float16).astype(np.float32))
    conv(cpu.bf16_bits_to_f32, out)
    assert same_bits(out, (np.arange(1 << 16, dtype=np.uint32) << 16).view(np.float32))


@pytest.mark.parametrize("cc", [(8, 0), (9, 0)])
@pytest.mark.parametrize("name", list(ref.BLOCK))
def test_decoders_compile_to_ptx(name, cc):
    cuda = pytest.importorskip("numba.cuda")
    from numba import types

    from pyrt._kernels.cuda.ptx import compile_for
    u8 = types.Array(types.uint8, 1, "C")
    f32 = types.Array(types.float32, 1, "C")
    dev = ref.specialise(lambda f: cuda.jit(device=True)(f))
    ptx = compile_for(dev.VALUE[name].py_func, (u8, types.int64, types.int64), cc, device=True)
    assert f".target sm_{cc[0]}{cc[1]}" in ptx and ".func" in ptx
    ptx = compile_for(dev.DECODE_BLOCK[name].py_func, (f32, types.int64, u8, types.int64), cc, device=True)
    assert f".target sm_{cc[0]}{cc[1]}" in ptx


def test_f32_to_f16_and_bf16_rounding(cpu):
    @numba.njit
    def conv(f, x, out):
        for i in range(x.shape[0]):
            out[i] = f(x[i])
    rng = np.random.default_rng(3)
    bits = np.concatenate([rng.integers(0, 1 << 32, 200000, dtype=np.uint64).astype(np.uint32),
                           np.arange(0x33000000, 0x33000000 + 20000, dtype=np.uint32),   # f16 subnormal range
                           np.arange(0x477FE000, 0x47800100, dtype=np.uint32),           # around f16 max / inf
                           np.array([0, 0x80000000, 0x7F800000, 0xFF800000, 0x7FC00000, 0x00000001,
                                     0x7F7FFFFF], np.uint32)])
    x = bits.view(np.float32)
    out = np.empty(x.shape[0], np.int64)
    conv(cpu.f32_to_f16_bits, x, out)
    with np.errstate(over="ignore"):
        want = x.astype(np.float16).view(np.uint16).astype(np.int64)
    nan = np.isnan(x)
    assert np.array_equal(out[~nan], want[~nan]) and np.all((out[nan] & 0x7C00) == 0x7C00)
    conv(cpu.f32_to_bf16_bits, x, out)
    u = bits.astype(np.uint64)
    want = ((u + (0x7FFF + ((u >> 16) & 1))) >> 16).astype(np.int64)   # ggml_compute_fp32_to_bf16
    assert np.array_equal(out[~nan], want[~nan]) and np.all(out[nan] == 0x7FC0)


def test_f32_bits_round_trip(cpu):
    @numba.njit
    def conv(f, x, out):
        for i in range(x.shape[0]):
            out[i] = f(x[i])
    rng = np.random.default_rng(4)
    bits = np.concatenate([rng.integers(0, 1 << 32, 100000, dtype=np.uint64).astype(np.uint32),
                           np.array([0, 0x80000000, 0x7F800000, 0xFF800000, 1, 0x807FFFFF], np.uint32)])
    out = np.empty(bits.shape[0], np.int64)
    conv(cpu.f32_to_f32_bits, bits.view(np.float32), out)
    nan = np.isnan(bits.view(np.float32))
    assert np.array_equal(out[~nan], bits[~nan].astype(np.int64)) and np.all(out[nan] == 0x7FC00000)
