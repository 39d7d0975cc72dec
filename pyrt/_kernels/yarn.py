"""YaRN rotary angle tables (ggml's rope_yarn): interpolated/extrapolated angles mixed by a ramp, times mscale.

Leaf kernel module (numpy, numba only). The tables feed the existing rope_norm/rope_neox kernels of
pyrt._kernels.rope, so only the angles differ from plain RoPE. Shapes are numpy row-major.
"""

import numpy as np
from numba import njit

from .config import FASTMATH


@njit(cache=True, nogil=True, fastmath=FASTMATH)
def rope_cache_yarn_f32(cos, sin, pos, freq_base, freq_scale, ext_factor, corr_low, corr_high, mscale):
    """YaRN angle table for positions `pos` (ggml_rope_ext with ext_factor != 0 or freq_scale != 1).

    cos, sin: [n_tok, n_rot/2] f32 outputs (already multiplied by mscale); pos: [n_tok] int32.
    theta_extrap = pos * base^(-2i/n_rot); theta_interp = freq_scale * theta_extrap;
    ramp(i) = 1 - clamp((i - corr_low) / max(0.001, corr_high - corr_low), 0, 1);
    theta = theta_interp * (1 - ramp*ext_factor) + theta_extrap * ramp*ext_factor.
    mscale is the final magnitude (ggml's attn_factor times its (1 + 0.1 ln(1/freq_scale)) when ext_factor != 0).
    """
    half = cos.shape[1]
    n_rot = 2 * half
    den = max(0.001, corr_high - corr_low)
    for t in range(pos.shape[0]):
        p = np.float64(pos[t])
        for i in range(half):
            extrap = p * freq_base ** (-2.0 * i / n_rot)
            interp = freq_scale * extrap
            theta = interp
            if ext_factor != 0.0:
                y = (i - corr_low) / den
                y = min(1.0, max(0.0, y))
                mix = (1.0 - y) * ext_factor
                theta = interp * (1.0 - mix) + extrap * mix
            cos[t, i] = np.cos(theta) * mscale
            sin[t, i] = np.sin(theta) * mscale
