"""Norms, RoPE and gated activations: validation + kernel selection.

Host arrays run the CPU kernels; device tensors go to their backend (pyrt.backends). Imports
pyrt._kernels, pyrt.backends and pyrt.errors only.
"""

from __future__ import annotations

import numpy as np

from .._kernels import act, norm, rope
from ..backends import backend_of
from ..errors import InvalidArgumentError

# Below this many elements an op runs on the calling thread: launching a parallel region costs
# microseconds (much more when another process holds a core), more than a decode step's norm or rope.
PARALLEL_MIN_ELEMS = 1 << 15

ROPE_NORM = 0
ROPE_NEOX = 2  # ggml's LLAMA_ROPE_TYPE_NEOX


def _f32c(name: str, a: np.ndarray, ndim: int) -> None:
    if not isinstance(a, np.ndarray) or a.dtype != np.float32 or a.ndim != ndim or not a.flags.c_contiguous:
        raise InvalidArgumentError(
            f"{name}: expected a C-contiguous float32 array with {ndim} dims, got "
            f"{getattr(a, 'dtype', type(a))} {getattr(a, 'shape', '')}")


def rms_norm(x: np.ndarray, w: np.ndarray, eps: float, out: np.ndarray | None = None) -> np.ndarray:
    """[n_rows, n] f32 -> rmsnorm(x) * w."""
    if type(x) is not np.ndarray and (b := backend_of(x)) is not None:
        return b.rms_norm(x, w, eps, out)
    _f32c("rms_norm x", x, 2)
    _f32c("rms_norm w", w, 1)
    if w.shape[0] != x.shape[1]:
        raise InvalidArgumentError(f"rms_norm: weight has {w.shape[0]} values for rows of {x.shape[1]}")
    if out is None:
        out = np.empty_like(x)
    elif out.shape != x.shape or out.dtype != np.float32:
        raise InvalidArgumentError("rms_norm: bad output buffer")
    if x.size < PARALLEL_MIN_ELEMS:
        norm.rms_norm_f32_serial(out, x, w, float(eps))
    else:
        norm.rms_norm_f32(out, x, w, float(eps))
    return out


def rms_norm_heads(x: np.ndarray, w: np.ndarray, eps: float) -> np.ndarray:
    """In place on [n_tok, n_head, head_dim] f32 (QK-norm)."""
    if type(x) is not np.ndarray and (b := backend_of(x)) is not None:
        return b.rms_norm_heads(x, w, eps)
    _f32c("rms_norm_heads x", x, 3)
    _f32c("rms_norm_heads w", w, 1)
    if w.shape[0] != x.shape[2]:
        raise InvalidArgumentError(f"rms_norm_heads: weight has {w.shape[0]} values for heads of {x.shape[2]}")
    if x.size < PARALLEL_MIN_ELEMS:
        norm.rms_norm_heads_f32_serial(x, w, float(eps))
    else:
        norm.rms_norm_heads_f32(x, w, float(eps))
    return x


