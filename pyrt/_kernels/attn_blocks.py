"""Register-blocked f32 attention blocks in explicit vectors, accumulators in registers across a block's steps:
the 4 x 4 score block and the value accumulation of 4 rows over a tile's cells. 16 lanes (one zmm) on AVX-512
targets, where LLVM's loop vectorizer would pick ymm; 8 lanes (one ymm) on AVX2 + FMA targets, in blocks sized to
their 16 registers (the 4 x 4 scores as two 4 x 2 passes, 16 values of 4 rows in the value block).

Leaf module (numpy, numba, llvmlite and sibling kernel modules only); pointers are integer addresses and strides are
in bytes, kept in range by the calling kernels. Summation orders are fixed (no reassociation flags), so a row's
result does not depend on which block or call computed it.
"""

import numpy as np
from llvmlite import ir
from numba import njit
from numba.core import cgutils
from numba.extending import intrinsic

from . import codes
from .simd import _F32, _FEATS, _I16, _I32, _I64, _bcast, _h2f, _int_typer, _vec
from .config import NO_SIMD

ROWS = 4                     # query rows (heads) of a block
CELLS = 4                    # cache rows of a score block
# lanes of a vector -> (cells of a score pass, vectors per accumulator row of the value block): 16 vector
# accumulators on AVX-512's 32 registers, 8 on AVX2's 16
_SHAPES = {16: (4, 4), 8: (2, 2)}
# Callers take the blocks where the target has a register file for them and keep their loops elsewhere.
W = 16 if "avx512f" in _FEATS else 8
HAS_BLOCKS = not NO_SIMD and ("avx512f" in _FEATS or {"avx2", "fma"} <= _FEATS)


def _ld(builder, addr, ty):
    return builder.load(builder.inttoptr(addr, ty.as_pointer()), align=4)


def _st(builder, v, addr):
    builder.store(v, builder.inttoptr(addr, v.type.as_pointer()), align=4)


# element kinds of the rows a block reads as its second operand (codes.F32, F16, BF16: widened exactly)
E_F32, E_F16, E_BF16 = codes.F32, codes.F16, codes.BF16
_EBYTES = {E_F32: 4, E_F16: 2, E_BF16: 2}


def _ld_elems(builder, addr, ek, w):
    """w elements (w None: one) of kind ek at addr as f32 lanes (exact)."""
    if ek == E_F32:
        return _ld(builder, addr, _F32 if w is None else _vec(_F32, w))
    h = _ld(builder, addr, _I16 if w is None else _vec(_I16, w))
    if ek == E_F16:
        return _h2f(builder, h, w)
    i32 = _I32 if w is None else _vec(_I32, w)
    sh = ir.Constant(i32, 16) if w is None else ir.Constant(i32, [16] * w)
    return builder.bitcast(builder.shl(builder.zext(h, i32), sh), _F32 if w is None else _vec(_F32, w))


def _fma(builder, a, b, c):
    ty = a.type
    name = f"llvm.fma.v{ty.count}f32" if isinstance(ty, ir.VectorType) else "llvm.fma.f32"
    fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ty, [ty, ty, ty]), name)
    return builder.call(fn, [a, b, c])


def _add(builder, a, b):
    return builder.add(a, b if not isinstance(b, int) else ir.Constant(_I64, b))


def _mul(builder, a, b):
    return builder.mul(a, b if not isinstance(b, int) else ir.Constant(_I64, b))


