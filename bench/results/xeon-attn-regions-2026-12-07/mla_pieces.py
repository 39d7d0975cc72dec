"""The absorbed attention's W_UK and W_UV products as separate regions (fused_mla.mla_decode's one-region path,
split), for cold_mla.py and attn_cold.py."""
import numpy as np
from numba import njit, prange
from pyrt._kernels.fused_mla import HEAD_GROUP
from pyrt._kernels.dots_q8_0 import AUX_BYTES, AUX_WORDS
from pyrt._kernels.kv import Q8_0_BLOCK_BYTES, QK8_0
from pyrt._kernels.matmul_q8_0 import _q_bias, _rows_q, quantize_rows_q8_0, x_aux_q8_0
from pyrt._kernels.ir_k import is_k_quant
from pyrt._kernels.rows import q8_k_rows, rows_any
from pyrt._kernels.simd import PREFETCH_BYTES, prefetch


@njit(parallel=True)
def wuk(out, q_nope, k_b, kb_kind):
    n_head, dn = q_nope.shape
    C = k_b.shape[0] // n_head
    pf = np.int64(PREFETCH_BYTES)
    nbq = dn // QK8_0
    qq = np.empty((n_head, nbq * Q8_0_BLOCK_BYTES), np.uint8)
    quantize_rows_q8_0(qq, q_nope)
    qc = np.empty((n_head, nbq, AUX_WORDS), np.int32)
    x_aux_q8_0(qc, qq, _q_bias(kb_kind))
    kbs = np.int64(k_b.strides[0])
    for g in prange(n_head // HEAD_GROUP):
        for h in range(g * HEAD_GROUP, g * HEAD_GROUP + HEAD_GROUP):
            _rows_q(kb_kind, np.int64(k_b.ctypes.data) + h * C * kbs, kbs, 0, C,
                    np.int64(qq.ctypes.data) + h * np.int64(qq.strides[0]),
                    np.int64(qc.ctypes.data) + h * nbq * AUX_BYTES, np.int64(nbq), out[h], pf)


@njit(parallel=True)
def wuv(dst, o_lat, v_b, v_row0, vb_kind):
    n_head, C = o_lat.shape
    dv = dst.shape[1]
    pf = np.int64(PREFETCH_BYTES)
    nbo = C // QK8_0
    for g in prange(n_head // HEAD_GROUP):
        h0 = g * HEAD_GROUP
        og = o_lat[h0:h0 + HEAD_GROUP]
        oq = np.empty((HEAD_GROUP, nbo * Q8_0_BLOCK_BYTES), np.uint8)
        quantize_rows_q8_0(oq, og)
        oc = np.empty((HEAD_GROUP, nbo, AUX_WORDS), np.int32)
        x_aux_q8_0(oc, oq, _q_bias(vb_kind))
        ok, nbok = q8_k_rows(og, is_k_quant(vb_kind))
        for r in range(HEAD_GROUP):
            rows_any(vb_kind, v_b, v_row0[h0 + r], 0, dv, np.int64(oq.ctypes.data) + r * np.int64(oq.strides[0]),
                     np.int64(oc.ctypes.data) + r * nbo * AUX_BYTES, np.int64(nbo), ok[r], nbok, dst[h0 + r], pf)


@njit(parallel=True)
def wuv_rows(dst, ok, nbok, v_b, v_row0, vb_kind):
    n_head = dst.shape[0]
    dv = dst.shape[1]
    pf = np.int64(PREFETCH_BYTES)
    for g in prange(n_head // HEAD_GROUP):
        h0 = g * HEAD_GROUP
        for r in range(HEAD_GROUP):
            rows_any(vb_kind, v_b, v_row0[h0 + r], 0, dv, 0, 0, 0, ok[h0 + r], nbok, dst[h0 + r], pf)


@njit(parallel=True)
def wuv_pf(dst, ok, nbok, v_b, v_row0, vb_kind, ahead):
    # prefetch the whole group's rows before its dots
    n_head = dst.shape[0]
    dv = dst.shape[1]
    pf = np.int64(PREFETCH_BYTES)
    vbs = np.int64(v_b.strides[0])
    for g in prange(n_head // HEAD_GROUP):
        h0 = g * HEAD_GROUP
        if ahead:
            a0 = np.int64(v_b.ctypes.data) + v_row0[h0] * vbs
            for o in range(0, HEAD_GROUP * dv * vbs, 64):
                prefetch(a0 + o)
        for r in range(HEAD_GROUP):
            rows_any(vb_kind, v_b, v_row0[h0 + r], 0, dv, 0, 0, 0, ok[h0 + r], nbok, dst[h0 + r], pf)
