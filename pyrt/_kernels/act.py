"""Elementwise activation kernels for gated FFNs. Leaf: numpy/numba.

silu(x) = x / (1 + exp(-x)); gelu uses ggml's tanh approximation.
"""

import numpy as np
from numba import njit, prange

from .config import FASTMATH

GELU_COEF_A = 0.044715
SQRT_2_OVER_PI = 0.79788456080286535587989211986876


@njit(cache=True, nogil=True, fastmath=FASTMATH, parallel=True)
def swiglu_f32(dst, gate, up):
    """dst = silu(gate) * up.  dst, gate, up: [n_tok, n_ff] f32 (dst may alias gate)."""
    for t in prange(gate.shape[0]):
        for i in range(gate.shape[1]):
            g = gate[t, i]
            dst[t, i] = g / (np.float32(1.0) + np.exp(-g)) * up[t, i]


@njit(cache=True, nogil=True, fastmath=FASTMATH, parallel=True)
def geglu_tanh_f32(dst, gate, up):
    """dst = gelu_tanh(gate) * up.  dst, gate, up: [n_tok, n_ff] f32 (dst may alias gate)."""
    for t in prange(gate.shape[0]):
        for i in range(gate.shape[1]):
            g = gate[t, i]
            y = 0.5 * g * (1.0 + np.tanh(SQRT_2_OVER_PI * g * (1.0 + GELU_COEF_A * g * g)))
            dst[t, i] = np.float32(y) * up[t, i]


@njit(cache=True, nogil=True, fastmath=FASTMATH, parallel=True)
def geglu_table_f32(dst, gate, up, idx, table):
    """dst = gelu(gate) * up with gelu from a table indexed by gate's f16 bits (ggml's GGML_GELU_FP16).

    dst, gate, up: [n_tok, n_ff] f32 (dst may alias gate); idx: [n_tok, n_ff] uint16 (f16 bits of gate);
    table: [65536] f32.
    """
    for t in prange(gate.shape[0]):
        for i in range(gate.shape[1]):
            g = gate[t, i]
            if g <= -10.0:
                dst[t, i] = 0.0
            elif g >= 10.0:
                dst[t, i] = g * up[t, i]
            else:
                dst[t, i] = table[idx[t, i]] * up[t, i]
