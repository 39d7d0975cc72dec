"""Elementwise activation kernels for gated FFNs. Leaf: numpy/numba.

silu(x) = x / (1 + exp(-x)); gelu uses ggml's tanh approximation.
"""

import numpy as np
from numba import njit, prange

from .config import FASTMATH
from .simd import bits_to_f32, f32_to_f16

GELU_COEF_A = 0.044715
SQRT_2_OVER_PI = 0.79788456080286535587989211986876


# exp(x) = 2^n * e^r with n = rint(x / ln 2), r = x - n ln 2 in [-ln2/2, ln2/2] (ln 2 split in a high
# part exact in f32 and a low part, evaluated without reassociation), e^r by its degree-7 Taylor
# polynomial (truncation < 6e-9), 2^n built in the exponent bits. Arithmetic and a bitcast only, so LLVM
# vectorizes the loops that use it (libm's scalar expf does not: SwiGLU of 8448 values 28 -> 3 us);
# error < 1 ulp against float64 on normal results. error_model="numpy": Python's zero-division check
# on `/` would keep the callers' loops scalar.
EXP_LOG2E = 1.4426950408889634
EXP_LN2_HI = 0.693145751953125       # 11 significant bits: n * LN2_HI is exact for |n| < 2^13
EXP_LN2_LO = 1.4286068203094173e-06
EXP_X_MIN = -87.33654                # e^x below the smallest normal f32: returns 0
EXP_X_MAX = 88.02969                 # keeps n <= 127 (e^x up to ~1.6e38; the caller's results are finite)


@njit(cache=True, nogil=True, fastmath={"contract", "nsz"}, error_model="numpy")
def exp_f32(x):
    """e^x for float32 x (see above); 0 below EXP_X_MIN, e^EXP_X_MAX above EXP_X_MAX."""
    xc = min(max(x, np.float32(EXP_X_MIN)), np.float32(EXP_X_MAX))
    n = np.rint(xc * np.float32(EXP_LOG2E))
    r = (xc - n * np.float32(EXP_LN2_HI)) - n * np.float32(EXP_LN2_LO)
    p = np.float32(1.0 / 5040.0)
    p = p * r + np.float32(1.0 / 720.0)
    p = p * r + np.float32(1.0 / 120.0)
    p = p * r + np.float32(1.0 / 24.0)
    p = p * r + np.float32(1.0 / 6.0)
    p = p * r + np.float32(0.5)
    p = p * r + np.float32(1.0)
    p = p * r + np.float32(1.0)
    v = p * bits_to_f32((np.int32(n) + np.int32(127)) << np.int32(23))
    return v if x > np.float32(EXP_X_MIN) else np.float32(0.0)


# Where dst is gate, LLVM's runtime overlap check sends a fused loop to its scalar version (6x slower):
# rows are computed into a scratch row, which aliases nothing, and copied.
@njit(cache=True, nogil=True, fastmath=FASTMATH, error_model="numpy")
def _swiglu_into(dst, gate, up):
    """dst = silu(gate) * up for 1-d arrays; vectorized only where dst overlaps neither input."""
    for i in range(gate.shape[0]):
        g = gate[i]
        dst[i] = g / (np.float32(1.0) + exp_f32(-g)) * up[i]


@njit(cache=True, nogil=True, fastmath=FASTMATH)
def _swiglu_row(dst, gate, up, tmp):
    """_swiglu_into through tmp (at least gate's length): dst may be gate."""
    n = gate.shape[0]
    _swiglu_into(tmp[:n], gate, up)
    dst[:] = tmp[:n]


@njit(cache=True, nogil=True, fastmath=FASTMATH, parallel=True)
def swiglu_f32(dst, gate, up):
    """dst = silu(gate) * up.  dst, gate, up: [n_tok, n_ff] f32 (dst may alias gate)."""
    n_tok, n = gate.shape
    n_chunk = min(n_tok, 64)
    for c in prange(n_chunk):
        tmp = np.empty(n, np.float32)
        for t in range(c * n_tok // n_chunk, (c + 1) * n_tok // n_chunk):
            _swiglu_row(dst[t], gate[t], up[t], tmp)


@njit(cache=True, nogil=True, fastmath=FASTMATH)
def swiglu_f32_serial(dst, gate, up):
    """As swiglu_f32 on the calling thread (small inputs)."""
    tmp = np.empty(gate.shape[1], np.float32)
    for t in range(gate.shape[0]):
        _swiglu_row(dst[t], gate[t], up[t], tmp)


@njit(cache=True, nogil=True, fastmath=FASTMATH)
def _geglu_table_row(dst, gate, up, table):
    for i in range(gate.shape[0]):
        g = gate[i]
        if g <= -10.0:
            dst[i] = 0.0
        elif g >= 10.0:
            dst[i] = g * up[i]
        else:
            dst[i] = table[f32_to_f16(g)] * up[i]


@njit(cache=True, nogil=True, fastmath=FASTMATH, parallel=True)
def geglu_table_f32(dst, gate, up, table):
    """dst = gelu(gate) * up with gelu from a table indexed by gate's f16 bits (ggml's GGML_GELU_FP16:
    gate rounded to f16, nearest even).

    dst, gate, up: [n_tok, n_ff] f32 (dst may alias gate); table: [65536] f32.
    """
    for t in prange(gate.shape[0]):
        _geglu_table_row(dst[t], gate[t], up[t], table)


@njit(cache=True, nogil=True, fastmath=FASTMATH)
def geglu_table_f32_serial(dst, gate, up, table):
    """As geglu_table_f32 on the calling thread (small inputs)."""
    for t in range(gate.shape[0]):
        _geglu_table_row(dst[t], gate[t], up[t], table)
