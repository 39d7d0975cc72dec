"""FlashMLA on the device: absorbed multi-head latent attention over a K-only latent cache, online softmax.

Leaf kernel module (numpy, numba.cuda and sibling kernel modules only). Every query head attends to the same
cache row [k_pe (n_rot) | c_kv (kv_lora_rank)] and V is the c_kv part of that row, so a block dequantizes a tile
of rows once into shared memory and serves the scores and the value sums of a group of heads from it. Masks
come from cell positions and sequence bitsets as in pyrt._kernels.attention_mla; reductions go through shared memory
(no warp shuffles, so the kernels run in the CUDA simulator). Shapes are numpy row-major.
"""

import math

from numba import cuda, float32, float64, uint64

from .. import codes
from . import ptx
from . import device
from .yarn import yarn_cos_sin

_bf16_bits_to_f32 = device.bf16_bits_to_f32

# cache storage kinds (pyrt._kernels.codes)
# the cache row views per kind: F32 ka float32 rows; F16 ka float16 rows; BF16 ka uint16 bits; Q8_0 ka the
# row bytes as float16 (d of block b at ka[c, 17 b]), kb the same bytes as int8
KIND_F32, KIND_F16, KIND_BF16, KIND_Q8_0 = codes.F32, codes.F16, codes.BF16, codes.Q8_0
QK8_0 = 32
Q8_0_BLOCK_BYTES = 34

THREADS = 128      # threads per block
HEAD_GROUP = 8     # query heads per block (they share each dequantized KV tile)
KV_TILE = 8        # cache rows per tile
MAX_COLS = 8       # value columns per thread and head: dv <= THREADS * MAX_COLS
N_DOT = HEAD_GROUP * KV_TILE
DOT_PARTS = THREADS // N_DOT  # threads per score (partial sums combined in shared memory)
N_ACC = HEAD_GROUP * MAX_COLS  # accumulators per thread


@device.device_function
def _load_f32(ka, kb, c, i):
    return ka[c, i]


@device.device_function
def _load_f16(ka, kb, c, i):
    return float32(ka[c, i])


@device.device_function
def _load_bf16(ka, kb, c, i):
    return _bf16_bits_to_f32(int(ka[c, i]))


