"""Rotary position embedding kernels (norm = adjacent pairs, neox = split halves). Leaf: numpy/numba.

The angle table is built once per ubatch (`rope_cache_f32`) and applied to every layer's Q and K.
theta_i = pos * freq_scale * base^(-2i/n_rot) / freq_factor[i], as ggml_rope_ext without YaRN.
"""

import numpy as np
from numba import njit, prange

from .config import FASTMATH


@njit(cache=True, nogil=True, fastmath=FASTMATH)
def rope_cache_f32(cos, sin, pos, freq_base, freq_scale, freq_factors):
    """Angle table for positions `pos`.

    cos, sin: [n_tok, n_rot/2] f32 outputs; pos: [n_tok] int32; freq_factors: [n_rot/2] f32 (ones if unused).
    """
    half = cos.shape[1]
    n_rot = 2 * half
    for t in range(pos.shape[0]):
        p = np.float64(pos[t]) * freq_scale
        for i in range(half):
            theta = p * freq_base ** (-2.0 * i / n_rot) / freq_factors[i]
            cos[t, i] = np.cos(theta)
            sin[t, i] = np.sin(theta)


@njit(cache=True, nogil=True, fastmath=FASTMATH)
def _rope_norm_row(row, cos, sin):
    for i in range(cos.shape[0]):
        c = cos[i]
        s = sin[i]
        x0 = row[2 * i]
        x1 = row[2 * i + 1]
        row[2 * i] = x0 * c - x1 * s
        row[2 * i + 1] = x0 * s + x1 * c


@njit(cache=True, nogil=True, fastmath=FASTMATH)
def _rope_neox_row(row, cos, sin):
    half = cos.shape[0]
    for i in range(half):
        c = cos[i]
        s = sin[i]
        x0 = row[i]
        x1 = row[i + half]
        row[i] = x0 * c - x1 * s
        row[i + half] = x0 * s + x1 * c


@njit(cache=True, nogil=True, fastmath=FASTMATH, parallel=True)
def rope_norm_f32(x, cos, sin):
    """In place, GPT-J style: rotates pairs (x[2i], x[2i+1]) of the first n_rot dims of each head.

    x: [n_tok, n_head, head_dim] f32; cos, sin: [n_tok, n_rot/2] f32.
    """
    n_head = x.shape[1]
    for j in prange(x.shape[0] * n_head):
        t = j // n_head
        _rope_norm_row(x[t, j - t * n_head], cos[t], sin[t])


@njit(cache=True, nogil=True, fastmath=FASTMATH, parallel=True)
def rope_neox_f32(x, cos, sin):
    """In place, NeoX style: rotates pairs (x[i], x[i + n_rot/2]) of the first n_rot dims of each head.

    x: [n_tok, n_head, head_dim] f32; cos, sin: [n_tok, n_rot/2] f32.
    """
    n_head = x.shape[1]
    for j in prange(x.shape[0] * n_head):
        t = j // n_head
        _rope_neox_row(x[t, j - t * n_head], cos[t], sin[t])


@njit(cache=True, nogil=True, fastmath=FASTMATH)
def rope_norm_f32_serial(x, cos, sin):
    """As rope_norm_f32 on the calling thread (small inputs)."""
    for t in range(x.shape[0]):
        for h in range(x.shape[1]):
            _rope_norm_row(x[t, h], cos[t], sin[t])


@njit(cache=True, nogil=True, fastmath=FASTMATH)
def rope_neox_f32_serial(x, cos, sin):
    """As rope_neox_f32 on the calling thread (small inputs)."""
    for t in range(x.shape[0]):
        for h in range(x.shape[1]):
            _rope_neox_row(x[t, h], cos[t], sin[t])
