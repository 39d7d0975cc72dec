"""CUDA kernels of the KV cache: row store (f32, f16, bf16, q8_0), row moves, and flash attention with an
online softmax over the cells in scan order (GQA, causal, sliding window, softcap).

Cache buffers are flat uint8 [size * row_bytes] on the device, in the CPU cache's row formats; element e
of a row is read with the reference decoders. Reductions use shared memory (simulator-safe).
"""

from __future__ import annotations

import math

import numpy as np
from numba import cuda, float32, int32, int64, types, uint8, uint64

from . import ptx
from .dense import NT, f32_2d, f32_3d, i32_1d, u8_1d
from . import device as dev

# Cache row formats by kernel code (the backend maps cache type names through this tuple).
CACHE_KINDS = ("f32", "f16", "bf16", "q8_0")
KIND_F32, KIND_F16, KIND_BF16, KIND_Q8_0 = range(4)
MAX_HEAD_DIM = 1024  # shared-memory rows for one query head and its accumulator


@cuda.jit(device=True)
def cache_value(buf, kind, row, e):
    """Element e of the cache row starting at byte `row`."""
    if kind == KIND_F32:
        return dev.value_f32(buf, row + 4 * e, 0)
    if kind == KIND_F16:
        return dev.value_f16(buf, row + 2 * e, 0)
    if kind == KIND_BF16:
        return dev.value_bf16(buf, row + 2 * e, 0)
    b = e // 32
    return dev.value_q8_0(buf, row + 34 * b, e - 32 * b)


@cuda.jit
def store_rows(dst, row_bytes, col0, cells, src, kind):
    """Write token rows into cache rows: row cells[t] of dst gets src[t] from element col0 on.

    dst [size*row_bytes] uint8; cells [n_tok] int32; src [n_tok, n] f32; kind: CACHE_KINDS index.
    q8_0 (n, col0 multiples of 32): ggml's quantize_row_q8_0_ref (d = amax/127 as f16, q = roundf(x/d)).
    Grid <= n_tok, NT threads.
    """
    n = src.shape[1]
    for t in range(cuda.blockIdx.x, src.shape[0], cuda.gridDim.x):
        _store_row(dst, int64(cells[t]) * row_bytes, col0, src, t, n, kind)