@device.device_function
def _load_q8_0(ka, kb, c, i):
    b = i // QK8_0
    return float32(kb[c, b * Q8_0_BLOCK_BYTES + 2 + i % QK8_0]) * float32(ka[c, b * (Q8_0_BLOCK_BYTES // 2)])


def _make_flash_mla(load):
    """The FlashMLA kernel for one cache kind, `load(ka, kb, cell, i)` -> f32 reading element i of a cache row."""

    @cuda.jit
    def flash_mla(dst, pm, pl, pacc, q, ka, kb, v_off, cell_pos, cell_seq, kv_idx, q_pos, q_seq, scale, n_split,
                  split_len):
        """One block per (token, group of HEAD_GROUP heads, KV split), THREADS threads.

        dst  [n_tok, n_head, dv] f32 out (written when n_split == 1; zeros for a query that sees no cell)
        pm, pl [n_split, n_tok, n_head] f32, pacc [n_split, n_tok, n_head, dv] f32: the splits' running max,
             softmax sum and unnormalized sums (written when n_split > 1, merged by flash_mla_merge)
        q    [n_tok, n_head, dk] f32 per head [q_pe | q_nope . W_UK], the cache row order
        ka, kb  the cache rows [n_cells, ...] as the kind's `load` reads them
        v_off  element offset of c_kv in a row (n_rot), dv = dk - v_off
        cell_pos [n_cells] int32, cell_seq [n_cells] uint64 bitsets, kv_idx [n_kv] int32 cells in scan order
        q_pos, q_seq [n_tok] int32; scale f32; split_len cells per split (a multiple of KV_TILE)
        """
        n_head = q.shape[1]
        dk = q.shape[2]
        dv = dk - v_off
        n_hg = (n_head + HEAD_GROUP - 1) // HEAD_GROUP
        bid = cuda.blockIdx.x
        sp = bid % n_split
        hg = (bid // n_split) % n_hg
        t = bid // (n_split * n_hg)
        h0 = hg * HEAD_GROUP
        nh = min(HEAD_GROUP, n_head - h0)
        tid = cuda.threadIdx.x
        n_kv = kv_idx.shape[0]
        c0 = min(n_kv, sp * split_len)
        c1 = min(n_kv, c0 + split_len)

        sm = cuda.shared.array(0, float32)  # [HEAD_GROUP*dk q | KV_TILE*dk rows | N_DOT*DOT_PARTS | scratch]
        kr = HEAD_GROUP * dk                # offsets into sm
        red = kr + KV_TILE * dk
        sc = red + N_DOT * DOT_PARTS        # [HEAD_GROUP, KV_TILE] scores, then probabilities
        al = sc + N_DOT                     # [HEAD_GROUP] alpha of the tile
        vis = al + HEAD_GROUP               # [KV_TILE] 1 visible, 0 masked; [KV_TILE] = any visible
        for e in range(tid, HEAD_GROUP * dk, THREADS):
            h = e // dk
            sm[e] = q[t, h0 + h, e % dk] if h < nh else float32(0.0)
        acc = cuda.local.array(N_ACC, float32)
        for e in range(N_ACC):
            acc[e] = float32(0.0)
        m_run = float32(-math.inf)  # per head, kept by thread h < nh
        l_run = float32(0.0)
        qp = q_pos[t]
        qbit = uint64(1) << uint64(q_seq[t])
        for cb in range(c0, c1, KV_TILE):
            nc = min(KV_TILE, c1 - cb)
            cuda.syncthreads()  # the previous tile's rows and probabilities are consumed
            if tid < KV_TILE:
                v = float32(0.0)
                if tid < nc:
                    c = kv_idx[cb + tid]
                    if (cell_seq[c] & qbit) != uint64(0) and cell_pos[c] <= qp:
                        v = float32(1.0)
                sm[vis + tid] = v
            cuda.syncthreads()
            if tid == 0:
                a = float32(0.0)
                for j in range(nc):
                    a = max(a, sm[vis + j])
                sm[vis + KV_TILE] = a
            cuda.syncthreads()
            if sm[vis + KV_TILE] == float32(0.0):
                continue  # block-uniform: no cell of the tile is visible to this token
            for e in range(tid, nc * dk, THREADS):
                j = e // dk
                if sm[vis + j] != float32(0.0):
                    sm[kr + e] = load(ka, kb, kv_idx[cb + j], e % dk)
            cuda.syncthreads()
            d = tid % N_DOT   # score (h, j) = (d // KV_TILE, d % KV_TILE), partial sum `part`
            part = tid // N_DOT
            h = d // KV_TILE
            j = d % KV_TILE
            s = float32(0.0)
            if j < nc and h < nh and sm[vis + j] != float32(0.0):
                qrow = h * dk
                krow = kr + j * dk
                for i in range(part, dk, DOT_PARTS):
                    s += sm[qrow + i] * sm[krow + i]
            sm[red + part * N_DOT + d] = s
            cuda.syncthreads()
            if tid < N_DOT:
                s = float32(0.0)
                for p in range(DOT_PARTS):
                    s += sm[red + p * N_DOT + tid]
                sm[sc + tid] = s * scale
            cuda.syncthreads()
            if tid < nh:  # online softmax of head tid over the tile
                smax = float32(-math.inf)
                for j in range(nc):
                    if sm[vis + j] != float32(0.0):
                        smax = max(smax, sm[sc + tid * KV_TILE + j])
                m_new = max(m_run, smax)
                alpha = float32(math.exp(m_run - m_new))
                lsum = float32(0.0)
                for j in range(KV_TILE):
                    p = float32(0.0)
                    if j < nc and sm[vis + j] != float32(0.0):
                        p = float32(math.exp(sm[sc + tid * KV_TILE + j] - m_new))
                    sm[sc + tid * KV_TILE + j] = p
                    lsum += p
                l_run = l_run * alpha + lsum
                m_run = m_new
                sm[al + tid] = alpha
            cuda.syncthreads()
            for ci in range(MAX_COLS):
                col = tid + ci * THREADS
                if col < dv:
                    for h in range(nh):
                        a = acc[h * MAX_COLS + ci] * sm[al + h]
                        for j in range(nc):
                            a += sm[sc + h * KV_TILE + j] * sm[kr + j * dk + v_off + col]
                        acc[h * MAX_COLS + ci] = a
        cuda.syncthreads()
        if n_split == 1:
            if tid < nh:  # the softmax sums pass through shared memory to every thread
                sm[al + tid] = float32(1.0) / l_run if l_run > float32(0.0) else float32(0.0)
            cuda.syncthreads()
            for ci in range(MAX_COLS):
                col = tid + ci * THREADS
                if col < dv:
                    for h in range(nh):
                        dst[t, h0 + h, col] = acc[h * MAX_COLS + ci] * sm[al + h]
        else:
            if tid < nh:
                pm[sp, t, h0 + tid] = m_run
                pl[sp, t, h0 + tid] = l_run
            for ci in range(MAX_COLS):
                col = tid + ci * THREADS
                if col < dv:
                    for h in range(nh):
                        pacc[sp, t, h0 + h, col] = acc[h * MAX_COLS + ci]

    return flash_mla


flash_mla_f32 = _make_flash_mla(_load_f32)
flash_mla_f16 = _make_flash_mla(_load_f16)
flash_mla_bf16 = _make_flash_mla(_load_bf16)
flash_mla_q8_0 = _make_flash_mla(_load_q8_0)
FLASH_MLA = {KIND_F32: flash_mla_f32, KIND_F16: flash_mla_f16, KIND_BF16: flash_mla_bf16, KIND_Q8_0: flash_mla_q8_0}


@cuda.jit
def flash_mla_merge(dst, pm, pl, pacc):
    """dst[t, h] = the softmax-weighted merge of the KV splits, in split order: one block per (token, head).

    dst [n_tok, n_head, dv] f32 out; pm, pl [n_split, n_tok, n_head] f32; pacc [n_split, n_tok, n_head, dv] f32.
    A query that sees no cell gets zeros.
    """
    n_head = dst.shape[1]
    t = cuda.blockIdx.x // n_head
    h = cuda.blockIdx.x % n_head
    n_split = pm.shape[0]
    mx = float32(-math.inf)
    for sp in range(n_split):
        mx = max(mx, pm[sp, t, h])
    den = float32(0.0)
    if mx != -math.inf:
        for sp in range(n_split):
            if pm[sp, t, h] != -math.inf:
                den += float32(math.exp(pm[sp, t, h] - mx)) * pl[sp, t, h]
    for col in range(cuda.threadIdx.x, dst.shape[2], cuda.blockDim.x):
        o = float32(0.0)
        if mx != -math.inf:
            for sp in range(n_split):
                if pm[sp, t, h] != -math.inf:
                    o += float32(math.exp(pm[sp, t, h] - mx)) * pacc[sp, t, h, col]
            o = o / den
        dst[t, h, col] = o


@cuda.jit
def mla_kv_rows(row, kva, kv_a_norm, eps, pos, freq_base, freq_scale, ext_factor, corr_low, corr_high, mscale):
    """The latent cache rows of a ubatch: row[t] = [rope(k_pe) | rmsnorm(c_kv) * kv_a_norm], one block per token.

    row [n_tok, n_rot + C] f32 out; kva [n_tok, C + n_rot] f32 the attn_kv_a_mqa output [c_kv | k_pe];
    kv_a_norm [C] f32; eps f64; pos [n_tok] int32; the YaRN scalars as yarn.rope_yarn_norm (NORM pairs).
    The RMSNorm as pyrt._kernels.norm (the squares summed in f64, one f32 scale).
    """
    ss = cuda.shared.array(THREADS, float64)
    t = cuda.blockIdx.x
    tid = cuda.threadIdx.x
    C = kv_a_norm.shape[0]
    n_rot = row.shape[1] - C
    acc = float64(0.0)
    for i in range(tid, C, THREADS):
        v = float64(kva[t, i])
        acc += v * v
    ss[tid] = acc
    s = THREADS // 2
    while s > 0:
        cuda.syncthreads()
        if tid < s:
            ss[tid] += ss[tid + s]
        s //= 2
    cuda.syncthreads()
    scale = float32(1.0 / math.sqrt(ss[0] / C + eps))
    for i in range(tid, C, THREADS):
        row[t, n_rot + i] = (kva[t, i] * scale) * kv_a_norm[i]
    for i in range(tid, n_rot // 2, THREADS):
        c, sn = yarn_cos_sin(pos[t], i, n_rot, freq_base, freq_scale, ext_factor, corr_low, corr_high, mscale)
        x0 = kva[t, C + 2 * i]
        x1 = kva[t, C + 2 * i + 1]
        row[t, 2 * i] = x0 * c - x1 * sn
        row[t, 2 * i + 1] = x0 * sn + x1 * c


@cuda.jit
def mla_q_rows(qa, q, q_abs, pos, freq_base, freq_scale, ext_factor, corr_low, corr_high, mscale):
    """The absorbed queries: qa[t, h] = [rope(q_pe) | q_abs[t * n_head + h]], one block per (token, head).

    qa [n_tok, n_head, n_rot + C] f32 out; q [n_tok, n_head, dn + n_rot] f32 per head [q_nope | q_pe];
    q_abs [n_tok * n_head, C] f32 (q_nope . W_UK); pos [n_tok] int32; the YaRN scalars as mla_kv_rows.
    """
    n_head = q.shape[1]
    t = cuda.blockIdx.x // n_head
    h = cuda.blockIdx.x % n_head
    tid = cuda.threadIdx.x
    C = q_abs.shape[1]
    n_rot = qa.shape[2] - C
    dn = q.shape[2] - n_rot
    for i in range(tid, C, THREADS):
        qa[t, h, n_rot + i] = q_abs[t * n_head + h, i]
    for i in range(tid, n_rot // 2, THREADS):
        c, sn = yarn_cos_sin(pos[t], i, n_rot, freq_base, freq_scale, ext_factor, corr_low, corr_high, mscale)
        x0 = q[t, h, dn + 2 * i]
        x1 = q[t, h, dn + 2 * i + 1]
        qa[t, h, 2 * i] = x0 * c - x1 * sn
        qa[t, h, 2 * i + 1] = x0 * sn + x1 * c


def choose_split(n_tok: int, n_head: int, n_kv: int, target_blocks: int, min_cells: int) -> tuple[int, int]:
    """(n_split, split_len): split the KV range until about target_blocks blocks run, each split at least
    min_cells cells (rounded up to whole tiles)."""
    blocks = n_tok * ((n_head + HEAD_GROUP - 1) // HEAD_GROUP)
    n_split = 1
    if blocks < target_blocks:
        n_split = max(1, min((target_blocks + blocks - 1) // blocks, n_kv // max(1, min_cells)))
    split_len = (n_kv + n_split - 1) // n_split
    split_len = max(KV_TILE, (split_len + KV_TILE - 1) // KV_TILE * KV_TILE)
    n_split = max(1, (n_kv + split_len - 1) // split_len)
    return n_split, split_len


def launch_flash_mla(dst, q, ka, kb, kind, v_off, cell_pos, cell_seq, kv_idx, q_pos, q_seq, scale, n_split,
                     split_len, stream=0):
    """Runs flash_mla (and the split merge when n_split > 1) on device arrays shaped as flash_mla documents."""
    n_tok, n_head, dk = q.shape
    n_hg = (n_head + HEAD_GROUP - 1) // HEAD_GROUP
    ns = max(1, n_split)
    if n_split > 1:
        pm = cuda.device_array((ns, n_tok, n_head), dtype="float32", stream=stream)
        pl = cuda.device_array((ns, n_tok, n_head), dtype="float32", stream=stream)
        pacc = cuda.device_array((ns, n_tok, n_head, dst.shape[2]), dtype="float32", stream=stream)
    else:
        pm = pl = cuda.device_array((1, 1, 1), dtype="float32", stream=stream)
        pacc = cuda.device_array((1, 1, 1, 1), dtype="float32", stream=stream)
    FLASH_MLA[kind][n_tok * n_hg * ns, THREADS, stream, shared_bytes(dk)](
        dst, pm, pl, pacc, q, ka, kb, v_off, cell_pos, cell_seq, kv_idx, q_pos, q_seq, scale, ns, split_len)
    if n_split > 1:
        flash_mla_merge[n_tok * n_head, THREADS, stream](dst, pm, pl, pacc)


def shared_bytes(dk: int) -> int:
    """Dynamic shared memory of one flash_mla block for rows of dk values."""
    return 4 * ((HEAD_GROUP + KV_TILE) * dk + N_DOT * DOT_PARTS + N_DOT + HEAD_GROUP + KV_TILE + 1)


_ROWS = {KIND_F32: ("float32", "float32"), KIND_F16: ("float16", "float16"), KIND_BF16: ("uint16", "uint16"),
         KIND_Q8_0: ("float16", "int8")}


def _sig(kind: int) -> str:
    a, b = _ROWS[kind]
    return (f"void(float32[:, :, ::1], float32[:, :, ::1], float32[:, :, ::1], float32[:, :, :, ::1], "
            f"float32[:, :, ::1], {a}[:, ::1], {b}[:, ::1], int64, int32[::1], uint64[::1], int32[::1], "
            f"int32[::1], int32[::1], float32, int64, int64)")


for _k in FLASH_MLA:
    ptx.register(f"mla.flash_mla_{('f32', 'f16', 'bf16', 'q8_0')[_k]}", FLASH_MLA[_k], _sig(_k))
_YARN = "int32[::1], float64, float64, float64, float64, float64, float64"
ptx.register("mla.mla_kv_rows", mla_kv_rows,
             f"void(float32[:, ::1], float32[:, ::1], float32[::1], float64, {_YARN})")
ptx.register("mla.mla_q_rows", mla_q_rows, f"void(float32[:, :, ::1], float32[:, :, ::1], float32[:, ::1], {_YARN})")
ptx.register("mla.flash_mla_merge", flash_mla_merge,
             "void(float32[:, :, ::1], float32[:, :, ::1], float32[:, :, ::1], float32[:, :, :, ::1])")
