"""Mixture-of-experts on the device: routing (softmax / sigmoid gating, selection bias, top-k, weight norm and
scale) and the experts' matrices over ONLY the selected experts, reading expert rows by id (ggml's mul_mat_id).

Leaf kernel module (numpy, numba.cuda and sibling kernel modules only). Quantized weights stay GGUF blocks
([rows, row_bytes] uint8); every weight element is decoded by the scalar reference decoders compiled as device
functions (pyrt._kernels.reference via .device), one kernel per weight type from one factory. A row's dot
product is one warp-sized group of 32 threads whose partial sums are added in shared memory (no warp shuffles,
so the kernels run in the CUDA simulator). Shapes are numpy row-major.
"""

import math

from numba import cuda, float32, float64, int32

from .. import reference
from . import ptx
from . import device

THREADS = 128          # threads per block of the row kernels
LANES = 32             # threads per output row
ROWS = THREADS // LANES
ROUTE_THREADS = 128    # threads per token of moe_route
GATING_SOFTMAX = 1     # ggml's expert_gating_func values (as pyrt._kernels.fused_moe)
GATING_SIGMOID = 2
W_NORM_MIN = 6.103515625e-05  # 2^-14: ggml clamps the selected weights' sum from below before dividing
TYPES = ("F32", "F16", "BF16", "Q8_0", "Q4_0", "Q5_0", "Q4_K", "Q5_K", "Q6_K")


@device.device_function
def _lane_sum(sm, tid, lane):
    """Adds sm[tid - lane : tid - lane + LANES] into sm[tid - lane] (a tree in shared memory); every thread of
    the block must call it."""
    s = LANES // 2
    while s > 0:
        cuda.syncthreads()
        if lane < s:
            sm[tid] += sm[tid + s]
        s //= 2
    cuda.syncthreads()


