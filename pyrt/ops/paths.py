"""Which implementation runs where pyrt has a choice: the fused one-call decode blocks or op by op, and the
sizes at which one path overtakes another. Every path computes the same result (the tests hold each pair
equal); the choice is about speed, and about testing each path at small sizes.

One frozen record: `current()` is what the code reads. The defaults can be changed for a process with
PYRT_PATHS="name=value,..." (e.g. PYRT_PATHS=fused_moe_decode=0 for an A/B run) and for a block of code
with `using(name=value, ...)`, which holds in the calling thread (and the tasks it starts) until the block
ends. Nothing assigns module globals. Imports pyrt.errors only.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from contextvars import ContextVar
from dataclasses import dataclass

from ..errors import InvalidArgumentError


@dataclass(frozen=True)
class Paths:
    # A decoded token's MoE FFN (router to weighted sum, shared experts included) as one kernel call
    # (ops.moe.MoEDecode) where the weights allow it; False: op by op. Read when a model is loaded.
    fused_moe_decode: bool = True
    # A decoded token's absorbed MLA attention (W_UK, FlashMLA, W_UV) as one call (ops.mla.MLADecode). At load.
    fused_mla_decode: bool = True
    # ... and its whole attention block (norm, projections, RoPE, cache store, attention, attn_output) as one
    # call (ops.mla.MLABlockDecode). At load.
    fused_mla_block: bool = True
    # A decoded token's whole dense layer (llama / qwen2: norms, Q/K/V, RoPE, cache store, attention, attn_output,
    # SwiGLU FFN) as one call (ops.dense.DenseLayerDecode). At load.
    fused_dense_layer: bool = True
    # deepseek2 -mla 2/3: ubatches of at least this many tokens decompress the cached latents and run ordinary
    # flash attention, smaller ones the absorbed FlashMLA kernel. The crossover of the two per-token costs at
    # DeepSeek-V2-Lite shapes is ~128 tokens (ik_llama.cpp uses the same constant); re-derive it with
    # `python bench/bench_mla.py crossover --n-kv 1024 --tokens 32,64,128,256,512`.
    mla_decompress_min_tokens: int = 128
    # The decompressed prompt attention runs on AMX-BF16 tiles (ops.mla.heads_attention_amx) where they are
    # granted; False: per-head matrix products through BLAS (ops.attention.attention_matrix).
    mla_heads_amx: bool = True
    # Without those tiles for the decompressed attention, but with FlashMLA's (ops.mla.amx_takes), prompts over
    # at least this many cells take the absorbed attention, which grows slower with depth than decompressing
    # into BLAS (a 512-token ubatch of the DeepSeek-V2-Lite shapes on the 2-core Xeon: 11.5 vs 9.9 ms/token at
    # 0 cells, 17.5 vs 19.8 at 4096, even at ~1700; bench/results/flashmla-amx-xeon-2026-12-04). With them,
    # decompressing stays ahead at every depth measured (to 8192).
    mla_amx_min_cells: int = 2048
    # Up to this many tokens, every (token, expert) pair of a MoE layer is one group of a single grouped matmul
    # per weight (ggml's mul_mat_id); above it, the tokens routed to an expert share one matrix call.
    moe_id_max_tokens: int = 1
    # matmuls of ops.matmul.AMX_TYPES of at least amx_min_tokens tokens run on AMX-INT8 tiles where the CPU and kernel
    # allow (ops.matmul.amx_enabled); amx=0 keeps them on the AVX kernels and BLAS (A/B runs).
    amx: bool = True
    amx_min_tokens: int = 32
    # ... the K-quants from this many tokens (their kernels against Q8_K fall behind the tiles sooner: 1408x2048
    # Q4_K/Q5_K's prompt tiles are even at ~12 tokens, Q6_K's at ~24 (a small share of a Q4_K_M file), on the
    # 2-core Xeon: bench/results/k-tiles-xeon-2026-12-06, bench/results/amx-k-quants-xeon-*.md)
    amx_min_tokens_k: int = 12
    # Bytes of the f32 weight tile of the dequantize + BLAS matmul path (one per worker thread; stays in L2).
    blas_tile_bytes: int = 2 << 20
    # Cells per KV split at least in the device FlashMLA kernel.
    device_min_split_cells: int = 64
    # The sliding-window cache is padded to a multiple of this many cells (llama.cpp: 256).
    swa_pad: int = 256

    def __post_init__(self):
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if f.type == "bool":
                if not isinstance(v, bool):
                    raise InvalidArgumentError(f"paths: {f.name} must be a bool, not {v!r}")
            elif isinstance(v, bool) or not isinstance(v, int) or v < (0 if f.name.endswith("_tokens") else 1):
                raise InvalidArgumentError(f"paths: {f.name} must be an integer >= "
                                           f"{0 if f.name.endswith('_tokens') else 1}, not {v!r}")


_NAMES = {f.name: f.type for f in dataclasses.fields(Paths)}


def _parse(text: str) -> Paths:
    """PYRT_PATHS's "name=value,..." -> Paths (bools: 1/0/true/false/on/off)."""
    kw = {}
    for item in filter(None, (s.strip() for s in text.split(","))):
        name, sep, value = item.partition("=")
        name, value = name.strip(), value.strip().lower()
        if not sep or name not in _NAMES:
            raise InvalidArgumentError(f"PYRT_PATHS: {item!r} is not name=value with a name among "
                                       f"{', '.join(_NAMES)}")
        if _NAMES[name] == "bool":
            if value not in ("1", "0", "true", "false", "on", "off"):
                raise InvalidArgumentError(f"PYRT_PATHS: {name} takes 1/0/true/false/on/off, not {value!r}")
            kw[name] = value in ("1", "true", "on")
        else:
            try:
                kw[name] = int(value, 0)
            except ValueError:
                raise InvalidArgumentError(f"PYRT_PATHS: {name} takes an integer, not {value!r}") from None
    return Paths(**kw)


_process: Paths | None = None
_scoped: ContextVar[Paths | None] = ContextVar("pyrt_paths", default=None)


def current() -> Paths:
    """The paths in force here: a `using` block's, else the process's (PYRT_PATHS, read on first use)."""
    p = _scoped.get()
    if p is not None:
        return p
    global _process
    if _process is None:
        _process = _parse(os.environ.get("PYRT_PATHS", ""))
    return _process


@contextlib.contextmanager
def using(**changes):
    """Within the block (this thread and the tasks it starts), `current()` is the current record with
    `changes`; unknown names and bad values raise InvalidArgumentError before anything changes."""
    unknown = set(changes) - set(_NAMES)
    if unknown:
        raise InvalidArgumentError(f"paths: no setting named {', '.join(sorted(unknown))}")
    token = _scoped.set(dataclasses.replace(current(), **changes))
    try:
        yield current()
    finally:
        _scoped.reset(token)
