"""Shared model plumbing: hyperparameters from GGUF metadata, the tensor table, the forward inputs.

Models never import the context, the cache class, the CLI or the server: `forward` receives a
`ForwardInputs` whose `kv` object offers `store(il, k, v)` and `attend(il, q, ...)`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, NamedTuple, Protocol, runtime_checkable

import numpy as np
from gguf import GGMLQuantizationType

from ..errors import ModelFileError, UnsupportedError
from ..io.gguf_file import GGUFFile, Weight
from ..ops import matmul as mm


class MLAView(NamedTuple):
    """A layer's K-only latent cache as an MLA model attends over it during one ubatch."""
    k: np.ndarray         # [n_kv, row] the cache rows in their storage dtype (V is each row's first kv_lora_rank values)
    type_k: str           # the cache type ("f16", "bf16", "q8_0", "f32")
    cell_pos: np.ndarray  # [n_kv] int32 position of each cell
    cell_seq: np.ndarray  # [n_kv] uint64 sequence bitset of each cell
    kv_idx: np.ndarray    # [n_scan] int32 the cells to scan, in canonical order


class DenseView(NamedTuple):
    """A layer's K and V cache rows as a model runs its own decode kernel over them during one ubatch."""
    k: np.ndarray         # [n_kv, row] the K rows in their storage dtype
    v: np.ndarray         # [n_kv, row] the V rows
    type_k: str           # the cache types ("f16", "bf16", "q8_0", "f32", "q8_KV")
    type_v: str
    seg_k: int            # q8_KV segment lengths (1 for the other types)
    seg_v: int
    cells: np.ndarray     # [n_tok] int32 the cells this ubatch writes
    cell_pos: np.ndarray  # [n_kv] int32 position of each cell
    cell_seq: np.ndarray  # [n_kv] uint64 sequence bitset of each cell
    kv_idx: np.ndarray    # [n_scan] int32 the cells to scan, in canonical order


class KVAccess(Protocol):
    """The KV cache as a model sees it during one ubatch (runtime.context._KVBinding implements it)."""
    mla: int  # the MLA attention mode (-mla 0..3); only MLA models read it

    def store(self, il: int, k: np.ndarray, v: np.ndarray | None) -> None:
        """Writes the ubatch's K [n_tok, k_dim] (and V [n_tok, v_dim]; None for a K-only cache) of layer il."""
    def attend(self, il: int, q: np.ndarray, scale: float, n_swa: int = 0, softcap: float = 0.0,
               head_dim_v: int | None = None) -> np.ndarray:
        """Attention of q [n_tok, n_head, head_dim] over layer il's visible cells: [n_tok, n_head * head_dim_v]."""
    def mla_view(self, il: int) -> MLAView:
        """Layer il's K-only cache, for models that run their own attention over it (MLA)."""
    def mla_cells(self, il: int) -> np.ndarray:
        """The cells [n_tok] int32 this ubatch writes in layer il's cache (where `store` writes)."""
    def dense_view(self, il: int, n_swa: int = 0) -> DenseView | None:
        """Layer il's K and V rows on the host, for models that run their own decode kernel (None: the cache
        lives on a device, or the layer has no V rows); n_swa as attend's."""


@dataclass
class ForwardInputs:
    tokens: np.ndarray    # [n_tok] int32
    pos: np.ndarray       # [n_tok] int32
    seq: np.ndarray       # [n_tok] int32
    out_rows: np.ndarray  # [n_out] int32, rows of this ubatch whose logits are wanted
    kv: KVAccess


@runtime_checkable
class Model(Protocol):
    """What the runtime, info and bench use of a model; `ModelBase` gives the defaults of a model without
    sliding-window layers or MLA. One instance per loaded file, built by `models.build_model`."""
    ARCHS: dict[str, int]           # general.architecture values -> RoPE type
    DEVICES: tuple[str, ...]        # where its forward runs ("cpu", "cuda")
    hp: HParams
    is_mla: bool                    # a K-only latent cache is possible (-mla 1..3)
    n_swa: int                      # sliding window in positions (0: none)
    is_swa: list[bool]              # [n_layer] which layers attend through the window
    fingerprint: Callable[[], str]  # identifies the file in saved states (set by build_model)

    def kv_layout(self, mla: int) -> tuple[list[int], list[int], int, int]:
        """(K row size per layer, V row size per layer (0: no V), head_dim_k, head_dim_v) for the mode."""
    def kv_dims(self) -> tuple[list[int], list[int]]:
        """(K, V) row sizes per layer of the default cache layout."""
    def rope_params(self, il: int) -> tuple:
        """(n_rot, freq_base, freq_scale, freq_factors, mode) of layer il's K, for the cache's K-shift."""
    def k_rope_offset(self, mla: int) -> int:
        """Where the rotated part starts in a K row (MLA: after the latent part)."""
    def forward(self, inp: ForwardInputs) -> np.ndarray:
        """Runs one ubatch; logits [n_out, n_vocab] f32 for inp.out_rows."""