def _dot4x4_codegen(w, ek=E_F32, gather=False):
    """s[r, j] (r, j < 4; row stride ss bytes) = q_r . k_j over n values (f32 rows at q + r*qs; rows of element kind
    ek at k + j*ks, or, with gather, at the addresses held in the int64 k[j] (ks unused)): per pass of `cells`
    cells, 4 * cells vector accumulators of w lanes over n // w steps, each folded in a fixed order, plus a scalar
    tail. The k rows' elements are widened to f32 exactly, so every kind gives the bits of its f32 rows."""
    cells, _ = _SHAPES[w]
    vty = _vec(_F32, w)
    eb = _EBYTES[ek]

    def codegen(context, builder, signature, args):
        s, ss, q, qs, k, ks, n = args
        zero = ir.Constant(_F32, 0.0)
        tacc = [[cgutils.alloca_once_value(builder, zero) for _ in range(CELLS)] for _ in range(ROWS)]
        qrow = [_add(builder, q, _mul(builder, qs, r)) for r in range(ROWS)]
        krow = [_ld(builder, _add(builder, k, 8 * j), _I64) if gather else _add(builder, k, _mul(builder, ks, j))
                for j in range(CELLS)]
        nv = builder.udiv(n, ir.Constant(_I64, w))
        start = _mul(builder, nv, w)
        with cgutils.for_range(builder, builder.sub(n, start)) as loop:
            idx = _add(builder, start, loop.index)
            off = _mul(builder, idx, 4)
            koff = _mul(builder, idx, eb)
            qx = [_ld(builder, _add(builder, qrow[r], off), _F32) for r in range(ROWS)]
            kx = [_ld_elems(builder, _add(builder, krow[j], koff), ek, None) for j in range(CELLS)]
            for r in range(ROWS):
                for j in range(CELLS):
                    builder.store(_fma(builder, qx[r], kx[j], builder.load(tacc[r][j])), tacc[r][j])
        for j0 in range(0, CELLS, cells):
            acc = [[cgutils.alloca_once_value(builder, ir.Constant(vty, [0.0] * w)) for _ in range(cells)]
                   for _ in range(ROWS)]
            with cgutils.for_range(builder, nv) as loop:
                off = _mul(builder, loop.index, w * 4)
                koff = _mul(builder, loop.index, w * eb)
                kv = [_ld_elems(builder, _add(builder, krow[j0 + j], koff), ek, w) for j in range(cells)]
                for r in range(ROWS):
                    qv = _ld(builder, _add(builder, qrow[r], off), vty)
                    for j in range(cells):
                        builder.store(_fma(builder, qv, kv[j], builder.load(acc[r][j])), acc[r][j])
            sums = _reduce_lanes(builder, [builder.load(acc[r][j]) for r in range(ROWS) for j in range(cells)])
            for r in range(ROWS):
                t = ir.Constant(_vec(_F32, cells), [0.0] * cells)
                for j in range(cells):
                    t = builder.insert_element(t, builder.load(tacc[r][j0 + j]), ir.Constant(_I32, j))
                lanes = ir.Constant(_vec(_I32, cells), list(range(r * cells, (r + 1) * cells)))
                row = builder.shuffle_vector(sums, sums, lanes)
                _st(builder, builder.fadd(row, t), _add(builder, s, _add(builder, _mul(builder, ss, r), 4 * j0)))
        return context.get_dummy_value()

    return codegen


def _reduce_lanes(builder, vs):
    """w <w x float> -> one whose lane i is the sum of vs[i]'s lanes: a butterfly of half-vector shuffles.
    Every lane sums in simd._fold's order (lane t + lane t + L/2 at each halving), the same bits as folding each
    vector alone, with 2w - 2 shuffles instead of 2w log2(w)."""
    width = vs[0].type.count
    assert len(vs) == width
    lanes = width
    while len(vs) > 1:
        g = width // lanes   # groups (vectors reduced so far) per vector, `lanes` partial sums each
        h = lanes // 2
        lo = [gi * lanes + t for gi in range(g) for t in range(h)]
        hi = [i + h for i in lo]
        nxt = []
        for a, b in zip(vs[0::2], vs[1::2]):
            m_lo = ir.Constant(_vec(_I32, width), lo + [width + i for i in lo])
            m_hi = ir.Constant(_vec(_I32, width), hi + [width + i for i in hi])
            nxt.append(builder.fadd(builder.shuffle_vector(a, b, m_lo), builder.shuffle_vector(a, b, m_hi)))
        vs = nxt
        lanes = h
    return vs[0]


