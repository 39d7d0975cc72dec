"""CudaBackend: validates like `ops`, launches the kernels of `pyrt._kernels.cuda`, owns device memory.

Weights: each host weight (a read-only view of the GGUF mmap, or a small f32 norm/bias vector) is
uploaded once in its file layout (raw blocks, no dequantization) and found again by its host address;
`upload_model` does it for a whole model at load. Activations are `CudaTensor`s; the KV cache buffers
are allocated here (flat bytes in the CPU cache's row formats); logits come back with `to_host` once
per ubatch. Imports numba.cuda, numpy, pyrt.formats, pyrt._kernels(.cuda) and pyrt.errors.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np

try:
    from numpy.lib.array_utils import byte_bounds  # numpy >= 2
except ImportError:  # numpy 1.26
    byte_bounds = np.byte_bounds
from numba import cuda

from ..._kernels.cuda import attention as ka
from ..._kernels.cuda import dense as kd
from ...errors import DeviceError, InvalidArgumentError
from ...formats.qtypes import get_qtype
from .tensor import CudaTensor

NT = kd.NT


def _blocks(n: int) -> int:
    """Blocks of an elementwise launch over n values (the kernels stride over the rest)."""
    return max(1, min(-(-n // NT), kd.GRID_MAX))


def _rows(n: int) -> int:
    """Blocks of a launch over n rows (one row per block up to GRID_MAX, then the kernels stride)."""
    return max(1, min(n, kd.GRID_MAX))


class CudaBackend:
    name = "cuda"

    def __init__(self):
        self._weights: dict[tuple[int, int], tuple[np.ndarray, object]] = {}
        self._gelu = None
        self._scan_memo = []  # [(kv_idx host array, its device copies)]: one upload per ubatch and cache side

    def describe(self) -> str:
        """The GPU's name, compute capability and memory, for benchmark records."""
        d = cuda.get_current_device()
        try:
            free, total = cuda.current_context().get_memory_info()
            mem = f", {total / 2**30:.0f} GiB"
        except Exception:  # the simulator has no memory info
            mem = ""
        name = getattr(d, "name", "CUDA simulator")
        name = name.decode() if isinstance(name, bytes) else str(name)
        cc = getattr(d, "compute_capability", (0, 0))
        return f"cuda: {name} (cc {cc[0]}.{cc[1]}{mem})"

    # -- memory --------------------------------------------------------------------------------
    def empty(self, shape, dtype=np.float32) -> CudaTensor:
        return CudaTensor(cuda.device_array(tuple(shape), dtype=np.dtype(dtype)), self)

    def zeros(self, shape, dtype=np.float32) -> CudaTensor:
        return self.upload(np.zeros(tuple(shape), dtype=np.dtype(dtype)))

    def upload(self, a: np.ndarray) -> CudaTensor:
        a = np.ascontiguousarray(a)
        return CudaTensor(cuda.to_device(a), self, host=a)

    def weight(self, a: np.ndarray):
        """The device copy of a host weight array (uploaded on first use, then found by address).

        Weights are immutable (read-only file views, norm and bias vectors made at load): the entry keeps
        the host array alive, so its address is never reused for another array while the copy is cached."""
        key = (a.__array_interface__["data"][0], a.nbytes)
        hit = self._weights.get(key)
        if hit is None:
            host = np.ascontiguousarray(a)
            hit = self._weights[key] = (a, cuda.to_device(host.reshape(-1)))  # keeps the host view alive
        return hit[1]

    def upload_model(self, model) -> int:
        """Uploads every weight a model holds (Linear weights, tensor views, f32 vectors); returns bytes.

        A view that spans several tensors (a host-side fusion such as deepseek2's adjacent gate+up experts)
        is not uploaded here: its parts are, and the view itself only on first use, so no weight byte is
        on the device twice unless a kernel asks for the fused view."""
        from ...io.gguf_file import Weight
        from ...models.base import Linear
        seen, arrays = set(), []

        def walk(o):
            if id(o) in seen:
                return
            seen.add(id(o))
            if isinstance(o, np.ndarray):
                if o.size and o.dtype in (np.uint8, np.float32):
                    arrays.append(o)
            elif isinstance(o, Linear):
                walk(o.w)
                walk(o.bias)
            elif isinstance(o, Weight):
                walk(o.raw)
            elif isinstance(o, (list, tuple)):
                for v in o:
                    walk(v)
            elif isinstance(o, SimpleNamespace) or type(o).__module__.startswith("pyrt.models"):
                # layer records and load-time weights (`__slots__` ones too); never the file object or its mapping
                fields = vars(o).values() if hasattr(o, "__dict__") else [getattr(o, k, None) for k in o.__slots__]
                for v in fields:
                    walk(v)
        for k, v in vars(model).items():
            if k not in ("hp",):
                walk(v)
        # smallest first: the parts of a fused view come before it, which then overlaps them
        spans, total = [], 0
        for a in sorted(arrays, key=lambda a: a.nbytes):
            lo, hi = byte_bounds(a)
            if any(lo < e and s < hi for s, e in spans):
                continue
            spans.append((lo, hi))
            self.weight(a)
            total += a.nbytes
        return total

    # -- elementwise ---------------------------------------------------------------------------
    def add_(self, x: CudaTensor, y) -> None:
        if isinstance(y, CudaTensor):
            if y.size != x.size and y.size != x.shape[-1]:
                raise InvalidArgumentError(f"add: shapes {x.shape} and {y.shape} do not broadcast")
            src = y.flat
        elif isinstance(y, np.ndarray) and y.dtype == np.float32 and y.ndim == 1 and y.size == x.shape[-1]:
            src = self.weight(y)
        else:
            raise InvalidArgumentError(f"add: cannot add {type(y).__name__} {getattr(y, 'shape', '')} to a CUDA "
                                       f"tensor of shape {x.shape}")
        if x.size:
            kd.add_f32[_blocks(x.size), NT](x.flat, src, src.shape[0])

    def scale_(self, x: CudaTensor, s) -> None:
        if x.size:
            kd.scale_f32[_blocks(x.size), NT](x.flat, np.float32(s))

    def fill_(self, x: CudaTensor, value) -> None:
        x.a.copy_to_device(np.full(x.shape, value, dtype=x.dtype))

    def softcap(self, x: CudaTensor, cap: float) -> CudaTensor:
        if x.size:
            kd.softcap_f32[_blocks(x.size), NT](x.flat, np.float32(cap))
        return x

    def take_rows(self, x: CudaTensor, rows: np.ndarray) -> CudaTensor:
        if x.ndim != 2 or x.dtype != np.float32:
            raise InvalidArgumentError("take_rows: a [n, m] f32 tensor is required")
        rows = np.ascontiguousarray(rows, dtype=np.int32)
        if rows.size and (rows.min() < 0 or rows.max() >= x.shape[0]):
            raise InvalidArgumentError(f"take_rows: row out of range [0, {x.shape[0]})")
        out = self.empty((rows.shape[0], x.shape[1]))
        if rows.size:
            kd.take_rows_f32[_rows(rows.shape[0]), NT](out.a, x.a, cuda.to_device(rows))
        return out

    # -- ops entry points ----------------------------------------------------------------------
    @staticmethod
    def _f32(name: str, a, ndim: int) -> None:
        if not isinstance(a, CudaTensor) or a.dtype != np.float32 or a.ndim != ndim:
            raise InvalidArgumentError(f"{name}: expected a float32 CUDA tensor with {ndim} dims, got "
                                       f"{type(a).__name__} {getattr(a, 'shape', '')}")

    def rms_norm(self, x, w, eps, out=None):
        self._f32("rms_norm x", x, 2)
        if not isinstance(w, np.ndarray) or w.shape != (x.shape[1],):
            raise InvalidArgumentError(f"rms_norm: weight must be f32 [{x.shape[1]}]")
        if out is None:
            out = self.empty(x.shape)
        elif not isinstance(out, CudaTensor) or out.shape != x.shape:
            raise InvalidArgumentError("rms_norm: bad output buffer")
        if x.shape[0]:
            kd.rms_norm_f32[_rows(x.shape[0]), NT](out.a, x.a, self.weight(w), float(eps))
        return out

    def rms_norm_heads(self, x, w, eps):
        self._f32("rms_norm_heads x", x, 3)
        if not isinstance(w, np.ndarray) or w.shape != (x.shape[2],):
            raise InvalidArgumentError(f"rms_norm_heads: weight must be f32 [{x.shape[2]}]")
        rows = x.a.reshape(x.shape[0] * x.shape[1], x.shape[2])
        if x.size:
            kd.rms_norm_f32[_rows(rows.shape[0]), NT](rows, rows, self.weight(w), float(eps))
        return x

    def rope(self, x, rc, neox: bool):
        self._f32("rope x", x, 3)
        if x.shape[0] != rc.cos.shape[0] or x.shape[2] < rc.n_rot:
            raise InvalidArgumentError(f"rope: x has shape {x.shape}, table is for {rc.cos.shape[0]} tokens "
                                       f"and {rc.n_rot} dims")
        tabs = rc.device_tables.get(self.name)
        if tabs is None:
            tabs = rc.device_tables[self.name] = (cuda.to_device(rc.cos), cuda.to_device(rc.sin))
        if x.size:
            kd.rope_f32[_rows(x.shape[0] * x.shape[1]), NT](x.a, tabs[0], tabs[1], 1 if neox else 0)
        return x

    def _gated(self, name, gate, up):
        self._f32(f"{name} gate", gate, 2)
        self._f32(f"{name} up", up, 2)
        if gate.shape != up.shape:
            raise InvalidArgumentError(f"{name}: shapes differ {gate.shape} vs {up.shape}")

    def swiglu(self, gate, up):
        self._gated("swiglu", gate, up)
        if gate.size:
            kd.swiglu_f32[_blocks(gate.size), NT](gate.flat, gate.flat, up.flat)
        return gate

    def geglu_tanh(self, gate, up, table: np.ndarray):
        self._gated("geglu", gate, up)
        if self._gelu is None:
            self._gelu = cuda.to_device(table)
        if gate.size:
            kd.geglu_table_f32[_blocks(gate.size), NT](gate.flat, gate.flat, up.flat, self._gelu)
        return gate

    def matmul(self, x, raw, ggml_type, out=None):
        qt = get_qtype(ggml_type)
        self._f32("matmul x", x, 2)
        n_tok, n_in = x.shape
        rb = qt.row_bytes(n_in)
        if not isinstance(raw, np.ndarray) or raw.dtype != np.uint8 or raw.size % rb:
            raise InvalidArgumentError(f"matmul: {qt.name} rows of {n_in} values take {rb} bytes, got weight "
                                       f"{getattr(raw, 'shape', type(raw))}")
        n_out = raw.size // rb
        if out is None:
            out = self.empty((n_tok, n_out))
        elif not isinstance(out, CudaTensor) or out.shape != (n_tok, n_out):
            raise InvalidArgumentError(f"matmul: out must be a float32 CUDA tensor of shape {(n_tok, n_out)}")
        if n_tok and n_out:
            kd.MATMUL[qt.name][(_rows(n_out), -(-n_tok // kd.MM_TOK)), NT](out.a, self.weight(raw), x.a)
        return out

    def matmul_multi(self, x, weights):
        return [self.matmul(x, raw, t) for raw, t in weights]

    def get_rows(self, raw, ggml_type, ids, n_per_row):
        qt = get_qtype(ggml_type)
        rb = qt.row_bytes(n_per_row)
        if not isinstance(raw, np.ndarray) or raw.dtype != np.uint8 or raw.size % rb:
            raise InvalidArgumentError(f"get_rows: {qt.name} rows of {n_per_row} values take {rb} bytes")
        n_rows = raw.size // rb
        if ids.ndim != 1 or ids.dtype != np.int32:
            raise InvalidArgumentError("get_rows: ids must be a 1-D int32 tensor")
        if ids.host is not None and ids.size and (ids.host.min() < 0 or ids.host.max() >= n_rows):
            raise InvalidArgumentError(f"get_rows: row id out of range [0, {n_rows})")
        out = self.empty((ids.shape[0], n_per_row))
        if ids.size:
            kd.GET_ROWS[qt.name][_rows(ids.shape[0]), NT](out.a, self.weight(raw), ids.a)
        return out

    # -- KV cache ------------------------------------------------------------------------------
    def kv_alloc(self, type_name: str, size: int, row_bytes: int) -> CudaTensor:
        if type_name not in ka.CACHE_KINDS:
            raise DeviceError(f"cache type {type_name} has no CUDA kernels (choose from {', '.join(ka.CACHE_KINDS)})")
        return self.zeros((size, row_bytes), np.uint8)

    def kv_store(self, buf: CudaTensor, type_name: str, cells: np.ndarray, src) -> None:
        self._f32("store rows", src, 2)
        if src.shape[0]:
            ka.store_rows[_rows(src.shape[0]), NT](buf.flat, buf.shape[1], 0, cuda.to_device(cells), src.a,
                                            ka.CACHE_KINDS.index(type_name))

    def kv_move(self, buf: CudaTensor, src: np.ndarray, dst: np.ndarray) -> None:
        if src.shape[0]:
            ka.move_rows[_rows(src.shape[0]), NT](buf.flat, buf.shape[1], cuda.to_device(src), cuda.to_device(dst))

    def attention(self, q, cache, il, q_pos, q_seq, scale, n_swa=0, softcap=0.0, *, kv_idx=None,
                  n_head_kv=None, head_dim_v=None, v_offset=0):
        """ops.attention for a CUDA q over a cache whose buffers live here: [n_tok, n_head*head_dim_v]."""
        from ...ops.attention import scan_order
        self._f32("attention q", q, 3)
        n_tok, n_head, dk = q.shape
        if n_head_kv is None:
            if cache.n_embd_k[il] % dk:
                raise InvalidArgumentError(f"attention: K width {cache.n_embd_k[il]} is not a multiple of head_dim {dk}")
            n_head_kv = cache.n_embd_k[il] // dk
        if n_head_kv <= 0 or n_head % n_head_kv:
            raise InvalidArgumentError(f"attention: n_head ({n_head}) is not a multiple of n_head_kv ({n_head_kv})")
        k = cache.k[il]
        if cache.v[il] is None:
            v, type_v = k, cache.type_k
            dv = head_dim_v if head_dim_v is not None else cache.n_embd_k[il] // n_head_kv - v_offset
        else:
            v, type_v = cache.v[il], cache.type_v
            dv = head_dim_v if head_dim_v is not None else dk
        if max(dk, dv) > ka.MAX_HEAD_DIM:
            raise DeviceError(f"attention: heads of {max(dk, dv)} values exceed the CUDA kernel's {ka.MAX_HEAD_DIM}")
        n_kv = cache.cells.n_kv()
        cell_pos = cache.cells.pos_array()[:n_kv]
        cell_seq = cache.cells.seq_array()[:n_kv]
        q_pos = np.ascontiguousarray(q_pos, dtype=np.int32)
        q_seq = np.ascontiguousarray(q_seq, dtype=np.int32)
        if kv_idx is None:
            kv_idx = scan_order(cell_pos, cell_seq, q_pos, q_seq)
        memo = next((m for m in self._scan_memo if m[0] is kv_idx), None)
        if memo is None:
            idx = np.ascontiguousarray(kv_idx, dtype=np.int32)
            memo = (kv_idx, cuda.to_device(idx),
                                      cuda.to_device(np.ascontiguousarray(cell_pos[idx], dtype=np.int32)),
                                      cuda.to_device(np.ascontiguousarray(cell_seq[idx], dtype=np.uint64)),
                                      cuda.to_device(q_pos), cuda.to_device(q_seq))
            self._scan_memo = [memo] + self._scan_memo[:3]
        _, d_idx, d_pos, d_seq, d_qpos, d_qseq = memo
        out = self.empty((n_tok, n_head, dv))
        if n_tok:
            ka.flash_attn[(n_tok, n_head), NT](
                out.a, q.a, k.flat, v.flat, ka.CACHE_KINDS.index(cache.type_k), ka.CACHE_KINDS.index(type_v),
                k.shape[1], v.shape[1], int(v_offset), int(n_head_kv), d_idx, d_pos, d_seq, d_qpos, d_qseq,
                np.float32(scale), int(n_swa), np.float32(softcap))
        return out.reshape(n_tok, n_head * dv)