class ModelBase:
    """Defaults of the `Model` protocol for a model with full attention in every layer and no MLA."""
    DEVICES: tuple[str, ...] = ("cpu",)
    is_mla = False
    n_swa = 0
    hp: HParams

    @staticmethod
    def fingerprint() -> str:
        return ""

    _is_swa: list[bool] | None = None

    @property
    def is_swa(self) -> list[bool]:
        return self._is_swa if self._is_swa is not None else [False] * self.hp.n_layer

    @is_swa.setter
    def is_swa(self, v: list[bool]) -> None:
        self._is_swa = list(v)


    def kv_layout(self, mla: int) -> tuple[list[int], list[int], int, int]:
        k_dims, v_dims = self.kv_dims()
        return k_dims, v_dims, self.hp.n_embd_head_k, self.hp.n_embd_head_v

    def k_rope_offset(self, mla: int) -> int:
        return 0


@dataclass
class HParams:
    arch: str
    n_vocab: int
    n_ctx_train: int
    n_embd: int
    n_layer: int
    n_head: int
    n_head_kv: int
    n_embd_head_k: int
    n_embd_head_v: int
    n_ff: int
    n_rot: int
    f_norm_rms_eps: float
    rope_freq_base: float
    rope_freq_scale: float
    rope_type: int
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def n_embd_k_gqa(self) -> int:
        return self.n_head_kv * self.n_embd_head_k

    @property
    def n_embd_v_gqa(self) -> int:
        return self.n_head_kv * self.n_embd_head_v


def _scalar_or_first(v: Any, key: str, path: str) -> int:
    """Some files store per-layer arrays (e.g. head_count_kv); all our archs need them uniform."""
    if isinstance(v, np.ndarray):
        if v.size == 0 or np.any(v != v.flat[0]):
            raise UnsupportedError(f"{path}: per-layer {key} values are not supported")
        return int(v.flat[0])
    return int(v)


