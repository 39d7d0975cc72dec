"""CUDA kernels of the dense ops: matmul over raw GGUF rows, get_rows, RMSNorm, RoPE, SwiGLU, GELU-tanh,
elementwise add/scale/softcap and row gathers.

Weights are the file's bytes (flat uint8 on the device); element i of a row is decoded by the reference
decoder `value_<type>` (device function), so the GPU reads the same block formats as the CPU. The dot is
f32 weights x f32 activations (no activation quantization). Reductions go through shared memory (the
simulator has no warp shuffles). Per-type matmul/get_rows kernels come from one factory each.
Shapes in numpy (row-major) order.
"""

from __future__ import annotations

import math
import os

from numba import cuda, float32, int32, int64, types, uint8

from .. import reference as ref
from . import ptx
from . import device as dev

# Threads per block of the row kernels (a power of two: tree reductions). The simulator runs each GPU
# thread as a Python thread, so it gets fewer; the kernels stride by NT and compute the same values.
# Kernels loop over their rows (and elements) with a grid stride, so a launch may use fewer blocks than
# rows: GRID_MAX caps the blocks of a launch (the simulator pays milliseconds per block).
_SIM = os.environ.get("NUMBA_ENABLE_CUDASIM", "0") not in ("", "0")
NT = 8 if _SIM else 128
GRID_MAX = 2 if _SIM else 1 << 20
MM_TOK = 4      # tokens per matmul block: each decoded weight value feeds MM_TOK products

f32_1d = types.Array(float32, 1, "C")
f32_2d = types.Array(float32, 2, "C")
f32_3d = types.Array(float32, 3, "C")
u8_1d = types.Array(uint8, 1, "C")
i32_1d = types.Array(int32, 1, "C")


