"""YaRN RoPE on the device (ggml's rope_yarn, NORM pairs): angles computed per (token, pair), rotation in place.

Leaf kernel module (numba.cuda and sibling kernel modules only). The angle formula of
pyrt._kernels.yarn.rope_cache_yarn_f32 (float64 angle, cos/sin times mscale rounded to f32, then the f32
rotation of pyrt._kernels.rope), so the device rows match the CPU rows. Shapes are numpy row-major.
"""

import math

from numba import cuda, float32, float64

from . import device, ptx

THREADS = 128


@device.device_function
def yarn_cos_sin(p, i, n_rot, freq_base, freq_scale, ext_factor, corr_low, corr_high, mscale):
    """(cos, sin) of pair i at position p, times mscale, as f32 (theta mixed by the YaRN ramp)."""
    extrap = float64(p) * freq_base ** (-2.0 * i / n_rot)
    theta = freq_scale * extrap
    if ext_factor != 0.0:
        y = (i - corr_low) / max(0.001, corr_high - corr_low)
        y = min(1.0, max(0.0, y))
        mix = (1.0 - y) * ext_factor
        theta = theta * (1.0 - mix) + extrap * mix
    return float32(math.cos(theta) * mscale), float32(math.sin(theta) * mscale)


@cuda.jit
def rope_cache_yarn(cos, sin, pos, freq_base, freq_scale, ext_factor, corr_low, corr_high, mscale):
    """YaRN angle table: one thread per (token, pair).

    cos, sin [n_tok, n_rot/2] f32 out (times mscale); pos [n_tok] int32; the scalars as
    pyrt._kernels.yarn.rope_cache_yarn_f32 (f64).
    """
    half = cos.shape[1]
    g = cuda.grid(1)
    if g < cos.shape[0] * half:
        t = g // half
        i = g % half
        c, s = yarn_cos_sin(pos[t], i, 2 * half, freq_base, freq_scale, ext_factor, corr_low, corr_high, mscale)
        cos[t, i] = c
        sin[t, i] = s


@cuda.jit
def rope_yarn_norm(x, col0, n_rot, pos, freq_base, freq_scale, ext_factor, corr_low, corr_high, mscale):
    """In-place NORM RoPE (adjacent pairs) with YaRN angles on columns [col0, col0 + n_rot) of every head.

    x [n_tok, n_head, width] f32; col0, n_rot int (n_rot even); pos [n_tok] int32; the scalars as
    rope_cache_yarn. One thread per (token, pair) rotates that pair in every head.
    """
    half = n_rot // 2
    g = cuda.grid(1)
    if g < x.shape[0] * half:
        t = g // half
        i = g % half
        c, s = yarn_cos_sin(pos[t], i, n_rot, freq_base, freq_scale, ext_factor, corr_low, corr_high, mscale)
        j = col0 + 2 * i
        for h in range(x.shape[1]):
            x0 = x[t, h, j]
            x1 = x[t, h, j + 1]
            x[t, h, j] = x0 * c - x1 * s
            x[t, h, j + 1] = x0 * s + x1 * c


def blocks(n: int) -> int:
    """Blocks of THREADS threads that cover n work items."""
    return max(1, (n + THREADS - 1) // THREADS)


ptx.register("yarn.rope_cache_yarn", rope_cache_yarn,
             "void(float32[:, ::1], float32[:, ::1], int32[::1], float64, float64, float64, float64, float64, "
             "float64)")
ptx.register("yarn.rope_yarn_norm", rope_yarn_norm,
             "void(float32[:, :, ::1], int64, int64, int32[::1], float64, float64, float64, float64, float64, "
             "float64)",
             "void(float32[:, :, :], int64, int64, int32[::1], float64, float64, float64, float64, float64, "
             "float64)")