def read_hparams(f: GGUFFile, rope_type: int) -> HParams:
    arch = f.architecture
    a = lambda k: f"{arch}.{k}"  # noqa: E731

    def req_int(key):
        if key not in f.metadata:
            raise ModelFileError(f"{f.path}: missing metadata key {key!r}")
        return _scalar_or_first(f.metadata[key], key, f.path)

    n_embd = req_int(a("embedding_length"))
    n_layer = req_int(a("block_count"))
    n_head = req_int(a("attention.head_count"))
    n_head_kv = _scalar_or_first(f.get(a("attention.head_count_kv"), n_head), "head_count_kv", f.path)
    n_ff = req_int(a("feed_forward_length"))
    if n_head <= 0 or n_layer <= 0 or n_embd <= 0 or n_head_kv <= 0 or n_head % n_head_kv:
        raise ModelFileError(f"{f.path}: inconsistent hyperparameters (n_embd={n_embd}, n_layer={n_layer}, "
                             f"n_head={n_head}, n_head_kv={n_head_kv})")
    head_k = int(f.get(a("attention.key_length"), n_embd // n_head))
    head_v = int(f.get(a("attention.value_length"), n_embd // n_head))
    n_rot = int(f.get(a("rope.dimension_count"), head_k))
    if n_rot > head_k or n_rot % 2:
        raise ModelFileError(f"{f.path}: rope.dimension_count {n_rot} does not fit heads of {head_k}")
    tokens = f.get("tokenizer.ggml.tokens")
    n_vocab = int(f.get(a("vocab_size"), len(tokens) if tokens is not None else 0))
    scale_type = f.get(a("rope.scaling.type"), "none")
    freq_scale = 1.0
    if scale_type == "linear":
        freq_scale = 1.0 / float(f.get(a("rope.scaling.factor"), 1.0))
    elif scale_type not in ("none", None):
        raise UnsupportedError(f"{f.path}: rope scaling {scale_type!r} is not supported for {arch}")
    return HParams(
        arch=arch, n_vocab=n_vocab, n_ctx_train=int(f.get(a("context_length"), 2048)), n_embd=n_embd,
        n_layer=n_layer, n_head=n_head, n_head_kv=n_head_kv, n_embd_head_k=head_k, n_embd_head_v=head_v,
        n_ff=n_ff, n_rot=n_rot, f_norm_rms_eps=float(f.get(a("attention.layer_norm_rms_epsilon"), 1e-5)),
        rope_freq_base=float(f.get(a("rope.freq_base"), 10000.0)), rope_freq_scale=freq_scale,
        rope_type=rope_type)


class Linear:
    """A 2D weight used in place from the map: y = x @ W.T (+ b)."""

    __slots__ = ("w", "bias", "n_out", "n_in", "fused")

    def __init__(self, w: Weight, bias: np.ndarray | None = None):
        self.w = w
        self.bias = bias
        self.n_out, self.n_in = w.shape[-2], w.shape[-1]
        self.fused: dict = {}  # (ids of the following Linears) -> their rows and ours as one raw view, or None

    def __call__(self, x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        y = mm.matmul(x, self.w.raw, self.w.ggml_type, out=out)
        if self.bias is not None:
            y += self.bias
        return y


def adjacent_rows(*raws: np.ndarray) -> np.ndarray | None:
    """One read-only [sum of rows, row_bytes] view over weight row blocks that follow each other in memory
    (same row size: Q/K/V or gate/up written back to back, as GGUF converters do), or None.

    No copy: the view is a slice of the same file mapping. Lets the decode path run several projections
    of one input as a single kernel launch.
    """
    rb = raws[0].shape[1] if raws[0].ndim == 2 else -1
    if not all(a.flags.c_contiguous for a in raws):
        return None
    for a, b in zip(raws, raws[1:]):
        if b.ndim != 2 or b.shape[1] != rb or a.ctypes.data + a.nbytes != b.ctypes.data:
            return None
    root = raws[0]
    while isinstance(root.base, np.ndarray):
        root = root.base
    if root.ndim != 1 or root.dtype != np.uint8:
        return None
    off = raws[0].ctypes.data - root.ctypes.data
    total = sum(a.nbytes for a in raws)
    if off < 0 or off + total > root.nbytes:
        return None
    v = root[off:off + total].reshape(-1, rb)
    v.flags.writeable = False
    return v


def linear_multi(x: np.ndarray, *linears: Linear) -> list[np.ndarray]:
    """Several projections of the same input (Q/K/V, gate/up); the activations are quantized once.

    For a few tokens (the dot path), projections whose weights lie back to back in the file and share a
    type run as one matmul over the joint rows: one kernel launch instead of several, same results.
    """
    t = linears[0].w.ggml_type
    if (len(linears) > 1 and isinstance(x, np.ndarray) and x.ndim == 2 and mm.quantized_path(t, x.shape[0])
            and all(L.w.ggml_type == t for L in linears)):
        key = tuple(id(L) for L in linears[1:])
        fused = linears[0].fused.get(key, False)
        if fused is False:
            fused = linears[0].fused[key] = adjacent_rows(*(L.w.raw for L in linears))
        if fused is not None:
            y = mm.matmul(x, fused, t)
            outs, c = [], 0
            for L in linears:
                o = np.ascontiguousarray(y[:, c:c + L.n_out])
                c += L.n_out
                if L.bias is not None:
                    o += L.bias
                outs.append(o)
            return outs
    outs = mm.matmul_multi(x, [(L.w.raw, L.w.ggml_type) for L in linears])
    for L, y in zip(linears, outs):
        if L.bias is not None:
            y += L.bias
    return outs


def vector_f32(w: Weight) -> np.ndarray:
    """A 1D tensor (norm weight, bias) as f32: a zero-copy view for F32, a small dequantized copy otherwise."""
    if w.ggml_type == GGMLQuantizationType.F32:
        return w.raw.view(np.float32).reshape(-1)
    return mm.dequantize(w.raw, w.ggml_type, w.shape[-1]).reshape(-1)


class TensorTable:
    """Looks tensors up by GGUF name and checks their shapes against the hyperparameters."""

    def __init__(self, f: GGUFFile):
        self.f = f
        self.used: set[str] = set()

    def get(self, name: str, shape: tuple[int, ...], required: bool = True) -> Weight | None:
        w = self.f.tensors.get(name)
        if w is None:
            if required:
                raise ModelFileError(f"{self.f.path}: missing tensor {name!r}")
            return None
        if tuple(w.shape) != tuple(shape):
            raise ModelFileError(f"{self.f.path}: tensor {name!r} has shape {list(w.shape)}, "
                                 f"expected {list(shape)} from the hyperparameters")
        from ..formats.qtypes import get_qtype
        try:
            get_qtype(w.ggml_type)
        except UnsupportedError as e:
            raise UnsupportedError(f"{self.f.path}: tensor {name!r}: {e}") from None
        self.used.add(name)
        return w

    def linear(self, name: str, n_out: int, n_in: int, bias: bool | None = False) -> Linear | None:
        """bias: False = none, True = required, None = optional."""
        w = self.get(name + ".weight", (n_out, n_in))
        b = None
        if bias is not False:
            bw = self.get(name + ".bias", (n_out,), required=bool(bias))
            b = vector_f32(bw) if bw is not None else None
        return Linear(w, b)

    def vector(self, name: str, n: int, required: bool = True) -> np.ndarray | None:
        w = self.get(name, (n,), required)
        return vector_f32(w) if w is not None else None