def _make_matmul(value, bs, ts):
    def matmul(out, w, x):
        """out[t, r] = sum_i W[r, i] * x[t, i]. out [n_tok, n_out] f32; w [n_out*row_bytes] uint8; x [n_tok, n_in] f32.
        Grid (<= n_out, ceil(n_tok / MM_TOK)), NT threads."""
        t0 = cuda.blockIdx.y * MM_TOK
        tid = cuda.threadIdx.x
        n_tok = x.shape[0]
        n_in = x.shape[1]
        acc = cuda.local.array(MM_TOK, float32)
        sh = cuda.shared.array((MM_TOK, NT), float32)
        for r in range(cuda.blockIdx.x, out.shape[1], cuda.gridDim.x):
            row = int64(r) * (n_in // bs) * ts
            for tt in range(MM_TOK):
                acc[tt] = float32(0.0)
            for i in range(tid, n_in, NT):
                b = i // bs
                wv = value(w, row + b * ts, i - b * bs)
                for tt in range(MM_TOK):
                    if t0 + tt < n_tok:
                        acc[tt] += wv * x[t0 + tt, i]
            for tt in range(MM_TOK):
                sh[tt, tid] = acc[tt]
            cuda.syncthreads()
            s = NT // 2
            while s > 0:  # all MM_TOK sums in one tree: one barrier per level
                if tid < s:
                    for tt in range(MM_TOK):
                        sh[tt, tid] += sh[tt, tid + s]
                cuda.syncthreads()
                s //= 2
            if tid < MM_TOK and t0 + tid < n_tok:
                out[t0 + tid, r] = sh[tid, 0]
            cuda.syncthreads()
    return cuda.jit(matmul)


def _make_get_rows(value, bs, ts):
    def get_rows(out, w, ids):
        """out[j] = row ids[j] of W decoded. out [n_ids, n] f32; w [n_rows*row_bytes] uint8; ids [n_ids] int32.
        Grid <= n_ids, NT threads."""
        n = out.shape[1]
        for j in range(cuda.blockIdx.x, out.shape[0], cuda.gridDim.x):
            row = int64(ids[j]) * (n // bs) * ts
            for i in range(cuda.threadIdx.x, n, NT):
                b = i // bs
                out[j, i] = value(w, row + b * ts, i - b * bs)
    return cuda.jit(get_rows)


MATMUL = {}
GET_ROWS = {}
for _name, (_bs, _ts) in ref.BLOCK.items():
    MATMUL[_name] = _make_matmul(dev.VALUE[_name], _bs, _ts)
    GET_ROWS[_name] = _make_get_rows(dev.VALUE[_name], _bs, _ts)
    ptx.register(f"matmul_{_name.lower()}", MATMUL[_name], (f32_2d, u8_1d, f32_2d))
    ptx.register(f"get_rows_{_name.lower()}", GET_ROWS[_name], (f32_2d, u8_1d, i32_1d))


@cuda.jit
def rms_norm_f32(out, x, w, eps):
    """out[r] = x[r] / sqrt(mean(x[r]^2) + eps) * w (ggml: the sum in f64). out, x [n_rows, n] f32 (may alias);
    w [n] f32. Grid <= n_rows, NT threads."""
    tid = cuda.threadIdx.x
    n = x.shape[1]
    sh = cuda.shared.array(NT, types.float64)
    for r in range(cuda.blockIdx.x, x.shape[0], cuda.gridDim.x):
        s = 0.0
        for i in range(tid, n, NT):
            v = types.float64(x[r, i])
            s += v * v
        sh[tid] = s
        cuda.syncthreads()
        k = NT // 2
        while k > 0:
            if tid < k:
                sh[tid] += sh[tid + k]
            cuda.syncthreads()
            k //= 2
        scale = float32(1.0 / math.sqrt(sh[0] / n + eps))
        cuda.syncthreads()
        for i in range(tid, n, NT):
            out[r, i] = (x[r, i] * scale) * w[i]


@cuda.jit
def rope_f32(x, cos, sin, neox):
    """In place: rotates the first 2*n_rot/2 dims of each head (neox: pairs (i, i+half), else (2i, 2i+1)).
    x [n_tok, n_head, head_dim] f32; cos, sin [n_tok, n_rot/2] f32. Grid <= n_tok*n_head, NT threads."""
    half = cos.shape[1]
    n_head = x.shape[1]
    for th in range(cuda.blockIdx.x, x.shape[0] * n_head, cuda.gridDim.x):
        t = th // n_head
        h = th - t * n_head
        for i in range(cuda.threadIdx.x, half, NT):
            c = cos[t, i]
            s = sin[t, i]
            if neox:
                i0 = i
                i1 = i + half
            else:
                i0 = 2 * i
                i1 = 2 * i + 1
            x0 = x[t, h, i0]
            x1 = x[t, h, i1]
            x[t, h, i0] = x0 * c - x1 * s
            x[t, h, i1] = x0 * s + x1 * c


@cuda.jit
def swiglu_f32(dst, gate, up):
    """dst = gate / (1 + exp(-gate)) * up, flat [n] f32 (dst may alias gate). any 1-D grid."""
    for i in range(cuda.grid(1), dst.shape[0], cuda.gridsize(1)):
        g = gate[i]
        dst[i] = g / (float32(1.0) + math.exp(-g)) * up[i]


@cuda.jit
def geglu_table_f32(dst, gate, up, table):
    """dst = gelu_tanh(gate) * up as ggml's CPU: inside (-10, 10) gate rounded to f16 and looked up in
    table [65536] f32 (gelu of every f16 value); 0 below, the identity above. Flat [n] f32, any 1-D grid."""
    for i in range(cuda.grid(1), dst.shape[0], cuda.gridsize(1)):
        g = gate[i]
        if g <= float32(-10.0):
            dst[i] = float32(0.0)
        elif g >= float32(10.0):
            dst[i] = g * up[i]
        else:
            dst[i] = table[dev.f32_to_f16_bits(g)] * up[i]


@cuda.jit
def add_f32(dst, src, n_src):
    """dst[i] += src[i % n_src] (a row-broadcast bias when n_src is the row length). Flat f32, any 1-D grid."""
    for i in range(cuda.grid(1), dst.shape[0], cuda.gridsize(1)):
        dst[i] += src[i % n_src]


@cuda.jit
def scale_f32(dst, s):
    """dst *= s, flat f32, any 1-D grid."""
    for i in range(cuda.grid(1), dst.shape[0], cuda.gridsize(1)):
        dst[i] *= s


@cuda.jit
def softcap_f32(dst, cap):
    """dst = tanh(dst / cap) * cap (Gemma's final logit softcapping), flat f32, any 1-D grid."""
    for i in range(cuda.grid(1), dst.shape[0], cuda.gridsize(1)):
        dst[i] = math.tanh(dst[i] / cap) * cap


@cuda.jit
def take_rows_f32(out, x, rows):
    """out[j] = x[rows[j]]. out [n_rows, n] f32; x [m, n] f32; rows [n_rows] int32. Grid <= n_rows, NT threads."""
    for j in range(cuda.blockIdx.x, out.shape[0], cuda.gridDim.x):
        r = rows[j]
        for i in range(cuda.threadIdx.x, out.shape[1], NT):
            out[j, i] = x[r, i]


ptx.register("rms_norm_f32", rms_norm_f32, (f32_2d, f32_2d, f32_1d, types.float64))
ptx.register("rope_f32", rope_f32, (f32_3d, f32_2d, f32_2d, int32))
ptx.register("swiglu_f32", swiglu_f32, (f32_1d, f32_1d, f32_1d))
ptx.register("geglu_table_f32", geglu_table_f32, (f32_1d, f32_1d, f32_1d, f32_1d))
ptx.register("add_f32", add_f32, (f32_1d, f32_1d, int64))
ptx.register("scale_f32", scale_f32, (f32_1d, float32))
ptx.register("softcap_f32", softcap_f32, (f32_1d, float32))
ptx.register("take_rows_f32", take_rows_f32, (f32_2d, f32_2d, i32_1d))
