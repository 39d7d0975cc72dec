"""Multi-head latent attention (DeepSeek2 MLA) over a K-only latent cache: validation, tiling, kernel call.

`flash_mla` runs the absorbed attention (FlashMLA kernel), `MLADecode` a decoded token's whole absorbed
attention (W_UK, FlashMLA, W_UV) in one call; `latent_rows` dequantizes cached latent rows for the
decompressing prompt path. The `*_device` functions run a ubatch's absorbed attention on numba-cuda device
arrays (pyrt._kernels.cuda, imported on first use). Imports pyrt._kernels, pyrt.formats, pyrt.ops, pyrt.io.files
and pyrt.errors only; the cache rows arrive as arrays from the caller.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass

import numpy as np
from gguf import GGMLQuantizationType as T

from .._kernels import attention_mla as ak
from .._kernels import fused_mla as fk
from .._kernels import kv as kvk
from ..errors import InvalidArgumentError, UnsupportedError
from ..formats.cache_types import CACHE_TYPES
from ..formats.qtypes import get_qtype
from ..io.files import cache_dir, write_file_atomic
from . import paths
from .attention import CacheRows, DecodeSlot, rows_view
from .matmul import _check_raw, _readonly, amx_enabled

_KINDS = {c.name: c.code for c in CACHE_TYPES.values() if c.block_size}  # q8_KV: per-head segments, not MLA's row
MLA_CACHE_TYPES = tuple(_KINDS)

KV_TILE = 32
Q_ROWS = 64          # query rows (tokens x heads) per work item
Q_ROWS_AMX = 256     # ... on AMX tiles (single thread, 16 tokens per item: 0.113-0.127 us/cell/token, 8: 0.142)
MIN_ITEMS = 16       # work items wanted before the KV range is split (a constant: thread-count independent)
MIN_SPLIT_CELLS = 256


def check_cache_type(type_name: str) -> None:
    if type_name not in _KINDS:
        why = (" (q8_KV keeps one header per row segment; the V view into the c_kv part of the row would "
               "start inside a segment, see the MLA notes)") if type_name == "q8_KV" else ""
        raise UnsupportedError(f"MLA latent cache: type {type_name!r} is not supported; use one of "
                               f"{', '.join(MLA_CACHE_TYPES)}{why}")


def amx_config() -> np.ndarray:
    """The AMX-BF16 tile configuration for FlashMLA's tile items where they may run (the target has AMX-BF16,
    paths.amx is on and the process got the tile state), else an empty array (the f32 items). Where the f16
    cache's items run on AMX-FP16 tiles (amx_fp16()), one byte 1 follows the 64."""
    from .._kernels.attention_mla_amx import HAS_AMX_BF16, config_bytes
    if HAS_AMX_BF16 and paths.current().amx and amx_enabled():
        if not _AMX_CFG:
            cfg = config_bytes()
            _AMX_CFG.append(np.concatenate([cfg, np.ones(1, np.uint8)]) if amx_fp16() else cfg)
        return _AMX_CFG[0]
    return _NO_AMX


_AMX_CFG: list = []
_NO_AMX = np.empty(0, np.uint8)


def amx_fp16() -> bool:
    """Whether an f16 cache's FlashMLA items run on AMX-FP16 tiles (attention_mla_amx16; about 25% less attention
    time at depth than the bf16 items and 1e-14 error instead of 1e-11), asked where the bf16 items may run.

    Yes where the CPU declares AMX-FP16. Some hypervisors hide the bit of CPUs that have the instruction; there a
    probe decides: one tile product in a child process (a CPU without the instruction kills the child, not this
    process). Its verdict is kept in pyrt's cache folder under a key of the CPU's identity (amx_fp16_verdict_path)
    so that later processes on the same CPU do not start the child again; a child that could not start or tell
    leaves no verdict (no, for this process). PYRT_AMX_FP16=0: no; =1: probe again and replace the stored
    verdict."""
    from .._kernels.attention_mla_amx16 import HAS_AMX_FP16_CPU, probe_child
    env = os.environ.get("PYRT_AMX_FP16", "")
    if env == "0":
        return False
    if HAS_AMX_FP16_CPU:
        return True
    path = amx_fp16_verdict_path()
    if env != "1" and path is not None:
        try:
            stored = path.read_text()
        except (OSError, UnicodeError):
            stored = ""
        if stored in ("0\n", "1\n"):
            return stored == "1\n"
    ok = probe_child()
    if ok is not None and path is not None:  # no verdict kept where the child could not tell
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            write_file_atomic(path, [b"1\n" if ok else b"0\n"], what="CPU probe verdict")
        except OSError:  # FileAccessError too: a read-only cache folder probes in each process
            pass
    return bool(ok)


def amx_fp16_verdict_path():
    """Where amx_fp16 keeps its probe's verdict: cache_dir()/cpu/amx-fp16-<hash of the first processor's vendor,
    family, model, stepping, microcode, name and flags in /proc/cpuinfo>; None where that file is unreadable."""
    try:
        with open("/proc/cpuinfo") as fh:
            first = fh.read().split("\n\n", 1)[0]
    except OSError:
        return None
    keys = ("vendor_id", "cpu family", "model", "model name", "stepping", "microcode", "flags")
    facts = [ln for ln in first.splitlines() if ln.split(":", 1)[0].strip() in keys]
    if not facts:
        return None
    key = hashlib.sha256("\n".join(facts).encode()).hexdigest()[:16]
    return cache_dir() / "cpu" / f"amx-fp16-{key}"


def amx_takes(type_k: str, n_head: int, n_rot: int, C: int) -> bool:
    """Whether FlashMLA runs on AMX-BF16 tiles for this cache type and these shapes (amx_config, and the items'
    own rule). There, unless the decompressed attention runs on the tiles as well (heads_amx_takes), deepseek2's
    -mla 2/3 prompts over paths.mla_amx_min_cells cells or more take the absorbed attention."""
    from .._kernels.attention_mla_amx import amx_fits
    return (type_k in _KINDS and amx_config().size > 0
            and bool(amx_fits(_KINDS[type_k], n_head, n_rot + C, C)))