def _make_row_kernels(value, bs, ts):
    """(mul_mat_id, moe_gate_up) for one weight type: value(src, blk, i) decodes element i of the block at byte
    blk; bs values per block of ts bytes."""

    @device.device_function
    def _dot(w, row, x, xr, n_in, lane):
        """Partial dot of lane `lane`: elements lane, lane + LANES, ... of weight row `row` with x[xr]."""
        s = float32(0.0)
        wr = w[row]
        for i in range(lane, n_in, LANES):
            s += value(wr, (i // bs) * ts, i % bs) * x[xr, i]
        return s

    @cuda.jit
    def mul_mat_id(dst, x, w, row0, x_row):
        """dst[g, r] = w[row0[g] + r] . x[x_row[g]]: each group's rows from its own row offset (an expert's).

        dst [n_group, n_out] f32 out; x [n_x, n_in] f32; w [rows, n_in / bs * ts] uint8 raw GGUF rows;
        row0 [n_group] int64; x_row [n_group] int64. Blocks: n_group * ceil(n_out / ROWS), THREADS threads.
        """
        sm = cuda.shared.array(THREADS, float32)
        n_out = dst.shape[1]
        n_rt = (n_out + ROWS - 1) // ROWS
        g = cuda.blockIdx.x // n_rt
        tid = cuda.threadIdx.x
        lane = tid % LANES
        r = (cuda.blockIdx.x % n_rt) * ROWS + tid // LANES
        s = float32(0.0)
        if r < n_out:
            s = _dot(w, row0[g] + r, x, x_row[g], x.shape[1], lane)
        sm[tid] = s
        _lane_sum(sm, tid, lane)
        if lane == 0 and r < n_out:
            dst[g, r] = sm[tid]

    @cuda.jit
    def moe_gate_up(h, x, w_gate, w_up, row0, x_row):
        """h[g, r] = silu(w_gate[row0[g] + r] . x[x_row[g]]) * (w_up[row0[g] + r] . x[x_row[g]]).

        h [n_group, n_ff] f32 out; x [n_x, n_in] f32; w_gate, w_up: raw rows of one type (uint8);
        row0, x_row [n_group] int64. Blocks: n_group * ceil(n_ff / ROWS), THREADS threads.
        """
        sm = cuda.shared.array(THREADS, float32)
        su = cuda.shared.array(THREADS, float32)
        n_ff = h.shape[1]
        n_rt = (n_ff + ROWS - 1) // ROWS
        g = cuda.blockIdx.x // n_rt
        tid = cuda.threadIdx.x
        lane = tid % LANES
        r = (cuda.blockIdx.x % n_rt) * ROWS + tid // LANES
        a = float32(0.0)
        b = float32(0.0)
        if r < n_ff:
            a = _dot(w_gate, row0[g] + r, x, x_row[g], x.shape[1], lane)
            b = _dot(w_up, row0[g] + r, x, x_row[g], x.shape[1], lane)
        sm[tid] = a
        su[tid] = b
        _lane_sum(sm, tid, lane)
        _lane_sum(su, tid, lane)
        if lane == 0 and r < n_ff:
            gv = sm[tid]
            h[g, r] = gv / (float32(1.0) + float32(math.exp(-gv))) * su[tid]

    return mul_mat_id, moe_gate_up


MUL_MAT_ID = {}
MOE_GATE_UP = {}
for _t in TYPES:
    MUL_MAT_ID[_t], MOE_GATE_UP[_t] = _make_row_kernels(device.VALUE[_t], *reference.BLOCK[_t])


@cuda.jit
def moe_route(selected, weights, logits, probs_b, gating, norm_w, w_scale):
    """Top-k routing of each token (one block of ROUTE_THREADS threads per token), as pyrt.ops.moe.route.

    selected [n_tok, n_used] int32 out (highest first, ties to the lower expert id); weights [n_tok, n_used] f32
    out: the unbiased probabilities of the selected experts, divided by their sum (clamped at W_NORM_MIN) when
    norm_w, times w_scale unless it is 0 or 1. logits [n_tok, n_expert] f32; probs_b [n_expert] f32 (zeros when
    the model has no exp_probs_b): added for the selection only; gating GATING_SOFTMAX | GATING_SIGMOID.
    """
    pr = cuda.shared.array(0, float32)  # [n_expert] probabilities, then [n_expert] selection values
    rv = cuda.shared.array(ROUTE_THREADS, float32)
    ri = cuda.shared.array(ROUTE_THREADS, int32)
    rs = cuda.shared.array(ROUTE_THREADS, float64)
    t = cuda.blockIdx.x
    tid = cuda.threadIdx.x
    n_expert = logits.shape[1]
    n_used = selected.shape[1]
    sv = n_expert
    if gating == GATING_SOFTMAX:
        mx = float32(-math.inf)
        for e in range(tid, n_expert, ROUTE_THREADS):
            mx = max(mx, logits[t, e])
        rv[tid] = mx
        cuda.syncthreads()
        s = ROUTE_THREADS // 2
        while s > 0:
            if tid < s:
                rv[tid] = max(rv[tid], rv[tid + s])
            cuda.syncthreads()
            s //= 2
        mx = rv[0]
        acc = float64(0.0)  # ggml's soft_max: the f32 exps summed in f64, one f32 scale
        for e in range(tid, n_expert, ROUTE_THREADS):
            v = float32(math.exp(logits[t, e] - mx))
            pr[e] = v
            acc += float64(v)
        rs[tid] = acc
        cuda.syncthreads()
        s = ROUTE_THREADS // 2
        while s > 0:
            if tid < s:
                rs[tid] += rs[tid + s]
            cuda.syncthreads()
            s //= 2
        inv = float32(1.0 / rs[0])
        for e in range(tid, n_expert, ROUTE_THREADS):
            pr[e] = pr[e] * inv
    else:
        for e in range(tid, n_expert, ROUTE_THREADS):
            pr[e] = float32(1.0) / (float32(1.0) + float32(math.exp(-logits[t, e])))
    for e in range(tid, n_expert, ROUTE_THREADS):
        pr[sv + e] = pr[e] + probs_b[e]
    cuda.syncthreads()
    for k in range(n_used):  # k rounds of a block argmax; a chosen expert's selection value becomes -inf
        best = float32(-math.inf)
        bi = int32(n_expert)
        for e in range(tid, n_expert, ROUTE_THREADS):
            v = pr[sv + e]
            if v > best or (v == best and e < bi):
                best = v
                bi = e
        rv[tid] = best
        ri[tid] = bi
        cuda.syncthreads()
        s = ROUTE_THREADS // 2
        while s > 0:
            if tid < s:
                v = rv[tid + s]
                j = ri[tid + s]
                if v > rv[tid] or (v == rv[tid] and j < ri[tid]):
                    rv[tid] = v
                    ri[tid] = j
            cuda.syncthreads()
            s //= 2
        if tid == 0:
            e = ri[0]
            if e >= n_expert:  # every remaining value is -inf or nan: the lowest unused id
                e = 0
                while pr[sv + e] == -math.inf and e < n_expert - 1:
                    e += 1
            selected[t, k] = e
            weights[t, k] = pr[e]
            pr[sv + e] = -math.inf
        cuda.syncthreads()
    if tid == 0:
        if norm_w:
            sw = float32(0.0)
            for k in range(n_used):
                sw += weights[t, k]
            sw = max(sw, float32(W_NORM_MIN))
            for k in range(n_used):
                weights[t, k] = weights[t, k] / sw
        if w_scale != 0.0 and w_scale != 1.0:
            for k in range(n_used):
                weights[t, k] = weights[t, k] * float32(w_scale)


@cuda.jit
def moe_combine(out, y, weights, accumulate):
    """out[t] (+)= sum_k weights[t, k] * y[t * n_used + k], the slots added in order (as ggml).

    out [n_tok, n_embd] f32 (added to when accumulate); y [n_tok * n_used, n_embd] f32; weights [n_tok, n_used]
    f32. One thread per output element.
    """
    n_embd = out.shape[1]
    n_used = weights.shape[1]
    i = cuda.grid(1)
    if i < out.shape[0] * n_embd:
        t = i // n_embd
        c = i % n_embd
        s = y[t * n_used, c] * weights[t, 0]
        for k in range(1, n_used):
            s += y[t * n_used + k, c] * weights[t, k]
        out[t, c] = out[t, c] + s if accumulate else s


@cuda.jit
def expert_rows(row_g, row_d, x_row, g_row, selected, n_ff, n_embd):
    """The row offsets of each (token, slot) group g = t * n_used + k of expert e = selected[t, k]: row_g[g] =
    e * n_ff (gate/up), row_d[g] = e * n_embd (down), x_row[g] = t, g_row[g] = g. All [n_tok * n_used] int64."""
    g = cuda.grid(1)
    n_used = selected.shape[1]
    if g < selected.shape[0] * n_used:
        e = selected[g // n_used, g % n_used]
        row_g[g] = e * n_ff
        row_d[g] = e * n_embd
        x_row[g] = g // n_used
        g_row[g] = g


def row_blocks(n_group: int, n_out: int) -> int:
    """Blocks of mul_mat_id / moe_gate_up for n_group groups of n_out rows."""
    return max(1, n_group * ((n_out + ROWS - 1) // ROWS))


def route_shared_bytes(n_expert: int) -> int:
    return 4 * 2 * n_expert


_ROW_SIG = "void(float32[:, ::1], float32[:, ::1], uint8[:, ::1], int64[::1], int64[::1])"
for _t in TYPES:
    ptx.register(f"moe.mul_mat_id_{_t.lower()}", MUL_MAT_ID[_t], _ROW_SIG,
                 _ROW_SIG.replace("float32[:, ::1], uint8", "float32[:, :], uint8"))  # x: a column range
    ptx.register(f"moe.moe_gate_up_{_t.lower()}", MOE_GATE_UP[_t],
                 "void(float32[:, ::1], float32[:, ::1], uint8[:, ::1], uint8[:, ::1], int64[::1], int64[::1])")
ptx.register("moe.moe_route", moe_route,
             "void(int32[:, ::1], float32[:, ::1], float32[:, ::1], float32[::1], int64, boolean, float64)")
ptx.register("moe.expert_rows", expert_rows,
             "void(int64[::1], int64[::1], int64[::1], int64[::1], int32[:, ::1], int64, int64)")
ptx.register("moe.moe_combine", moe_combine, "void(float32[:, ::1], float32[:, ::1], float32[:, ::1], boolean)")
