"""Normalization kernels (RMSNorm, LayerNorm-free). Leaf module: numpy/numba only.

RMSNorm follows ggml: the sum of squares is accumulated in float64, the scale is 1/sqrt(mean + eps).
"""

import numpy as np
from numba import njit, prange

from .config import FASTMATH


@njit(cache=True, nogil=True, fastmath=FASTMATH)
def _rms_row(dst, x, w, eps):
    n = x.shape[0]
    s = 0.0
    for i in range(n):
        v = np.float64(x[i])
        s += v * v
    scale = np.float32(1.0 / np.sqrt(s / n + eps))
    for i in range(n):
        dst[i] = (x[i] * scale) * w[i]


@njit(cache=True, nogil=True, fastmath=FASTMATH, parallel=True)
def rms_norm_f32(dst, x, w, eps):
    """dst = rmsnorm(x) * w, row-wise.

    dst: [n_rows, n] f32 (may alias x); x: [n_rows, n] f32; w: [n] f32; eps: float.
    """
    for r in prange(x.shape[0]):
        _rms_row(dst[r], x[r], w, eps)


@njit(cache=True, nogil=True, fastmath=FASTMATH, parallel=True)
def rms_norm_heads_f32(x, w, eps):
    """In-place per-head RMSNorm (QK-norm): x[t, h, :] = rmsnorm(x[t, h, :]) * w.

    x: [n_tok, n_head, head_dim] f32; w: [head_dim] f32.
    """
    n_tok, n_head = x.shape[0], x.shape[1]
    for i in prange(n_tok * n_head):
        t = i // n_head
        h = i - t * n_head
        _rms_row(x[t, h], x[t, h], w, eps)


@njit(cache=True, nogil=True, fastmath=FASTMATH)
def rms_norm_f32_serial(dst, x, w, eps):
    """As rms_norm_f32 on the calling thread (small inputs: a parallel launch costs more than the work)."""
    for r in range(x.shape[0]):
        _rms_row(dst[r], x[r], w, eps)


@njit(cache=True, nogil=True, fastmath=FASTMATH)
def rms_norm_heads_f32_serial(x, w, eps):
    """As rms_norm_heads_f32 on the calling thread."""
    for t in range(x.shape[0]):
        for h in range(x.shape[1]):
            _rms_row(x[t, h], x[t, h], w, eps)
