"""One token's rows of any quantized weight format, for the fused decode kernels: the Q8_0 family against
the token's Q8_0 row (matmul_q8_0's row dots), the K-quants against its Q8_K row (quants_k's).

Leaf module: numpy, numba and sibling kernel modules only.
"""

import numpy as np
from numba import njit

from .config import FASTMATH
from .matmul_q8_0 import _rows_q
from .ir_k import BLOCK_BYTES_Q8_K, QK_K, is_k_quant
from .quants_k import quantize_rows_q8_k, rows_k1


@njit(cache=True, nogil=True, fastmath=FASTMATH)
def rows_any(kind, w, row0, r0, r1, xq, cp, nb, xk, nbk, dst, pf):
    """dst[r] = dot(w[row0 + r], x) for r in [r0, r1).

    kind: the weights' code (Q8_0/Q4_0/Q5_0: x as the Q8_0 row at address xq with its aux words at cp, nb
    blocks; Q4_K/Q5_K/Q6_K: x as the Q8_K row xk [nbk*292] uint8); w: [rows, row_bytes] uint8; dst: [>= r1]
    f32; pf: prefetch distance in bytes. The same bits as the one-token matmul of each format.
    """
    if is_k_quant(kind):
        rows_k1(kind, w, row0, r0, r1, xk, np.int64(0), nbk, dst)
    else:
        ws = np.int64(w.strides[0])
        _rows_q(kind, np.int64(w.ctypes.data) + row0 * ws, ws, r0, r1, xq, cp, nb, dst, pf)


@njit(cache=True, nogil=True)
def q8_k_rows(x, need):
    """(x [n_rows, n] f32 as Q8_K rows [n_rows, n/256*292] uint8, n/256) where need, else ([n_rows, 292]
    unused, 0): the K-quants' activations, made only when some weight reads them."""
    n_rows, n = x.shape
    if not need:
        return np.empty((n_rows, BLOCK_BYTES_Q8_K), np.uint8), 0
    xk = np.empty((n_rows, n // QK_K * BLOCK_BYTES_Q8_K), np.uint8)
    quantize_rows_q8_k(xk, x)
    return xk, n // QK_K