@cuda.jit(device=True)
def _store_row(dst, row, col0, src, t, n, kind):
    """src[t] (n values) into the cache row at byte `row`, from element col0 on; the block's threads share it."""
    if kind == KIND_Q8_0:
        for b in range(cuda.threadIdx.x, n // 32, NT):
            amax = float32(0.0)
            for j in range(32):
                a = abs(src[t, 32 * b + j])
                if a > amax:
                    amax = a
            d = float32(types.float64(amax) / 127.0)
            idv = float32(1.0) / d if d != float32(0.0) else float32(0.0)
            h = dev.f32_to_f16_bits(d)
            o = row + (col0 // 32 + b) * 34
            dst[o] = uint8(h & 0xFF)
            dst[o + 1] = uint8(h >> 8)
            for j in range(32):
                x0 = types.float64(src[t, 32 * b + j] * idv)
                r = int64(math.floor(abs(x0) + 0.5))
                if x0 < 0:
                    r = -r
                dst[o + 2 + j] = uint8(r & 0xFF)
        return
    for i in range(cuda.threadIdx.x, n, NT):
        x = src[t, i]
        if kind == KIND_F32:
            bits = dev.f32_to_f32_bits(x)
            o = row + 4 * (col0 + i)
            dst[o] = uint8(bits & 0xFF)
            dst[o + 1] = uint8((bits >> 8) & 0xFF)
            dst[o + 2] = uint8((bits >> 16) & 0xFF)
            dst[o + 3] = uint8((bits >> 24) & 0xFF)
        else:
            h = dev.f32_to_f16_bits(x) if kind == KIND_F16 else dev.f32_to_bf16_bits(x)
            o = row + 2 * (col0 + i)
            dst[o] = uint8(h & 0xFF)
            dst[o + 1] = uint8(h >> 8)


@cuda.jit
def move_rows(buf, row_bytes, src, dst):
    """Copy cache row src[j] to row dst[j] (a defrag plan: sources and destinations never overlap).
    buf [size*row_bytes] uint8; src, dst [n] int32. Grid <= n, NT threads."""
    for j in range(cuda.blockIdx.x, src.shape[0], cuda.gridDim.x):
        a = int64(src[j]) * row_bytes
        b = int64(dst[j]) * row_bytes
        for i in range(cuda.threadIdx.x, row_bytes, NT):
            buf[b + i] = buf[a + i]


@cuda.jit
def flash_attn(out, q, k, v, kind_k, kind_v, rb_k, rb_v, v_off, n_head_kv, kv_idx, c_pos, c_seq, q_pos, q_seq,
               scale, n_swa, softcap):
    """Attention of one query head over the visible cells, online softmax in tiles of NT cells.

    out [n_tok, n_head, dv] f32; q [n_tok, n_head, dk] f32; k, v: cache buffers [size*rb] uint8 (v may be
    k, read at element v_off); kv_idx [n_vis] int32 cells in scan order, c_pos [n_vis] int32 and c_seq
    [n_vis] uint64 their positions and sequence bitsets; q_pos, q_seq [n_tok] int32. A cell is seen when
    it holds the query's sequence, cell_pos <= q_pos and (n_swa == 0 or q_pos - cell_pos < n_swa).
    Score: s*scale, or softcap*tanh(s*scale/softcap). Rows that see no cell are zeros.
    Grid (n_tok, n_head), NT threads.
    """
    t = cuda.blockIdx.x
    h = cuda.blockIdx.y
    tid = cuda.threadIdx.x
    n_head = q.shape[1]
    dk = q.shape[2]
    dv = out.shape[2]
    g = h // (n_head // n_head_kv)
    n_vis = kv_idx.shape[0]
    qs = cuda.shared.array(MAX_HEAD_DIM, float32)
    acc = cuda.shared.array(MAX_HEAD_DIM, float32)
    ps = cuda.shared.array(NT, float32)
    red = cuda.shared.array(NT, float32)
    for i in range(tid, dk, NT):
        qs[i] = q[t, h, i]
    for i in range(tid, dv, NT):
        acc[i] = float32(0.0)
    neg_inf = float32(-np.inf)
    m = neg_inf
    l = float32(0.0)
    qp = q_pos[t]
    bit = uint64(q_seq[t])
    sc_in = scale / softcap if softcap > float32(0.0) else float32(0.0)
    cuda.syncthreads()
    for c0 in range(0, n_vis, NT):
        j = c0 + tid
        s = neg_inf
        if j < n_vis:
            cp = c_pos[j]
            ok = ((c_seq[j] >> bit) & uint64(1)) == uint64(1) and cp <= qp
            if n_swa > 0 and qp - cp >= n_swa:
                ok = False
            if ok:
                row = int64(kv_idx[j]) * rb_k
                dot = float32(0.0)
                for i in range(dk):
                    dot += qs[i] * cache_value(k, kind_k, row, g * dk + i)
                if softcap > float32(0.0):
                    s = softcap * math.tanh(dot * sc_in)
                else:
                    s = dot * scale
        red[tid] = s
        cuda.syncthreads()
        w = NT // 2
        while w > 0:
            if tid < w and red[tid + w] > red[tid]:
                red[tid] = red[tid + w]
            cuda.syncthreads()
            w //= 2
        smax = red[0]
        cuda.syncthreads()
        if smax == neg_inf:
            continue
        m_new = smax if smax > m else m
        alpha = math.exp(m - m_new) if m != neg_inf else float32(0.0)
        p = math.exp(s - m_new) if s != neg_inf else float32(0.0)
        ps[tid] = p
        red[tid] = p
        cuda.syncthreads()
        w = NT // 2
        while w > 0:
            if tid < w:
                red[tid] += red[tid + w]
            cuda.syncthreads()
            w //= 2
        l = l * alpha + red[0]
        m = m_new
        nc = min(NT, n_vis - c0)
        for i in range(tid, dv, NT):
            a = acc[i] * alpha
            for jj in range(nc):
                pj = ps[jj]
                if pj != float32(0.0):
                    a += pj * cache_value(v, kind_v, int64(kv_idx[c0 + jj]) * rb_v, v_off + g * dv + i)
            acc[i] = a
        cuda.syncthreads()
    inv = float32(1.0) / l if l > float32(0.0) else float32(0.0)
    for i in range(tid, dv, NT):
        out[t, h, i] = acc[i] * inv


ptx.register("store_rows", store_rows, (u8_1d, int64, int64, i32_1d, f32_2d, int32))
ptx.register("move_rows", move_rows, (u8_1d, int64, i32_1d, i32_1d))
ptx.register("flash_attn", flash_attn, (f32_3d, f32_3d, u8_1d, u8_1d, int32, int32, int64, int64, int64, int32,
                                        i32_1d, i32_1d, types.Array(uint64, 1, "C"), i32_1d, i32_1d, float32,
                                        int32, float32))