def _pv4_codegen(w, ek=E_F32, gather=False):
    """a_r[i] += sum_j p_r[j] * v_j[i] for r < 4, cells j < nc in order, i < n (a_r at a + r*as, p_r at
    p + r*ps, f32; v_j of element kind ek at v + j*vs, or, with gather, at the address held in the int64 v[j]
    plus vs bytes): chunk * w values of the 4 rows stay in vector registers across the cells, then w-value
    steps, then a scalar tail. The values are widened to f32 exactly, so every kind gives its f32 rows' bits."""
    _, chunk = _SHAPES[w]
    vty = _vec(_F32, w)
    eb = _EBYTES[ek]

    def codegen(context, builder, signature, args):
        a, as_, p, ps, v, vs, nc, n = args
        arow = [_add(builder, a, _mul(builder, as_, r)) for r in range(ROWS)]
        prow = [_add(builder, p, _mul(builder, ps, r)) for r in range(ROWS)]

        def block(col_off, width, ty):
            """Accumulate columns [col_off, col_off + width * lanes) of the 4 rows over every cell."""
            lanes = w if ty == vty else 1
            acc = [[cgutils.alloca_once(builder, ty) for _ in range(width)] for _ in range(ROWS)]
            for r in range(ROWS):
                for u in range(width):
                    builder.store(_ld(builder, _add(builder, arow[r], _add(builder, col_off, 4 * lanes * u)), ty),
                                  acc[r][u])
            vcol = col_off if eb == 4 else builder.udiv(col_off, ir.Constant(_I64, 4 // eb))  # bytes into a v row
            with cgutils.for_range(builder, nc) as cells:
                j = cells.index
                if gather:
                    vj = _ld(builder, _add(builder, v, _mul(builder, j, 8)), _I64)
                    vrow = _add(builder, _add(builder, vj, vs), vcol)
                else:
                    vrow = _add(builder, _add(builder, v, _mul(builder, vs, j)), vcol)
                vv = [_ld_elems(builder, _add(builder, vrow, eb * lanes * u), ek, None if lanes == 1 else w)
                      for u in range(width)]
                pj4 = _mul(builder, j, 4)
                for r in range(ROWS):
                    pr = _ld(builder, _add(builder, prow[r], pj4), _F32)
                    if ty == vty:
                        pr = _bcast(builder, pr, w)
                    for u in range(width):
                        builder.store(_fma(builder, pr, vv[u], builder.load(acc[r][u])), acc[r][u])
            for r in range(ROWS):
                for u in range(width):
                    _st(builder, builder.load(acc[r][u]), _add(builder, arow[r], _add(builder, col_off, 4 * lanes * u)))

        nchunk = builder.udiv(n, ir.Constant(_I64, w * chunk))
        with cgutils.for_range(builder, nchunk) as loop:
            block(_mul(builder, loop.index, w * chunk * 4), chunk, vty)
        v0 = _mul(builder, nchunk, chunk)
        with cgutils.for_range(builder, builder.sub(builder.udiv(n, ir.Constant(_I64, w)), v0)) as loop:
            block(_mul(builder, _add(builder, v0, loop.index), w * 4), 1, vty)
        e0 = _mul(builder, builder.udiv(n, ir.Constant(_I64, w)), w)
        with cgutils.for_range(builder, builder.sub(n, e0)) as loop:
            block(_mul(builder, _add(builder, e0, loop.index), 4), 1, _F32)
        return context.get_dummy_value()

    return codegen


# dot4x4_f32(s, ss, q, qs, k, ks, n): the 16 dot products of 4 f32 rows at q (stride qs bytes) with 4 f32 rows
# at k (stride ks), n values each, stored at s[r * ss + j * 4] (addresses and strides in bytes).
# pv4_f32(a, as_, p, ps, v, vs, nc, n): a_r[:n] += sum_j p_r[j] * v_j[:n] for 4 f32 accumulator rows at a (stride
# as_ bytes), their weights p_r[:nc] at p (stride ps) and nc f32 value rows at v (stride vs), cell by cell in order.

# the target's blocks; both widths for the tests (16 lanes compile anywhere, as two ymm halves without AVX-512)
BLOCKS = {w: (intrinsic(_int_typer(7, _dot4x4_codegen(w))), intrinsic(_int_typer(8, _pv4_codegen(w))))
          for w in _SHAPES}
dot4x4_f32, pv4_f32 = BLOCKS[W]

# dot4x4_rows(ek, s, ss, q, qs, ka, n) and pv4_rows(ek, a, as_, p, ps, va, off, nc, n): the blocks over cache rows
# of kind ek (E_F32, E_F16, E_BF16) gathered by address: the k rows at the int64 addresses ka[0:4], the
# value rows at va[j] + off bytes; the same bits as the f32 blocks over those rows widened.
GATHERED = {w: {ek: (intrinsic(_int_typer(7, _dot4x4_codegen(w, ek, True))),
                     intrinsic(_int_typer(8, _pv4_codegen(w, ek, True)))) for ek in _EBYTES} for w in _SHAPES}
_dot_g32, _pv_g32 = GATHERED[W][E_F32]
_dot_g16, _pv_g16 = GATHERED[W][E_F16]
_dot_gbf, _pv_gbf = GATHERED[W][E_BF16]


# Up to this many query rows a work item, the gathered blocks read f32/f16/bf16 cache rows in place; above it the
# rows' widening (once per 4 rows) costs more than one f32 tile per KV tile.
GATHER_ROWS_MAX = 32


@njit(cache=True, nogil=True, inline="always")
def gathered(kind, rows):
    """Whether a work item of `rows` query rows (a multiple of 4) reads cache rows of kind (codes) in place: f32,
    f16, bf16 rows and at most GATHER_ROWS_MAX rows."""
    return rows % 4 == 0 and rows <= GATHER_ROWS_MAX and (kind == E_F32 or kind == E_F16 or kind == E_BF16)


@njit(cache=True, nogil=True, inline="always")
def row_addresses(ka, base, stride, off, kv_idx, cb, nc, cvis, zero):
    """ka[j] = base + kv_idx[cb + j] * stride + off (bytes) for the tile's cells j < nc some query sees, the
    address zero (a row of zeros) for the others and for the padding up to a multiple of 4 cells. ka [>= nc + 3]
    int64; kv_idx[cb:cb + nc] valid rows (the caller's)."""
    for j in range((nc + 3) // 4 * 4):
        ka[j] = base + np.int64(kv_idx[cb + j]) * stride + off if j < nc and cvis[j] else zero


@njit(cache=True, nogil=True, inline="always")
def dot4x4_rows(ek, s, ss, q, qs, ka, n):
    if ek == E_F16:
        _dot_g16(s, ss, q, qs, ka, 0, n)
    elif ek == E_BF16:
        _dot_gbf(s, ss, q, qs, ka, 0, n)
    else:
        _dot_g32(s, ss, q, qs, ka, 0, n)


@njit(cache=True, nogil=True, inline="always")
def pv4_rows(ek, a, as_, p, ps, va, off, nc, n):
    if ek == E_F16:
        _pv_g16(a, as_, p, ps, va, off, nc, n)
    elif ek == E_BF16:
        _pv_gbf(a, as_, p, ps, va, off, nc, n)
    else:
        _pv_g32(a, as_, p, ps, va, off, nc, n)


@njit(cache=True, nogil=True, inline="always")
def scores_4(direct, ek, s, qs, ka, kt, j0, r4, n):
    """s[r, j0:j0 + 4] = the scores of query rows qs[r] (r < r4, a multiple of 4) against the tile's cells
    j0..j0 + 3 in dot4x4 blocks: the cache rows at the addresses ka[j0:j0 + 4] (direct; kind ek) or the f32
    tile rows kt[j0:j0 + 4]. s, qs, kt f32 with contiguous rows; n values a row."""
    s_p, s_rs = np.int64(s.ctypes.data), np.int64(s.strides[0])
    q_p, q_rs = np.int64(qs.ctypes.data), np.int64(qs.strides[0])
    for r0 in range(0, r4, ROWS):
        if direct:
            dot4x4_rows(ek, s_p + r0 * s_rs + j0 * 4, s_rs, q_p + r0 * q_rs, q_rs, np.int64(ka.ctypes.data) + j0 * 8, n)
        else:
            dot4x4_f32(s_p + r0 * s_rs + j0 * 4, s_rs, q_p + r0 * q_rs, q_rs,
                       np.int64(kt.ctypes.data) + j0 * np.int64(kt.strides[0]), np.int64(kt.strides[0]), n)


@njit(cache=True, nogil=True, inline="always")
def values_4(acc, s, vt, v_off, r4, nc):
    """acc[r] += sum_j s[r, j] * vt[j, v_off:v_off + dv] for r < r4 (a multiple of 4), j < nc, in pv4_f32
    blocks; acc [>= r4, dv], s, vt f32 with contiguous rows."""
    a_p, a_rs = np.int64(acc.ctypes.data), np.int64(acc.strides[0])
    s_p, s_rs = np.int64(s.ctypes.data), np.int64(s.strides[0])
    v_p, v_rs = np.int64(vt.ctypes.data) + np.int64(v_off) * 4, np.int64(vt.strides[0])
    for r0 in range(0, r4, ROWS):
        pv4_f32(a_p + r0 * a_rs, a_rs, s_p + r0 * s_rs, s_rs, v_p, v_rs, np.int64(nc), np.int64(acc.shape[1]))
