"""K-quant prompt tiles: Q4_K/Q5_K/Q6_K weights x Q8_K activations, 8 weight rows x TILE_TOKENS tokens per pass,
each 8-row group packed once per call. Per (row, token) the same bits as quants_k's row dot, so prefill and decode
agree. LLVM IR emitted by Numba intrinsics: vpdpbusd where the target has 256-bit VNNI, AVX2 pmaddubsw/pmaddwd
where it has AVX2, portable vector IR otherwise. Leaf: numpy, numba, llvmlite, ir_k, simd.py's IR toolkit and
dots_q8_0's transposes.
"""

import numpy as np
from llvmlite import ir
from numba import njit, prange
from numba.core import cgutils, types
from numba.extending import intrinsic

from .dots_q8_0 import _fma, _idot_acc, _transpose8
from .ir_k import (BLOCK_BYTES_Q8_K, KIND_Q4_K, KIND_Q5_K,
                   QK_K, _BLOCK_BYTES, _V4I32, _V8F32, _V8I32, _V16I8, _V16I16, _V32I8, _byte_ptr, _gep,
                   _k4_scales_mins, _maddubs, _maddwd, _q6_k_quants, matmul_shapes_ok)
from .config import FASTMATH
from .simd import HAS_AVX2, HAS_VNNI, _I8, _I16, _I32, _I64, _bcast, _h2f, _load_ptr, _mask, _splat

# ----------------------------------------------------------------------------------------------------------
# Prompt tiles (Q4_K / Q5_K / Q6_K): 8 weight rows x TILE_TOKENS tokens. A group of 8 rows is unpacked once per call
# into a buffer (L1/L2-resident) laid out for the tiles: lane r of every vector is row r, so one broadcast
# activation dword serves 8 rows and a sub-block's scale applies once per 32 values, not once per row.
# ----------------------------------------------------------------------------------------------------------

# One packed superblock of 8 rows: the quants as 8 chunks of 32 x 8 vectors (vector k, lane r: quants 4k..4k+3 of
# the chunk in row r); the sub-block scales as i16 pairs (sc_r, sc_r), one vector per sub-block (Q4_K/Q5_K: 8 of
# 32 values, Q6_K: 16 of 16); i16 pairs of neighbouring sub-blocks' mins (Q4_K/Q5_K: (m_r[2k], m_r[2k+1]), 4
# vectors) or scales (Q6_K: (sc_r[2k], sc_r[2k+1]), 8 vectors), dotted with the activations' sub-block sums;
# then the rows' d (and -dmin) as f32.
_Q_OFF = 0
_SC_OFF = _Q_OFF + 8 * 8 * 32
_PAIRS_OFF = {False: _SC_OFF + 8 * 32, True: _SC_OFF + 16 * 32}  # by q6
_D_OFF = {False: _PAIRS_OFF[False] + 4 * 32, True: _PAIRS_OFF[True] + 8 * 32}
_NDMIN_OFF = _D_OFF[False] + 32
PACK_BYTES = max(_NDMIN_OFF, _D_OFF[True]) + 32  # per superblock
TILE_ROWS = 8
# Tokens of a tile: its 16-bit pair sums and 32-bit block sums (two vectors a token) stay in the 16 ymm registers.
TILE_TOKENS = 4
# Matmuls of this many tokens or more run on the tiles: Q4_K/Q5_K from 2 (1.4x the row dot of matmul_k; one
# token: 0.75x), Q6_K, whose packing costs more, from 8 (1.15x; 4 tokens: 0.93x).
TILE_MIN_TOKENS = 2
TILE_MIN_TOKENS_Q6_K = 8
# Partial sums of 8 (Q4_K: 4-bit quants), 4 (Q5_K) or 2 (Q6_K) pmaddubsw results stay inside int16:
# 8 * 2 * 15 * 128, 4 * 2 * 31 * 128 and 2 * 2 * 63 * 127 are all below 32768 (|Q8_K quants| <= 127).
_GROUP = {"q4_k": 8, "q5_k": 4, "q6_k": 2}

_V8I16 = ir.VectorType(_I16, 8)


def _store(builder, v, p, off):
    builder.store(v, builder.bitcast(_gep(builder, p, off), v.type.as_pointer()), align=1)