def choose_tiles(n_tok: int, n_head: int, n_kv: int, amx: bool = False, groups: int = 1) -> tuple[int, int, int]:
    """(q_tile, kv_tile, n_split): all heads of q_tile tokens per item (more rows on AMX tiles, where a tile's
    conversion serves every row), items for each of `groups` separate row sets (heads with their own cells);
    split the KV range for decode."""
    q_tile = max(1, min(n_tok, (Q_ROWS_AMX if amx else Q_ROWS) // max(1, n_head)))
    items = groups * ((n_tok + q_tile - 1) // q_tile)
    n_split = 1
    if items < MIN_ITEMS:
        n_split = max(1, min((MIN_ITEMS + items - 1) // items, n_kv // MIN_SPLIT_CELLS))
    return q_tile, KV_TILE, n_split


def _flash_args(n_tok: int, n_head: int, dk: int, k: np.ndarray, type_k: str, cell_pos, cell_seq, kv_idx, q_pos,
                q_seq, scale: float, n_rot: int):
    """Validates the cache side of an absorbed attention call; returns the kernel's (k, kind, cell_pos, cell_seq,
    kv_idx, q_pos, q_seq) arguments."""
    check_cache_type(type_k)
    dv = dk - int(n_rot)
    if n_rot <= 0 or dv <= 0:
        raise InvalidArgumentError(f"flash_mla: n_rot {n_rot} does not fit rows of {dk}")
    if not isinstance(k, np.ndarray) or k.ndim != 2 or not k.flags.c_contiguous:
        raise InvalidArgumentError("flash_mla: cache rows must be a C-contiguous 2-D array")
    if type_k == "q8_0":
        if dk % 32 or n_rot % 32:
            raise InvalidArgumentError("flash_mla: q8_0 rows need n_rot and the row width to be multiples of 32")
        width = dk // 32 * 34
        if k.dtype != np.uint8:
            raise InvalidArgumentError("flash_mla: q8_0 rows must be uint8")
    else:
        width = dk
        want = {"f32": (np.float32,), "f16": (np.float16, np.uint16), "bf16": (np.uint16,)}[type_k]
        if k.dtype not in want:
            raise InvalidArgumentError(f"flash_mla: {type_k} rows have dtype {k.dtype}")
    if k.shape[1] < width:
        raise InvalidArgumentError(f"flash_mla: cache rows hold {k.shape[1]} entries, need {width}")
    n_cells = k.shape[0]
    cell_pos = np.ascontiguousarray(cell_pos)
    cell_seq = np.ascontiguousarray(cell_seq)
    if cell_pos.dtype != np.int32 or cell_seq.dtype != np.uint64 or cell_pos.shape[0] < n_cells \
            or cell_seq.shape[0] < n_cells:
        raise InvalidArgumentError(f"flash_mla: cell_pos int32 and cell_seq uint64 of >= {n_cells} cells required")
    kv_idx = np.ascontiguousarray(kv_idx)
    if kv_idx.ndim != 1 or kv_idx.dtype != np.int32 or (kv_idx.size and (kv_idx.min() < 0 or kv_idx.max() >= n_cells)):
        raise InvalidArgumentError(f"flash_mla: kv_idx must be int32 cell indices in [0, {n_cells})")
    q_pos = np.ascontiguousarray(q_pos, dtype=np.int32)
    q_seq = np.ascontiguousarray(q_seq, dtype=np.int32)
    if q_pos.shape != (n_tok,) or q_seq.shape != (n_tok,):
        raise InvalidArgumentError(f"flash_mla: q_pos and q_seq must have {n_tok} entries")
    if n_tok and (q_seq.min() < 0 or q_seq.max() >= 64):
        raise InvalidArgumentError("flash_mla: q_seq values must be in [0, 64)")
    if not np.isfinite(scale):
        raise InvalidArgumentError("flash_mla: scale must be finite")
    return rows_view(k, type_k), _KINDS[type_k], cell_pos, cell_seq, kv_idx, q_pos, q_seq


def flash_mla(q: np.ndarray, k: np.ndarray, type_k: str, cell_pos: np.ndarray, cell_seq: np.ndarray,
              kv_idx: np.ndarray, q_pos: np.ndarray, q_seq: np.ndarray, scale: float, n_rot: int,
              out: np.ndarray | None = None) -> np.ndarray:
    """Absorbed attention of q [n_tok, n_head, n_rot + C] f32 over latent rows k [n_cells, row] -> [n_tok, n_head, C].

    q's per-head rows are [q_pe | q_nope . W_UK] and the cache rows [k_pe | c_kv] (same order); V is
    the c_kv part of each row (no V cache). kv_idx: the visible cells in scan order (int32). A device q
    (a numba-cuda array) runs flash_mla_device, every other argument on that device too.
    """
    if is_device_array(q):
        return flash_mla_device(q, k, type_k, cell_pos, cell_seq, kv_idx, q_pos, q_seq, scale, n_rot, out=out)
    if not isinstance(q, np.ndarray) or q.dtype != np.float32 or q.ndim != 3:
        raise InvalidArgumentError("flash_mla: q must be float32 [n_tok, n_head, n_rot + kv_lora_rank]")
    q = np.ascontiguousarray(q)
    n_tok, n_head, dk = q.shape
    args = _flash_args(n_tok, n_head, dk, k, type_k, cell_pos, cell_seq, kv_idx, q_pos, q_seq, scale, n_rot)
    dv = dk - int(n_rot)
    if out is None:
        out = np.empty((n_tok, n_head, dv), dtype=np.float32)
    elif out.dtype != np.float32 or out.shape != (n_tok, n_head, dv) or not out.flags.c_contiguous:
        raise InvalidArgumentError(f"flash_mla: out must be C-contiguous float32 {(n_tok, n_head, dv)}")
    if n_tok == 0:
        return out
    cfg = amx_config()
    q_tile, kv_tile, n_split = choose_tiles(n_tok, n_head, args[4].shape[0], amx_takes(type_k, n_head, n_rot, dv))
    k_, kind, cell_pos, cell_seq, kv_idx, q_pos, q_seq = args
    ak.flash_attn_mla(out, q, k_, kind, int(n_rot), cell_pos, cell_seq, kv_idx, q_pos, q_seq, np.float32(scale),
                      q_tile, kv_tile, n_split, cfg)
    return out


def _heads_fit(dk: int, dv: int) -> bool:
    """heads_attention_amx runs here (amx_config) for these widths (32-value score and value blocks)."""
    return amx_config().size > 0 and dk > 0 and dv > 0 and dk % 32 == 0 and dv % 32 == 0


def heads_amx_takes(dk: int, dv: int, type_k: str) -> bool:
    """Whether the decompressed attention of cells cached as type_k runs on heads_attention_amx's tiles: where
    they fit (_heads_fit), and not for an f32 cache, which keeps f32 arithmetic (the tiles keep 16 significand
    bits), as FlashMLA's tile items do."""
    return type_k in _KINDS and type_k != "f32" and _heads_fit(dk, dv)


def head_rows(pe: np.ndarray, kv: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """[n, n_head, r + w] f32 rows [pe[c] | kv[c, h]] from pe [n, r] (shared by the heads) and kv [n, n_head, w]
    f32: heads_attention_amx's rows from the cached rope part and the decompressed [k_nope | v] of each head.
    out: optional C-contiguous f32 array of that shape."""
    if (pe.dtype != np.float32 or kv.dtype != np.float32 or pe.ndim != 2 or kv.ndim != 3
            or pe.shape[0] != kv.shape[0]):
        raise InvalidArgumentError("head_rows: pe [n, r] and kv [n, n_head, w] float32 with the same n")
    shape = (kv.shape[0], kv.shape[1], pe.shape[1] + kv.shape[2])
    if out is None:
        out = np.empty(shape, np.float32)
    elif out.dtype != np.float32 or out.shape != shape or not out.flags.c_contiguous:
        raise InvalidArgumentError(f"head_rows: out must be C-contiguous float32 {shape}")
    ak.head_rows(out, pe, kv)
    return out


def heads_attention_amx(q: np.ndarray, rows: np.ndarray, dv: int, cell_pos: np.ndarray, cell_seq: np.ndarray,
                        q_pos: np.ndarray, q_seq: np.ndarray, scale: float) -> np.ndarray:
    """Prompt attention of heads that each have their own K and V (the decompressed MLA cells) on AMX-BF16
    tiles (the CPU has them and dk, dv are multiples of 32: UnsupportedError otherwise).

    q [n_tok, n_head, dk] f32; rows [n_vis, n_head, w] f32 C-contiguous: the visible cells in scan order, per
    head K's dk values first (q's order) and V's dv values last (w >= dk + dv); cell_pos int32, cell_seq
    uint64 [n_vis]; q_pos, q_seq [n_tok]. Returns [n_tok, n_head * dv] f32 (zeros for a query that sees no
    cell). Operands enter the tiles as two bf16 terms (16 significand bits, attention_mla_amx).
    """
    if not isinstance(q, np.ndarray) or q.dtype != np.float32 or q.ndim != 3:
        raise InvalidArgumentError("heads_attention: q must be float32 [n_tok, n_head, dk]")
    n_tok, n_head, dk = q.shape
    if (not isinstance(rows, np.ndarray) or rows.dtype != np.float32 or rows.ndim != 3
            or not rows.flags.c_contiguous or rows.shape[1] != n_head or rows.shape[2] < dk + dv):
        raise InvalidArgumentError(f"heads_attention: rows must be C-contiguous float32 [n_vis, {n_head}, >= "
                                   f"{dk + dv}]")
    if not _heads_fit(dk, dv):
        raise UnsupportedError("heads_attention: needs AMX-BF16 tiles and widths that are multiples of 32")
    n_vis = rows.shape[0]
    cell_pos = np.ascontiguousarray(cell_pos, dtype=np.int32)
    cell_seq = np.ascontiguousarray(cell_seq, dtype=np.uint64)
    q_pos = np.asarray(q_pos, dtype=np.int32)
    q_seq = np.asarray(q_seq, dtype=np.int32)
    if cell_pos.shape != (n_vis,) or cell_seq.shape != (n_vis,) or q_pos.shape != (n_tok,) \
            or q_seq.shape != (n_tok,):
        raise InvalidArgumentError("heads_attention: one position and sequence set per cell and per query")
    if n_tok and (q_seq.min() < 0 or q_seq.max() >= 64):
        raise InvalidArgumentError("heads_attention: q_seq values must be in [0, 64)")
    if n_tok == 0:
        return np.empty((0, n_head * dv), np.float32)
    # 16-row tile groups of one head: the queries padded to a multiple of 16 with copies of the last one
    n_pad = -(-n_tok // 16) * 16
    qh = np.empty((n_head, n_pad, dk), np.float32)
    qh[:, :n_tok] = q.transpose(1, 0, 2)
    qh[:, n_tok:] = qh[:, n_tok - 1:n_tok]
    qp_ = np.empty(n_pad, np.int32)
    qs_ = np.empty(n_pad, np.int32)
    qp_[:n_tok], qp_[n_tok:] = q_pos, q_pos[-1]
    qs_[:n_tok], qs_[n_tok:] = q_seq, q_seq[-1]
    q_tile, _, n_split = choose_tiles(n_pad, 1, n_vis, amx=True, groups=n_head)
    out = np.empty((n_pad, n_head, dv), np.float32)
    w = rows.shape[2]
    ak.flash_attn_heads_amx(out, ak.pack_q(qh), rows.view(np.uint32), w - dv, cell_pos, cell_seq,
                            np.arange(n_vis, dtype=np.int32), qp_, qs_, np.float32(scale), q_tile, n_split,
                            amx_config())
    return out[:n_tok].reshape(n_tok, n_head * dv)


# weights the fused decode kernels dot (the Q8_0 family against Q8_0 activations, the K-quants against Q8_K),
# with their kernel codes; W_UK's rows (dn values) are never K-quants. Whether the fused paths are taken at all
# is ops.paths' fused_mla_decode / fused_mla_block
_FUSED_W = {int(t): get_qtype(t).code for t in (T.Q8_0, T.Q4_0, T.Q5_0, T.Q4_K, T.Q5_K, T.Q6_K)}
_FUSED_KB = {int(t): get_qtype(t).code for t in (T.Q8_0, T.Q4_0, T.Q5_0)}


class MLADecode:
    """One layer's W_UK / W_UV checked once, for fused_mla.mla_decode (absorbed attention of one token:
    q_nope . W_UK, FlashMLA, . W_UV in one call). `build` returns None unless W_UK is Q8_0/Q4_0/Q5_0 and W_UV
    one of those or Q4_K/Q5_K/Q6_K."""

    def __init__(self, k_b, kb_kind, v_b, v_row0, vb_kind, n_head, C, dn, dv):
        self.k_b, self.kb_kind, self.v_b, self.v_row0, self.vb_kind = k_b, kb_kind, v_b, v_row0, vb_kind
        self.n_head, self.C, self.dn, self.dv = n_head, C, dn, dv

    @classmethod
    def build(cls, k_b, k_b_type: int, v_b, v_row0, v_b_type: int, n_head: int, C: int, dn: int,
              dv: int) -> "MLADecode | None":
        """k_b: [n_head*C, row bytes of dn] raw rows; v_b: raw rows of C values, head h's dv rows from v_row0[h]."""
        if (not paths.current().fused_mla_decode or int(k_b_type) not in _FUSED_KB or int(v_b_type) not in _FUSED_W
                or dn % 32 or C % 32):
            return None
        k_b = _check_raw(k_b, get_qtype(k_b_type), dn, "mla W_UK")
        v_b = _check_raw(v_b, get_qtype(v_b_type), C, "mla W_UV")
        v_row0 = np.ascontiguousarray(v_row0, dtype=np.int64)
        if k_b.shape[0] != n_head * C or v_row0.shape != (n_head,) or (v_row0 < 0).any() \
                or (v_row0 + dv > v_b.shape[0]).any():
            raise InvalidArgumentError(f"mla: W_UK / W_UV do not hold {n_head} heads of {C} x {dn} / {dv} x {C}")
        return cls(k_b, _FUSED_KB[int(k_b_type)], v_b, v_row0, _FUSED_W[int(v_b_type)], n_head, C, dn, dv)

    def __call__(self, q_nope: np.ndarray, q_pe: np.ndarray, k: np.ndarray, type_k: str, cell_pos, cell_seq,
                 kv_idx, q_pos, q_seq, scale: float) -> np.ndarray:
        """q_nope [n_head, dn], q_pe [n_head, n_rot] f32 of one token -> [n_head, dv] f32."""
        H = self.n_head
        for name, a, w in (("q_nope", q_nope, self.dn), ("q_pe", q_pe, None)):
            if (not isinstance(a, np.ndarray) or a.dtype != np.float32 or a.ndim != 2 or a.shape[0] != H
                    or (w is not None and a.shape[1] != w) or not a.flags.c_contiguous):
                raise InvalidArgumentError(f"mla: {name} must be a C-contiguous float32 [{H}, ...] array")
        n_rot = q_pe.shape[1]
        k_, kind, cell_pos, cell_seq, kv_idx, q_pos, q_seq = _flash_args(
            1, H, n_rot + self.C, k, type_k, cell_pos, cell_seq, kv_idx, q_pos, q_seq, scale, n_rot)
        _, kv_tile, n_split = choose_tiles(1, H, kv_idx.shape[0])
        out = np.empty((H, self.dv), np.float32)
        fk.mla_decode(out, q_nope, q_pe, self.k_b, self.kb_kind, self.v_b, self.v_row0, self.vb_kind, k_,
                      kind, cell_pos, cell_seq, kv_idx, q_pos, q_seq, np.float32(scale), kv_tile, n_split,
                      amx_config())
        return out


def _f32_vec(name: str, a, n: int, what: str = "mla block") -> np.ndarray:
    """a, checked to be a C-contiguous float32 [n] array (InvalidArgumentError naming `what` and `name`)."""
    if not isinstance(a, np.ndarray) or a.dtype != np.float32 or a.shape != (n,) or not a.flags.c_contiguous:
        raise InvalidArgumentError(f"{what}: {name} must be a C-contiguous float32 [{n}] array")
    return a


def _weight_vec(name: str, a, n: int, what: str = "mla block") -> np.ndarray:
    """_f32_vec(name, a, n, what), read-only (matmul._readonly: one compiled signature of the fused kernels
    whether the vector was mapped from the file or made at load)."""
    return _readonly(_f32_vec(name, a, n, what))


@dataclass(frozen=True, slots=True, eq=False)
class MLABlockDecode:
    """One deepseek2 layer's attention block for a decoded token, checked once at load, for
    fused_mla.mla_block_decode: x += attn_output(MLA(rms_norm(x) * attn_norm)), the cache row stored.

    `build` returns None unless every projection (q or q_a/q_b, kv_a, attn_output) is Q8_0/Q4_0/Q5_0/Q4_K/
    Q5_K/Q6_K without a bias and the absorbed attention has an MLADecode; those layers run op by op. Per
    ubatch, `slot` checks the cache side once; per layer, the call checks only that layer's cache rows.
    """

    decode: MLADecode          # the layer's W_UK / W_UV
    attn_norm: np.ndarray      # [n_embd] f32
    wq: np.ndarray             # [n_q, row bytes of n_embd] uint8: attn_q (n_q = n_head*(dn + n_rot)) or attn_q_a
    q_kind: int                # wq's kernel code (pyrt._kernels.codes), as the other *_kind
    wkv: np.ndarray            # [C + n_rot, row bytes of n_embd] uint8: attn_kv_a_mqa
    kv_kind: int
    wqb: np.ndarray            # [n_head*(dn + n_rot), row bytes of n_q] uint8: attn_q_b; [0, 34] without q_lora
    qb_kind: int               # 0 without q_lora
    q_a_norm: np.ndarray       # [n_q] f32; [0] without q_lora
    kv_a_norm: np.ndarray      # [C] f32
    wo: np.ndarray             # [n_embd, row bytes of n_head*dv] uint8: attn_output
    wo_kind: int
    n_embd: int
    n_rot: int
    eps: float

    @classmethod
    def build(cls, decode: "MLADecode | None", attn_norm, q, q_a_norm, q_b, kv_a, kv_a_norm, wo, n_embd: int,
              n_rot: int, eps: float) -> "MLABlockDecode | None":
        """q, q_b, kv_a, wo: (raw rows, ggml type) of attn_q (or attn_q_a), attn_q_b (None without q_lora),
        attn_kv_a_mqa and attn_output; attn_norm, q_a_norm (None without q_lora), kv_a_norm: f32 vectors."""
        if decode is None or not paths.current().fused_mla_block:
            return None
        mats = [q, kv_a, wo] + ([q_b] if q_b is not None else [])
        if any(int(t) not in _FUSED_W for _, t in mats) or n_embd % 32 or n_rot % 2:
            return None
        H, C, dn, dv = decode.n_head, decode.C, decode.dn, decode.dv
        dk = dn + n_rot
        n_q = H * dk if q_b is None else q[0].shape[0]
        if n_q % 32 or (H * dv) % 32:
            return None
        wq = _check_raw(q[0], get_qtype(q[1]), n_embd, "mla block q")
        wkv = _check_raw(kv_a[0], get_qtype(kv_a[1]), n_embd, "mla block kv_a")
        wo_ = _check_raw(wo[0], get_qtype(wo[1]), H * dv, "mla block attn_output")
        if q_b is not None:
            wqb = _check_raw(q_b[0], get_qtype(q_b[1]), n_q, "mla block q_b")
            qan = _weight_vec("q_a_norm", q_a_norm, n_q)
            qb_kind = _FUSED_W[int(q_b[1])]
        else:
            wqb = _readonly(np.zeros((0, 34), np.uint8))
            qan = _readonly(np.zeros(0, np.float32))
            qb_kind = 0
        n_qh = wqb.shape[0] if q_b is not None else wq.shape[0]
        if n_qh != H * dk or wkv.shape[0] != C + n_rot or wo_.shape[0] != n_embd:
            raise InvalidArgumentError(f"mla block: q / kv_a / attn_output rows ({n_qh}, {wkv.shape[0]}, "
                                       f"{wo_.shape[0]}) do not fit {H} heads of {dk}, {C} + {n_rot} and {n_embd}")
        return cls(decode=decode, attn_norm=_weight_vec("attn_norm", attn_norm, n_embd), wq=wq,
                   q_kind=_FUSED_W[int(q[1])], wkv=wkv, kv_kind=_FUSED_W[int(kv_a[1])], wqb=wqb, qb_kind=qb_kind,
                   q_a_norm=qan, kv_a_norm=_weight_vec("kv_a_norm", kv_a_norm, C), wo=wo_,
                   wo_kind=_FUSED_W[int(wo[1])], n_embd=n_embd, n_rot=n_rot, eps=float(eps))

    def slot(self, k: np.ndarray, type_k: str, cell_pos, cell_seq, kv_idx, q_pos, q_seq, cells,
             scale: float) -> DecodeSlot:
        """The ubatch's cache-side arguments, validated once for every layer: k is one layer's cache rows
        [n_cells, row] (every layer's must match it), cells the [1] cell the token writes."""
        d = self.decode
        k_, kind, cell_pos, cell_seq, kv_idx, q_pos, q_seq = _flash_args(
            1, d.n_head, self.n_rot + d.C, k, type_k, cell_pos, cell_seq, kv_idx, q_pos, q_seq, scale, self.n_rot)
        cells = np.asarray(cells)
        if cells.shape != (1,) or not 0 <= int(cells[0]) < k.shape[0]:
            raise InvalidArgumentError(f"mla block: the token's cell must be one index in [0, {k.shape[0]})")
        _, kv_tile, n_split = choose_tiles(1, d.n_head, kv_idx.shape[0])
        return DecodeSlot(CacheRows.of(k, type_k), None, int(cells[0]), cell_pos, cell_seq, kv_idx, q_pos, q_seq,
                          np.float32(scale), 1, kv_tile, n_split)

    def __call__(self, x: np.ndarray, cos: np.ndarray, sin: np.ndarray, k: np.ndarray, slot: DecodeSlot) -> None:
        """x [n_embd] f32 (one token's residual stream, updated in place); cos, sin [n_rot/2] f32 its RoPE
        row; k this layer's cache rows (as given to `slot`)."""
        if (not isinstance(x, np.ndarray) or x.dtype != np.float32 or x.shape != (self.n_embd,)
                or not x.flags.c_contiguous or not x.flags.writeable):
            raise InvalidArgumentError(f"mla block: x must be a writable C-contiguous float32 [{self.n_embd}] array")
        half = self.n_rot // 2
        _f32_vec("cos", cos, half)
        _f32_vec("sin", sin, half)
        kc = slot.k.view(k, "mla block")
        d = self.decode
        fk.mla_block_decode(x, self.attn_norm, self.eps, self.wq, self.q_kind, self.wkv, self.kv_kind,
                            self.wqb, self.qb_kind, self.q_a_norm, self.kv_a_norm, cos, sin, d.k_b,
                            d.kb_kind, d.v_b, d.v_row0, d.vb_kind, kc, slot.k.kind,
                            slot.cell, slot.cell_pos, slot.cell_seq, slot.kv_idx, slot.q_pos, slot.q_seq,
                            slot.scale, slot.kv_tile, slot.n_split, amx_config(), self.wo, self.wo_kind, d.dn,
                            d.dv)


def latent_rows(k: np.ndarray, type_k: str, cells: np.ndarray, n: int) -> np.ndarray:
    """Dequantized cache rows k[cells] of n values: [len(cells), n] f32 (the decompressing path's input)."""
    check_cache_type(type_k)
    c = np.ascontiguousarray(cells, dtype=np.int32)
    if c.size and (c.min() < 0 or c.max() >= k.shape[0]):
        raise InvalidArgumentError("latent_rows: cell index out of range")
    out = np.empty((c.shape[0], n), np.float32)
    kvk.dequant_rows(out, rows_view(k, type_k), _KINDS[type_k], 1, c)
    return out


def yarn_rope_cache(pos: np.ndarray, n_rot: int, freq_base: float, freq_scale: float, ext_factor: float,
                    corr_dims: tuple[float, float], mscale: float):
    """A RopeCache (pyrt.ops.basic) whose angle tables follow ggml's YaRN rope (rope_yarn)."""
    from .._kernels import yarn
    from .basic import ROPE_NORM, RopeCache
    rc = RopeCache(pos, n_rot, freq_base, 1.0, None, ROPE_NORM)
    if ext_factor != 0.0 or freq_scale != 1.0 or mscale != 1.0:
        yarn.rope_cache_yarn_f32(rc.cos, rc.sin, np.ascontiguousarray(pos, dtype=np.int32), float(freq_base),
                                 float(freq_scale), float(ext_factor), float(corr_dims[0]), float(corr_dims[1]),
                                 float(mscale))
    return rc


# ------------------------------------------------------------------------------------------------ the device
# The same entry points over device arrays (numba-cuda), for the cuda backend. The kernels are imported on
# first use, so a CPU install never imports numba.cuda.

def is_device_array(x) -> bool:
    """True for a numba-cuda device array (or the simulator's stand-in): what the device entry points take."""
    return type(x) is not np.ndarray and hasattr(x, "copy_to_host")


DEVICE_TARGET_BLOCKS = 264   # blocks wanted before the KV range is split (two waves of a 132-SM GPU)
DEVICE_SHARED_BYTES = 48 * 1024  # dynamic shared memory a block gets without opting in (every cc >= 7.0)


def device_cache_views(k, type_k: str):
    """(ka, kb): the device cache rows as the FlashMLA kernel of type_k reads them (q8_0: the row bytes as
    float16, for the block scales, and as int8, for the quants; other types: the rows twice)."""
    check_cache_type(type_k)
    if type_k == "q8_0":
        return k.view(np.float16), k.view(np.int8)
    if k.dtype == np.uint8:  # a byte buffer of rows
        k = k.view({"f32": np.float32, "f16": np.float16, "bf16": np.uint16}[type_k])
    return k, k


def flash_mla_device(q, k, type_k: str, cell_pos, cell_seq, kv_idx, q_pos, q_seq, scale: float, n_rot: int,
                     out=None, stream=0):
    """flash_mla on device arrays: q [n_tok, n_head, n_rot + C] f32, k [n_cells, row] (the latent cache rows in
    the cache's storage dtype, or its bytes as uint8), cell_pos int32, cell_seq uint64, kv_idx/q_pos/q_seq
    int32 -> [n_tok, n_head, C]. Indices are not checked here (the cache made them)."""
    from numba import cuda

    from .._kernels.cuda import mla as cmla
    n_tok, n_head, dk = q.shape
    dv = dk - int(n_rot)
    if q.dtype != np.float32 or n_rot <= 0 or dv <= 0:
        raise InvalidArgumentError(f"flash_mla: q must be float32 [n_tok, n_head, n_rot + C], n_rot {n_rot}")
    if dv > cmla.THREADS * cmla.MAX_COLS:
        raise UnsupportedError(f"flash_mla on the device: kv_lora_rank {dv} > {cmla.THREADS * cmla.MAX_COLS}")
    if cmla.shared_bytes(dk) > DEVICE_SHARED_BYTES:
        raise UnsupportedError(f"flash_mla on the device: rows of {dk} values need more than "
                               f"{DEVICE_SHARED_BYTES} bytes of shared memory per block")
    if type_k == "q8_0" and (dk % 32 or n_rot % 32):
        raise InvalidArgumentError("flash_mla: q8_0 rows need n_rot and the row width to be multiples of 32")
    width = dk // 32 * 34 if type_k == "q8_0" else dk
    want = {"f32": np.float32, "f16": np.float16, "bf16": np.uint16, "q8_0": np.uint8}[type_k]
    if k.dtype == np.uint8 and type_k != "q8_0":
        width *= np.dtype(want).itemsize
        want = np.uint8
    if k.dtype != want or len(k.shape) != 2 or k.shape[1] < width:
        raise InvalidArgumentError(f"flash_mla: {type_k} cache rows must be {np.dtype(want)} [n_cells, >= {width}]")
    if out is None:
        out = cuda.device_array((n_tok, n_head, dv), dtype=np.float32, stream=stream)
    if n_tok == 0:
        return out
    n_split, split_len = cmla.choose_split(n_tok, n_head, kv_idx.shape[0], DEVICE_TARGET_BLOCKS,
                                           paths.current().device_min_split_cells)
    ka, kb = device_cache_views(k, type_k)
    cmla.launch_flash_mla(out, q, ka, kb, _KINDS[type_k], int(n_rot), cell_pos, cell_seq, kv_idx, q_pos, q_seq,
                          np.float32(scale), n_split, split_len, stream)
    return out


def mla_kv_rows_device(kva, kv_a_norm, eps: float, pos, yarn: tuple, out=None, stream=0):
    """The ubatch's latent cache rows on the device: kva [n_tok, C + n_rot] f32 (attn_kv_a_mqa's output),
    kv_a_norm [C] f32, pos [n_tok] int32 -> [n_tok, n_rot + C] f32 = [rope(k_pe) | rmsnorm(c_kv) * kv_a_norm].
    yarn: (freq_base, freq_scale, ext_factor, corr_low, corr_high, mscale) of the layer's RoPE."""
    from numba import cuda

    from .._kernels.cuda import mla as cmla
    n_tok, w = kva.shape
    C = kv_a_norm.shape[0]
    if w <= C or (w - C) % 2:
        raise InvalidArgumentError(f"mla rows: kva rows of {w} do not hold {C} latents and an even rope part")
    row = cuda.device_array((n_tok, w), np.float32, stream=stream) if out is None else out
    if n_tok:
        cmla.mla_kv_rows[n_tok, cmla.THREADS, stream](row, kva, kv_a_norm, float(eps), pos,
                                                      *(float(v) for v in yarn))
    return row


def mla_attention_device(q, k_b, k_b_row0, v_b, v_b_row0, dv: int, k, type_k: str, cell_pos, cell_seq, kv_idx,
                         q_pos, q_seq, scale: float, yarn: tuple, n_rot: int, stream=0):
    """A ubatch's absorbed MLA attention on the device -> [n_tok, n_head * dv] f32: q_nope . W_UK (reading
    each head's rows by id), the roped q_pe beside it, FlashMLA over the latent cache, then . W_UV per head.

    q [n_tok, n_head, dn + n_rot] f32 (per head [q_nope | q_pe], q_pe not yet roped); k_b, v_b: weights with
    .raw (device [rows, row_bytes] uint8) and .ggml_type; k_b_row0 / v_b_row0 [n_head] host int64, the first row
    of each head's W_UK ([C, dn]) / W_UV ([dv, C]); k, type_k, cell_pos .. q_seq: as flash_mla_device (q_pos
    also feeds RoPE); yarn as mla_kv_rows_device.
    """
    from numba import cuda

    from .._kernels.cuda import mla as cmla
    from .moe import matmul_id_device
    n_tok, n_head, dk = q.shape
    dn = dk - int(n_rot)
    k_b_row0 = np.ascontiguousarray(k_b_row0, dtype=np.int64)
    v_b_row0 = np.ascontiguousarray(v_b_row0, dtype=np.int64)
    if dn <= 0 or k_b_row0.shape != (n_head,) or v_b_row0.shape != (n_head,):
        raise InvalidArgumentError(f"mla: q of {dk} per head, n_rot {n_rot}, W_UK/W_UV row offsets of {n_head} "
                                   "heads required")
    C = k_b.raw.shape[0] // n_head if k_b_row0.size else 0
    if int(k_b_row0.max()) + C > k_b.raw.shape[0] or int(v_b_row0.max()) + dv > v_b.raw.shape[0]:
        raise InvalidArgumentError("mla: W_UK / W_UV row offsets out of range")
    if n_tok == 0:
        return cuda.device_array((0, n_head * dv), np.float32, stream=stream)
    x_row = cuda.to_device(np.arange(n_tok * n_head, dtype=np.int64), stream=stream)
    q2 = q.reshape(n_tok * n_head, dk)
    q_abs = matmul_id_device(q2[:, :dn], k_b, cuda.to_device(np.tile(k_b_row0, n_tok), stream=stream), x_row, C,
                             stream)
    qa = cuda.device_array((n_tok, n_head, n_rot + C), np.float32, stream=stream)
    cmla.mla_q_rows[n_tok * n_head, cmla.THREADS, stream](qa, q, q_abs, q_pos, *(float(v) for v in yarn))
    o_lat = flash_mla_device(qa, k, type_k, cell_pos, cell_seq, kv_idx, q_pos, q_seq, scale, n_rot, stream=stream)
    o = matmul_id_device(o_lat.reshape(n_tok * n_head, C), v_b, cuda.to_device(np.tile(v_b_row0, n_tok),
                         stream=stream), x_row, dv, stream)
    return o.reshape(n_tok, n_head * dv)


# --------------------------------------------------------------------- a ubatch's absorbed attention, any device
# What deepseek2's forward calls for modes 1-3: host arrays run the CPU ops above, device tensors (pyrt.backends)
# the device kernels. `rope` is the ubatch's RopeCache (the host tables); `yarn` the same angles as parameters
# (freq_base, freq_scale, ext_factor, corr_low, corr_high, mscale), which the device computes itself.

def latent_rows_of(kva, kv_a_norm: np.ndarray, eps: float, rope, yarn: tuple, n_rot: int, pos: np.ndarray):
    """The ubatch's latent cache rows [n_tok, n_rot + C] = [rope(k_pe) | rmsnorm(c_kv) * kv_a_norm] from
    kva [n_tok, C + n_rot] f32, the attn_kv_a_mqa output [c_kv | k_pe]; pos [n_tok] int32."""
    from ..backends import backend_of
    from . import basic
    C = kv_a_norm.shape[0]
    if type(kva) is not np.ndarray and (b := backend_of(kva)) is not None:
        row = b.empty((kva.shape[0], n_rot + C))
        mla_kv_rows_device(kva.a, b.weight(kv_a_norm), eps, b.upload(np.ascontiguousarray(pos, np.int32)).a, yarn,
                           out=row.a)
        return row
    n_tok = kva.shape[0]
    k_pe = np.ascontiguousarray(kva[:, C:]).reshape(n_tok, 1, n_rot)  # [n_tok, 1, n_rot]
    rope.apply(k_pe)
    row = np.empty((n_tok, n_rot + C), np.float32)                    # [n_tok, n_rot + C], rope first
    row[:, :n_rot] = k_pe[:, 0, :]
    row[:, n_rot:] = basic.rms_norm(np.ascontiguousarray(kva[:, :C]), kv_a_norm, eps)
    return row


class AbsorbedWeights:
    """One layer's W_UK / W_UV for absorbed attention: raw rows, types and each head's first row."""

    def __init__(self, k_b_raw, k_b_type, k_b_row0, k_b_heads, v_b_raw, v_b_type, v_b_row0, v_b_heads, C, dv):
        self.k_b_raw, self.k_b_type, self.k_b_row0, self.k_b_heads = k_b_raw, int(k_b_type), k_b_row0, k_b_heads
        self.v_b_raw, self.v_b_type, self.v_b_row0, self.v_b_heads = v_b_raw, int(v_b_type), v_b_row0, v_b_heads
        self.C, self.dv = C, dv


def absorbed_attention(q, w: AbsorbedWeights, krows, type_k: str, cell_pos, cell_seq, kv_idx, pos, seq,
                       scale: float, rope, yarn: tuple, n_rot: int, groups=()):
    """Absorbed MLA attention of a ubatch -> [n_tok, n_head * dv] f32: q [n_tok, n_head, dn + n_rot] f32 (per
    head [q_nope | q_pe], q_pe not yet roped), krows the layer's latent cache rows (the cache has stored this
    ubatch's rows already), cell_pos/cell_seq/kv_idx as flash_mla, pos/seq the ubatch's [n_tok] int32.
    groups: [(rows, kv_idx)] per sequence (_KVBinding.seq_scans) when the ubatch holds several: on the host the
    latent attention then runs per sequence over its own scan, as in its lone run."""
    from ..backends import backend_of
    from . import matmul as mm
    n_tok, H, dk = q.shape
    dn = dk - n_rot
    C, dv = w.C, w.dv
    if type(q) is not np.ndarray and (b := backend_of(q)) is not None:
        up = _uploader(b)
        kb = _DeviceRows(b.weight(w.k_b_raw).reshape(w.k_b_raw.shape), w.k_b_type)
        vb = _DeviceRows(b.weight(w.v_b_raw).reshape(w.v_b_raw.shape), w.v_b_type)
        krows_a = krows.a if hasattr(krows, "a") else krows
        return _wrap(b, mla_attention_device(
            q.a, kb, w.k_b_row0, vb, w.v_b_row0, dv, krows_a, type_k, up(cell_pos, np.int32), up(cell_seq, np.uint64),
            up(kv_idx, np.int32), up(pos, np.int32), up(seq, np.int32), scale, yarn, n_rot))
    q_pe = np.ascontiguousarray(q[:, :, dn:])                      # [n_tok, H, n_rot]
    rope.apply(q_pe)
    q_nope = q[:, :, :dn]
    qa = np.empty((n_tok, H, n_rot + C), np.float32)              # [n_tok, H, n_rot + C] = [q_pe | q_nope W_UK]
    qa[:, :, :n_rot] = q_pe
    if mm.dot_path(w.k_b_type, n_tok):  # one launch for every (token, head): q_nope[t, h] . W_UK[h]
        qa[:, :, n_rot:] = mm.matmul_id(np.ascontiguousarray(q_nope).reshape(n_tok * H, dn), w.k_b_raw, w.k_b_type,
                                        np.tile(w.k_b_row0, n_tok), np.arange(n_tok * H), C).reshape(n_tok, H, C)
    else:
        for hh in range(H):
            qa[:, hh, n_rot:] = mm.matmul(np.ascontiguousarray(q_nope[:, hh, :]), w.k_b_heads[hh], w.k_b_type)
    if groups:
        o_lat = np.empty((n_tok, H, C), np.float32)
        for rows, idx in groups:
            o_lat[rows] = flash_mla(np.ascontiguousarray(qa[rows]), krows, type_k, cell_pos, cell_seq, idx, pos[rows],
                                    seq[rows], scale, n_rot)
    else:
        o_lat = flash_mla(qa, krows, type_k, cell_pos, cell_seq, kv_idx, pos, seq, scale, n_rot)
    if mm.dot_path(w.v_b_type, n_tok):
        out = mm.matmul_id(o_lat.reshape(n_tok * H, C), w.v_b_raw, w.v_b_type, np.tile(w.v_b_row0, n_tok),
                           np.arange(n_tok * H), dv)                # [n_tok * H, dv]
        return out.reshape(n_tok, H * dv)
    out = np.empty((n_tok, H, dv), np.float32)                     # [n_tok, H, dv]
    for hh in range(H):
        out[:, hh, :] = mm.matmul(np.ascontiguousarray(o_lat[:, hh, :]), w.v_b_heads[hh], w.v_b_type)
    return out.reshape(n_tok, H * dv)


_UPLOADS: list = []  # [(host array, dtype, its device copy)]: the last few, found by identity


def _uploader(b):
    """upload(host, dtype) -> a device copy, made once per host array object: a ubatch's cell and position
    arrays are the same objects for every layer (the caller keeps them unchanged while they are in use)."""
    def upload(a, dtype):
        global _UPLOADS
        for h, dt, d in _UPLOADS:
            if h is a and dt == dtype:
                return d
        d = b.upload(np.ascontiguousarray(a, dtype=dtype)).a
        _UPLOADS = [(a, dtype, d)] + _UPLOADS[:7]
        return d
    return upload


def _wrap(b, a):
    """A device array the device entry points returned, as the backend's tensor."""
    from ..backends.cuda.tensor import CudaTensor
    return CudaTensor(a, b)


class _DeviceRows:
    """A weight on the device as the device entry points take it: .raw [rows, row_bytes] uint8, .ggml_type."""

    __slots__ = ("raw", "ggml_type")

    def __init__(self, raw, ggml_type: int):
        self.raw, self.ggml_type = raw, int(ggml_type)