class RopeCache:
    """cos/sin tables for one ubatch's positions, shared by every layer's Q and K."""

    def __init__(self, pos: np.ndarray, n_rot: int, freq_base: float, freq_scale: float = 1.0,
                 freq_factors: np.ndarray | None = None, mode: int = ROPE_NORM):
        if n_rot <= 0 or n_rot % 2:
            raise InvalidArgumentError(f"rope: n_rot must be a positive even number, got {n_rot}")
        pos = np.ascontiguousarray(pos, dtype=np.int32)
        half = n_rot // 2
        if freq_factors is None:
            freq_factors = np.ones(half, dtype=np.float32)
        elif freq_factors.shape != (half,):
            raise InvalidArgumentError(f"rope: freq_factors has shape {freq_factors.shape}, expected ({half},)")
        self.cos = np.empty((pos.shape[0], half), dtype=np.float32)
        self.sin = np.empty((pos.shape[0], half), dtype=np.float32)
        rope.rope_cache_f32(self.cos, self.sin, pos, float(freq_base), float(freq_scale),
                            np.ascontiguousarray(freq_factors, dtype=np.float32))
        self.n_rot = n_rot
        self.mode = mode
        self.device_tables: dict = {}  # backend name -> its copies of cos/sin (made on first use)

    def apply(self, x: np.ndarray) -> np.ndarray:
        """In place on [n_tok, n_head, head_dim] f32."""
        if type(x) is not np.ndarray and (b := backend_of(x)) is not None:
            return b.rope(x, self, self.mode == ROPE_NEOX)
        _f32c("rope x", x, 3)
        if x.shape[0] != self.cos.shape[0] or x.shape[2] < self.n_rot:
            raise InvalidArgumentError(f"rope: x has shape {x.shape}, table is for {self.cos.shape[0]} "
                                       f"tokens and {self.n_rot} dims")
        small = x.size < PARALLEL_MIN_ELEMS
        if self.mode == ROPE_NEOX:
            (rope.rope_neox_f32_serial if small else rope.rope_neox_f32)(x, self.cos, self.sin)
        else:
            (rope.rope_norm_f32_serial if small else rope.rope_norm_f32)(x, self.cos, self.sin)
        return x


def swiglu(gate: np.ndarray, up: np.ndarray) -> np.ndarray:
    """silu(gate) * up, written into gate."""
    if type(gate) is not np.ndarray and (b := backend_of(gate)) is not None:
        return b.swiglu(gate, up)
    _f32c("swiglu gate", gate, 2)
    _f32c("swiglu up", up, 2)
    if gate.shape != up.shape:
        raise InvalidArgumentError(f"swiglu: shapes differ {gate.shape} vs {up.shape}")
    (act.swiglu_f32_serial if gate.size < PARALLEL_MIN_ELEMS else act.swiglu_f32)(gate, gate, up)
    return gate


_GELU_F16_TABLE: np.ndarray | None = None


def _gelu_table() -> np.ndarray:
    """gelu_tanh of every f16 value, rounded to f16 and widened to f32 (ggml's GGML_GELU_FP16 table)."""
    global _GELU_F16_TABLE
    if _GELU_F16_TABLE is None:
        x = np.arange(1 << 16, dtype=np.uint16).view(np.float16).astype(np.float32)
        with np.errstate(all="ignore"):
            y = np.float32(0.5) * x * (np.float32(1.0) + np.tanh(
                np.float32(act.SQRT_2_OVER_PI) * x * (np.float32(1.0) + np.float32(act.GELU_COEF_A) * x * x)))
        _GELU_F16_TABLE = y.astype(np.float16).astype(np.float32)
    return _GELU_F16_TABLE


def geglu_tanh(gate: np.ndarray, up: np.ndarray) -> np.ndarray:
    """gelu_tanh(gate) * up, written into gate.

    As ggml's CPU backend: inside (-10, 10) the input is rounded to f16 and looked up in a table of
    f16 results; outside, 0 or the identity. Matching this keeps Gemma's logits on llama.cpp's.
    """
    if type(gate) is not np.ndarray and (b := backend_of(gate)) is not None:
        return b.geglu_tanh(gate, up, _gelu_table())
    _f32c("geglu gate", gate, 2)
    _f32c("geglu up", up, 2)
    if gate.shape != up.shape:
        raise InvalidArgumentError(f"geglu: shapes differ {gate.shape} vs {up.shape}")
    fn = act.geglu_table_f32_serial if gate.size < PARALLEL_MIN_ELEMS else act.geglu_table_f32
    fn(gate, gate, up, _gelu_table())
    return gate


def softcap(x: np.ndarray, cap: float) -> np.ndarray:
    """tanh(x / cap) * cap (final logit softcapping); a new array on the host, in place on a device."""
    if type(x) is not np.ndarray and (b := backend_of(x)) is not None:
        return b.softcap(x, cap)
    return (np.tanh(x / cap) * cap).astype(np.float32)