def _scale_pairs(builder, rows, op, n_sub, pairs_off):
    """Stores the tile's scale vectors from the 8 rows' <16 x i16> (lanes 0..n_sub-1 the sub-block scales, then
    Q4_K/Q5_K's mins): sub-block s's (sc_r, sc_r) at _SC_OFF + 32s, the neighbour pairs of _transpose8's vectors
    (n_sub == 8: the min pairs, vectors 4..7; 16: the scale pairs, all 8) from pairs_off."""
    st = [builder.bitcast(v, _V16I16) for v in _transpose8(builder, [builder.bitcast(r, _V32I8) for r in rows])]
    for k in range(n_sub // 2):
        for h in range(2):  # sub-block 2k + h: its scale in both i16 lanes of row r's pair
            _store(builder, builder.shuffle_vector(st[k], st[k], _mask([2 * (i // 2) + h for i in range(16)])),
                   op, _SC_OFF + 32 * (2 * k + h))
    first = 4 if n_sub == 8 else 0
    for k in range(first, 8):
        _store(builder, st[k], op, pairs_off + 32 * (k - first))


def _half_scales(builder, wps, off):
    """<8 x f32> of the f16 at byte off of each of the 8 blocks at wps."""
    h = ir.Constant(_V8I16, ir.Undefined)
    for j, wp in enumerate(wps):
        h = builder.insert_element(h, _load_ptr(builder, _gep(builder, wp, off), _I16), ir.Constant(_I32, j))
    return _h2f(builder, h, 8)


def _chunks_q45_k(builder, wp, j4, high_bits, qh):
    """Q4_K/Q5_K chunks 2*j4 and 2*j4+1 (32 quants each) of the block at wp."""
    bits = _load_ptr(builder, _gep(builder, wp, (48 if high_bits else 16) + 32 * j4), _V32I8)
    a, c = builder.and_(bits, _splat(_I8, 32, 0x0F)), builder.lshr(bits, _splat(_I8, 32, 4))
    if high_bits:
        one = _splat(_I8, 32, 1)
        a = builder.or_(a, builder.shl(builder.and_(builder.lshr(qh, _splat(_I8, 32, 2 * j4)), one), _splat(_I8, 32, 4)))
        c = builder.or_(c, builder.shl(builder.and_(builder.lshr(qh, _splat(_I8, 32, 2 * j4 + 1)), one),
                                       _splat(_I8, 32, 4)))
    return a, c


def _pack_codegen(kind):
    bb = _BLOCK_BYTES[kind]
    q6 = kind == "q6_k"

    def codegen(context, builder, sig, args):
        wo, ws, nr, nb = [context.cast(builder, args[k], sig.args[k], types.int64) for k in (2, 3, 4, 5)]
        bp = _byte_ptr(context, builder, sig.args[0], args[0], ir.Constant(_I64, 0))
        last = builder.sub(nr, ir.Constant(_I64, 1))
        # rows past the matrix's end repeat its last row (their lanes are computed and dropped)
        rows = []
        for j in range(TILE_ROWS):
            jj = ir.Constant(_I64, j)
            r = builder.select(builder.icmp_signed("<", jj, nr), jj, last)
            rows.append(_byte_ptr(context, builder, sig.args[1], args[1], builder.add(wo, builder.mul(r, ws))))
        with cgutils.for_range(builder, nb) as loop:
            b = loop.index
            wps = [builder.gep(p, [builder.mul(b, ir.Constant(_I64, bb))]) for p in rows]
            op = builder.gep(bp, [builder.mul(b, ir.Constant(_I64, PACK_BYTES))])
            if q6:
                sc = [builder.sext(_load_ptr(builder, _gep(builder, wp, 192), _V16I8), _V16I16) for wp in wps]
                _scale_pairs(builder, sc, op, 16, _PAIRS_OFF[True])
                _store(builder, _half_scales(builder, wps, 208), op, _D_OFF[True])
                chunks = [_q6_k_quants(builder, wp) for wp in wps]  # [row][chunk]
                for c in range(8):
                    for k, v in enumerate(_transpose8(builder, [chunks[j][c] for j in range(TILE_ROWS)])):
                        _store(builder, v, op, _Q_OFF + 32 * (8 * c + k))
            else:
                high_bits = kind == "q5_k"
                _scale_pairs(builder, [_k4_scales_mins(builder, _gep(builder, wp, 4)) for wp in wps], op, 8,
                             _PAIRS_OFF[False])
                _store(builder, _half_scales(builder, wps, 0), op, _D_OFF[False])
                _store(builder, builder.fneg(_half_scales(builder, wps, 2)), op, _NDMIN_OFF)
                qh = [_load_ptr(builder, _gep(builder, wp, 16), _V32I8) if high_bits else None for wp in wps]
                for j4 in range(4):
                    lo, hi = zip(*[_chunks_q45_k(builder, wp, j4, high_bits, qh[j]) for j, wp in enumerate(wps)])
                    for h, vs in enumerate((lo, hi)):
                        for k, v in enumerate(_transpose8(builder, list(vs))):
                            _store(builder, v, op, _Q_OFF + 32 * (8 * (2 * j4 + h) + k))
        return context.get_dummy_value()

    return codegen


def _tile_codegen(kind, n_tok, simd):
    """simd: "vnni" (vpdpbusd into i32 sums), True (AVX2 pmaddubsw/pmaddwd) or False (portable IR); the integer
    sums are exact in every mode, so all give the same bits."""
    vnni = simd == "vnni"
    # dwords summed before a scale applies: int16 headroom (pmaddubsw), or a whole sub-block (vpdpbusd's i32)
    group = (4 if kind == "q6_k" else 8) if vnni else _GROUP[kind]
    q6 = kind == "q6_k"
    n_pairs = 8 if q6 else 4

    def codegen(context, builder, sig, args):
        xo, xs, nb = [context.cast(builder, args[k], sig.args[k], types.int64) for k in (2, 3, 4)]
        bp = _byte_ptr(context, builder, sig.args[0], args[0], ir.Constant(_I64, 0))
        outp = builder.bitcast(_byte_ptr(context, builder, sig.args[5], args[5], ir.Constant(_I64, 0)),
                               _V8F32.as_pointer())
        xts = [_byte_ptr(context, builder, sig.args[1], args[1], builder.add(xo, builder.mul(xs, ir.Constant(_I64, t))))
               for t in range(n_tok)]
        accs = [cgutils.alloca_once_value(builder, ir.Constant(_V8F32, None)) for _ in range(n_tok)]
        ones = _splat(_I16, 16, 1)
        with cgutils.for_range(builder, nb) as loop:
            b = loop.index
            op = builder.gep(bp, [builder.mul(b, ir.Constant(_I64, PACK_BYTES))])
            xbs = [builder.gep(p, [builder.mul(b, ir.Constant(_I64, BLOCK_BYTES_Q8_K))]) for p in xts]
            sums = [None] * n_tok
            for c in range(8):  # chunks of 32 quants
                part = [None] * n_tok
                odd = [None] * n_tok  # vnni: the odd steps' sums, a second dependency chain per token
                for k in range(8):
                    wv = _load_ptr(builder, _gep(builder, op, _Q_OFF + 32 * (8 * c + k)), _V32I8)
                    for t in range(n_tok):
                        xv = _bcast(builder, _load_ptr(builder, _gep(builder, xbs[t], 4 + 32 * c + 4 * k), _I32), 8)
                        xv = builder.bitcast(xv, _V32I8)
                        if vnni:
                            chain = part if k % 2 == 0 else odd
                            a = ir.Constant(_V8I32, None) if chain[t] is None else chain[t]
                            chain[t] = _idot_acc(builder, (wv, None), xv, a, 0, "vnni")
                        else:
                            p = _maddubs(builder, wv, xv, simd)
                            part[t] = p if part[t] is None else builder.add(part[t], p)
                    if (k + 1) % group == 0:
                        sub = 2 * c + k // 4 if q6 else c  # Q6_K: 16-value sub-blocks, dwords 0-3 and 4-7
                        pairs = _load_ptr(builder, _gep(builder, op, _SC_OFF + 32 * sub), _V16I16)
                        if vnni:  # the exact i32 sums times the sub-block's scale (the low i16 of each pair)
                            pairs = builder.bitcast(pairs, _V8I32)
                            sc = builder.ashr(builder.shl(pairs, _splat(_I32, 8, 16)), _splat(_I32, 8, 16))
                        for t in range(n_tok):
                            if vnni:
                                v = builder.mul(builder.add(part[t], odd[t]), sc)
                            else:
                                v = _maddwd(builder, part[t], pairs, simd)
                            sums[t] = v if sums[t] is None else builder.add(sums[t], v)
                            part[t] = odd[t] = None
            pv = [_load_ptr(builder, _gep(builder, op, _PAIRS_OFF[q6] + 32 * k), _V16I16) for k in range(n_pairs)]
            dv = _load_ptr(builder, _gep(builder, op, _D_OFF[q6]), _V8F32)
            ndv = None if q6 else _load_ptr(builder, _gep(builder, op, _NDMIN_OFF), _V8F32)
            for t in range(n_tok):
                # the activations' sub-block sums as i16 pairs per dword: Q8_K's 16-value bsums (Q6_K), or
                # the sums of their pairs (the 32-value sub-blocks of Q4_K/Q5_K)
                bs = _load_ptr(builder, _gep(builder, xbs[t], 4 + QK_K), _V16I16)
                if q6:
                    bsd = builder.bitcast(bs, _V8I32)
                else:
                    bsd = builder.bitcast(builder.trunc(_maddwd(builder, bs, ones, simd), _V8I16), _V4I32)
                psum = None
                for k in range(n_pairs):
                    bk = _bcast(builder, builder.extract_element(bsd, ir.Constant(_I32, k)), 8)
                    bk = builder.bitcast(bk, _V16I16)
                    v = _maddwd(builder, pv[k], bk, simd)
                    psum = v if psum is None else builder.add(psum, v)
                dx = builder.bitcast(_bcast(builder, _load_ptr(builder, xbs[t], _I32), 8), _V8F32)
                if q6:  # quants are stored +32: subtract 32 * sum_s sc[s] * bsums[s]
                    si = builder.sub(sums[t], builder.shl(psum, _splat(_I32, 8, 5)))
                    acc = _fma(builder, builder.fmul(dv, dx), builder.sitofp(si, _V8F32), builder.load(accs[t]))
                else:
                    acc = _fma(builder, builder.fmul(dv, dx), builder.sitofp(sums[t], _V8F32), builder.load(accs[t]))
                    acc = _fma(builder, builder.fmul(ndv, dx), builder.sitofp(psum, _V8F32), acc)
                builder.store(acc, accs[t])
        for t in range(n_tok):
            builder.store(builder.load(accs[t]), builder.gep(outp, [ir.Constant(_I64, t)]), align=4)
        return context.get_dummy_value()

    return codegen


def _is_c_array(t, dtype):
    return isinstance(t, types.Array) and t.dtype == dtype and t.layout == "C"


def _make_pack(kind):
    def pack(typingctx, buf, w, wo, ws, nr, nb):
        """Packs rows wo + r*ws (r < nr; later lanes repeat the last row) of w, nb superblocks, into buf."""
        if not (_is_c_array(buf, types.uint8) and _is_c_array(w, types.uint8)
                and all(isinstance(a, types.Integer) for a in (wo, ws, nr, nb))):
            return None
        return types.none(buf, w, wo, ws, nr, nb), _pack_codegen(kind)

    return intrinsic(pack)


def _make_tile(kind, n_tok, simd):
    def tile(typingctx, buf, x, xo, xs, nb, out):
        """out[t*8 + r] = row r of the packed buf . Q8_K row at x[xo + t*xs:], t < n_tok."""
        if not (_is_c_array(buf, types.uint8) and _is_c_array(x, types.uint8) and _is_c_array(out, types.float32)
                and all(isinstance(a, types.Integer) for a in (xo, xs, nb))):
            return None
        return types.none(buf, x, xo, xs, nb, out), _tile_codegen(kind, n_tok, simd)

    return intrinsic(tile)


# Tile modes, fastest first: vpdpbusd (AVX-VNNI, or AVX512-VNNI with VL), AVX2 pmaddubsw, portable IR. The host
# takes the first its target has.
MODES = [m for m, ok in (("vnni", HAS_VNNI), (True, HAS_AVX2), (False, True)) if ok]
_MODE = MODES[0]
_pack_q4_k = _make_pack("q4_k")
_pack_q5_k = _make_pack("q5_k")
_pack_q6_k = _make_pack("q6_k")
_tile_q4_k = _make_tile("q4_k", TILE_TOKENS, _MODE)
_tile1_q4_k = _make_tile("q4_k", 1, _MODE)
_tile_q5_k = _make_tile("q5_k", TILE_TOKENS, _MODE)
_tile1_q5_k = _make_tile("q5_k", 1, _MODE)
_tile_q6_k = _make_tile("q6_k", TILE_TOKENS, _MODE)
_tile1_q6_k = _make_tile("q6_k", 1, _MODE)


@njit(cache=True, nogil=True, fastmath=FASTMATH, parallel=True)
def matmul_k_tiles(dst, w, xq, kind):
    """dst = xq @ w.T for k-quant weights (kind KIND_Q4_K / KIND_Q5_K / KIND_Q6_K) and Q8_K activations.

    Shapes as matmul_k. Per (row, token) the same bits as the row dot (_make_vdot_rows): each superblock's
    integer sums exact, then acc = fma(d*dx, sum, acc) (Q4_K/Q5_K: and acc = fma(-dmin*dx, min sum, acc)) in f32.
    """
    n_tok = xq.shape[0]
    n_out = w.shape[0]
    nb = xq.shape[1] // BLOCK_BYTES_Q8_K
    if not matmul_shapes_ok(dst, w, xq, kind):
        raise ValueError("matmul_k_tiles: shape mismatch")
    wb = w.shape[1]
    xb = xq.shape[1]
    n_groups = (n_out + TILE_ROWS - 1) // TILE_ROWS
    n_items = (n_groups + 1) // 2  # two 8-row groups a work item: one buffer allocation serves both
    n_tok_t = n_tok - n_tok % TILE_TOKENS
    for it in prange(n_items):
        buf = np.empty(nb * PACK_BYTES, np.uint8)
        out = np.empty(TILE_TOKENS * TILE_ROWS, np.float32)
        for g in range(2 * it, min(n_groups, 2 * it + 2)):
            r0 = g * TILE_ROWS
            nr = min(TILE_ROWS, n_out - r0)
            _pack_k(kind, buf, w, r0 * wb, wb, nr, nb)
            for t0 in range(0, n_tok, TILE_TOKENS):
                m = TILE_TOKENS if t0 < n_tok_t else 1
                for t in range(t0, min(n_tok, t0 + TILE_TOKENS), m):
                    _tile_k(kind, m, buf, xq, t * xb, xb, nb, out)
                    _tile_out(dst, out, t, m, r0, nr)


@njit(cache=True, nogil=True, inline="always")
def _pack_k(kind, buf, w, wo, ws, nr, nb):
    """Rows wo + r*ws (r < nr) of k-quant weights w packed into buf for the prompt tiles."""
    if kind == KIND_Q4_K:
        _pack_q4_k(buf, w, wo, ws, nr, nb)
    elif kind == KIND_Q5_K:
        _pack_q5_k(buf, w, wo, ws, nr, nb)
    else:
        _pack_q6_k(buf, w, wo, ws, nr, nb)


@njit(cache=True, nogil=True, inline="always")
def _tile_k(kind, m, buf, xq, xo, xs, nb, out):
    """m tokens (TILE_TOKENS or 1) of the packed rows in buf (kind KIND_Q4_K/Q5_K/Q6_K)."""
    if kind == KIND_Q4_K:
        if m == TILE_TOKENS:
            _tile_q4_k(buf, xq, xo, xs, nb, out)
        else:
            _tile1_q4_k(buf, xq, xo, xs, nb, out)
    elif kind == KIND_Q5_K:
        if m == TILE_TOKENS:
            _tile_q5_k(buf, xq, xo, xs, nb, out)
        else:
            _tile1_q5_k(buf, xq, xo, xs, nb, out)
    elif m == TILE_TOKENS:
        _tile_q6_k(buf, xq, xo, xs, nb, out)
    else:
        _tile1_q6_k(buf, xq, xo, xs, nb, out)


@njit(cache=True, nogil=True, inline="always")
def _tile_out(dst, out, t, m, r0, nr):
    """A tile's m tokens x nr rows (out, token-major, TILE_ROWS a token) to dst[t:t+m, r0:r0+nr]."""
    for i in range(m):
        for r in range(nr):
            dst[t + i, r0 + r] = out[i * TILE_ROWS + r]


def serial_tiles(mode):
    """A serial matmul_k_tiles (n_tok a multiple of TILE_TOKENS) through one mode's packs and tiles, compiled on
    first use; a test aid that checks every mode the host can run against the row dot's bits."""
    if mode not in _SERIAL:
        t4, t5, t6 = (_make_tile(k, TILE_TOKENS, mode) for k in ("q4_k", "q5_k", "q6_k"))

        @njit(nogil=True, fastmath=FASTMATH)
        def run(dst, w, xq, kind):
            nb = xq.shape[1] // BLOCK_BYTES_Q8_K
            wb = w.shape[1]
            xb = xq.shape[1]
            buf = np.empty(nb * PACK_BYTES, np.uint8)
            out = np.empty(TILE_TOKENS * TILE_ROWS, np.float32)
            for r0 in range(0, w.shape[0], TILE_ROWS):
                nr = min(TILE_ROWS, w.shape[0] - r0)
                _pack_k(kind, buf, w, r0 * wb, wb, nr, nb)
                for t in range(0, xq.shape[0], TILE_TOKENS):
                    if kind == KIND_Q4_K:
                        t4(buf, xq, t * xb, xb, nb, out)
                    elif kind == KIND_Q5_K:
                        t5(buf, xq, t * xb, xb, nb, out)
                    else:
                        t6(buf, xq, t * xb, xb, nb, out)
                    _tile_out(dst, out, t, TILE_TOKENS, r0, nr)

        _SERIAL[mode] = run
    return _SERIAL[mode]


_SERIAL = {}
