"""Elementwise activation kernels for gated FFNs. Leaf: numpy/numba.

silu(x) = x / (1 + exp(-x)); gelu uses ggml's tanh approximation.
"""

import numpy as np
from numba import njit, prange

from .config import FASTMATH

GELU_COEF_A = 0.044715
SQRT_2_OVER_PI = 0.79788456080286535587989211986876


@njit(cache=True, nogil=True, fastmath=FASTMATH)
def _swiglu_row(dst, gate, up):
    for i in range(gate.shape[0]):
        g = gate[i]
        dst[i] = g / (np.float32(1.0) + np.exp(-g)) * up[i]


@njit(cache=True, nogil=True, fastmath=FASTMATH, parallel=True)
def swiglu_f32(dst, gate, up):
    """dst = silu(gate) * up.  dst, gate, up: [n_tok, n_ff] f32 (dst may alias gate)."""
    for t in prange(gate.shape[0]):
        _swiglu_row(dst[t], gate[t], up[t])


@njit(cache=True, nogil=True, fastmath=FASTMATH)
def swiglu_f32_serial(dst, gate, up):
    """As swiglu_f32 on the calling thread (small inputs)."""
    for t in range(gate.shape[0]):
        _swiglu_row(dst[t], gate[t], up[t])


@njit(cache=True, nogil=True, fastmath=FASTMATH)
def _geglu_table_row(dst, gate, up, idx, table):
    for i in range(gate.shape[0]):
        g = gate[i]
        if g <= -10.0:
            dst[i] = 0.0
        elif g >= 10.0:
            dst[i] = g * up[i]
        else:
            dst[i] = table[idx[i]] * up[i]


@njit(cache=True, nogil=True, fastmath=FASTMATH, parallel=True)
def geglu_table_f32(dst, gate, up, idx, table):
    """dst = gelu(gate) * up with gelu from a table indexed by gate's f16 bits (ggml's GGML_GELU_FP16).

    dst, gate, up: [n_tok, n_ff] f32 (dst may alias gate); idx: [n_tok, n_ff] uint16 (f16 bits of gate);
    table: [65536] f32.
    """
    for t in prange(gate.shape[0]):
        _geglu_table_row(dst[t], gate[t], up[t], idx[t], table)


@njit(cache=True, nogil=True, fastmath=FASTMATH)
def geglu_table_f32_serial(dst, gate, up, idx, table):
    """As geglu_table_f32 on the calling thread (small inputs)."""
    for t in range(gate.shape[0]):
        _geglu_table_row(dst[t], gate[t], up[t], idx[t], table)
