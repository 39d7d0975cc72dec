"""r8.py: a prototype Q4_0 one-token matvec on rows repacked 8 at a time (R8: per block the 8 f16 scales, then the
128 quant bytes as dword k of rows 0-7, k < 4: the transposition the 8-row tile does per call, done once) against
the 8-row tile on row-major blocks; same bits (checked). Weights hot (one copy) and from DRAM (400 MB of copies),
NUMBA_NUM_THREADS threads, GB/s of weights."""
import sys, os, time, numpy as np
ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "..")
sys.path.insert(0, os.path.join(ROOT, "bench")); sys.path.insert(0, ROOT)
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic
from pyrt._kernels import dots_q8_0 as D
from pyrt._kernels.simd import _F32, _I16, _I32, _I64, _I8, _addr, _load, _h2f, _splat, _vec
from pyrt._kernels.matmul_q8_0 import _rows_q, KIND_Q4_0
from pyrt._kernels.fused_mla import _q8_0_with_aux
from bench_kernels import weights
from gguf import GGMLQuantizationType as T

SB = 144  # bytes of 8 rows' block

def cg(context, builder, signature, args):
    gp, xp, cp, nb, dp, pf = args  # gp: the group's R8 data; dp: 8 f32 out
    v8f, v8i, v8h = _vec(_F32, 8), _vec(_I32, 8), _vec(_I16, 8)
    acc = cgutils.alloca_once_value(builder, ir.Constant(v8f, [0.0] * 8))
    def body(b, first):
        wb = builder.add(gp, builder.mul(b, ir.Constant(_I64, SB)))
        if first:
            D._prefetch_step(builder, wb, pf, SB * D.UNROLL)
        dwv = _h2f(builder, _load(builder, wb, v8h), 8)
        packed = [_load(builder, _addr(builder, wb, 16 + 32 * k), v8i) for k in range(4)]
        m = _splat(_I32, 8, 0x0F0F0F0F)
        lo = [builder.and_(p, m) for p in packed]
        hi = [builder.and_(builder.lshr(p, _splat(_I32, 8, 4)), m) for p in packed]
        qt = [builder.bitcast(v, _vec(_I8, 32)) for v in lo + hi]
        wk = [D._wprep(builder, q, 8, D.DOT_MODE) for q in qt]
        xb = builder.add(xp, builder.mul(b, ir.Constant(_I64, 34)))
        cb = builder.add(cp, builder.mul(b, ir.Constant(_I64, D.AUX_BYTES)))
        sums = [ir.Constant(v8i, [0] * 8)] * 4
        sums[0] = D._splat_load(builder, cb, _I32)
        for k in range(8):
            xk = builder.bitcast(D._splat_load(builder, _addr(builder, xb, 2 + 4 * k), _I32), _vec(_I8, 32))
            sums[k % 4] = D._idot_acc(builder, wk[k], xk, sums[k % 4], 8, D.DOT_MODE)
        s = sums[0]
        for c in sums[1:]:
            s = builder.add(s, c)
        d = builder.fmul(dwv, D._splat_load(builder, _addr(builder, cb, 4), _F32))
        builder.store(D._fma(builder, d, builder.sitofp(s, v8f), builder.load(acc)), acc)
    D._blocks(builder, nb, body)
    builder.store(builder.load(acc), builder.inttoptr(dp, ir.PointerType(v8f)), align=4)
    return context.get_dummy_value()

@intrinsic
def rows8_r8(typingctx, gp, xp, cp, nb, dp, pf):
    return types.none(*([types.int64] * 6)), cg

@njit(nogil=True, parallel=True)
def mv_r8(dst, w8, xq, xc, nb, pf):
    n_grp = w8.shape[0]
    per = 2  # groups an item (ROW_TILE 16 rows)
    for it in prange((n_grp + per - 1) // per):
        for g in range(it * per, min(n_grp, it * per + per)):
            rows8_r8(np.int64(w8[g].ctypes.data), np.int64(xq.ctypes.data), np.int64(xc.ctypes.data), nb,
                     np.int64(dst.ctypes.data) + g * 32, pf)

@njit(nogil=True, parallel=True)
def mv_rows(dst, w, xq, xc, nb, pf):
    n_out = w.shape[0]
    ws = np.int64(w.strides[0])
    for it in prange((n_out + 15) // 16):
        r0 = it * 16
        _rows_q(KIND_Q4_0, np.int64(w.ctypes.data), ws, r0, min(r0 + 16, n_out), np.int64(xq.ctypes.data),
                np.int64(xc.ctypes.data), nb, dst, pf)

@njit(nogil=True)
def loop_r8(dst, ws8, xq, xc, nb, pf, n):
    for i in range(n):
        mv_r8(dst, ws8[i % ws8.shape[0]], xq, xc, nb, pf)

@njit(nogil=True)
def loop_rows(dst, ws, xq, xc, nb, pf, n):
    for i in range(n):
        mv_rows(dst, ws[i % ws.shape[0]], xq, xc, nb, pf)

def repack(w):
    n_out, rb = w.shape
    nb = rb // 18
    blk = w.reshape(n_out // 8, 8, nb, 18)
    out = np.empty((n_out // 8, nb, SB), np.uint8)
    out[:, :, :16] = blk[:, :, :, :2].transpose(0, 2, 1, 3).reshape(n_out // 8, nb, 16)
    qs = blk[:, :, :, 2:].reshape(n_out // 8, 8, nb, 4, 4)  # [g, row, b, dword k, byte]
    out[:, :, 16:] = qs.transpose(0, 2, 3, 1, 4).reshape(n_out // 8, nb, 128)
    return out

rng = np.random.default_rng(0)
PF = 16384
for n_out, n_in in ((2048, 2048), (5632, 2048), (2048, 5632)):
    w0 = weights(rng, T.Q4_0, n_out, n_in)
    ncold = max(2, 400_000_000 // w0.nbytes)
    ws = np.stack([w0] * ncold)
    ws8 = np.stack([repack(w0)] * ncold)
    x = rng.standard_normal(n_in).astype(np.float32)
    xq, xc = _q8_0_with_aux(x, KIND_Q4_0)
    nb = n_in // 32
    a = np.empty(n_out, np.float32); b = np.empty(n_out, np.float32)
    loop_rows(a, ws[:1], xq, xc, nb, PF, 1); loop_r8(b, ws8[:1], xq, xc, nb, PF, 1)
    assert np.array_equal(a, b), np.abs(a - b).max()
    res = {}
    for rep in range(3):
        for lab, f, arr in (("rows hot", loop_rows, ws[:1]), ("r8 hot", loop_r8, ws8[:1]), ("rows cold", loop_rows, ws), ("r8 cold", loop_r8, ws8)):
            n = max(ncold, 50)
            t0 = time.perf_counter(); f(a, arr, xq, xc, nb, PF, n); t = (time.perf_counter() - t0) / n
            res.setdefault(lab, []).append(w0.nbytes / t / 1e9)
    print(n_out, "x", n_in, " ".join(f"{k}: {max(v):.1f} ({min(v):.1f})" for k, v in res.items()), "GB/s", flush=True)
