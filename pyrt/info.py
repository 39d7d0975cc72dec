"""`pyrt info`: what a GGUF file holds and what a context on it will cost in memory.

Builds the model (which validates every tensor against the hyperparameters) but allocates no cache.
"""

from __future__ import annotations

from collections import defaultdict

from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

from .io.gguf_file import GGUFFile
from .models import build_model
from .runtime.context import swa_cache_size

MiB = 1024.0 * 1024.0
_CACHE_GGML = {"f32": GGMLQuantizationType.F32, "f16": GGMLQuantizationType.F16,
               "bf16": GGMLQuantizationType.BF16, "q8_0": GGMLQuantizationType.Q8_0}


def cache_row_bytes(cache_type: str, n: int) -> int:
    block, size = GGML_QUANT_SIZES[_CACHE_GGML[cache_type]]
    return n // block * size


def describe(path: str, n_ctx: int = 4096, n_ubatch: int = 512, type_k: str = "f16", type_v: str = "f16",
             swa_full: bool = False, n_seq_max: int = 1) -> str:
    f = GGUFFile(path, use_mmap=True)  # metadata only: map, do not read
    model = build_model(f)
    hp = model.hp
    if n_ctx <= 0:
        n_ctx = hp.n_ctx_train
    lines = [f"file:            {f.path} ({f.file_size / MiB:.2f} MiB, GGUF v{f.version}, "
             f"{len(f.tensors)} tensors, {len(f.metadata)} metadata keys)",
             f"name:            {f.get('general.name', '?')}",
             f"architecture:    {hp.arch}"]
    for k in ("n_vocab", "n_ctx_train", "n_embd", "n_layer", "n_head", "n_head_kv", "n_embd_head_k",
              "n_embd_head_v", "n_ff", "n_rot", "f_norm_rms_eps", "rope_freq_base", "rope_freq_scale"):
        lines.append(f"  {k:<16} = {getattr(hp, k)}")
    for k, v in sorted(hp.extra.items()):
        lines.append(f"  {k:<16} = {v}")
    lines.append(f"  {'rope type':<16} = {'neox' if hp.rope_type == 2 else 'norm'}")
    tok_model = f.get("tokenizer.ggml.model", "?")
    lines.append(f"tokenizer:       {tok_model} (pre: {f.get('tokenizer.ggml.pre', 'default')}), "
                 f"{len(f.get('tokenizer.ggml.tokens', []))} tokens")
    by_type: dict[str, list] = defaultdict(lambda: [0, 0])
    for w in f.tensors.values():
        by_type[w.type_name][0] += 1
        by_type[w.type_name][1] += w.nbytes
    lines.append("tensor types:")
    for name, (count, nbytes) in sorted(by_type.items(), key=lambda kv: -kv[1][1]):
        lines.append(f"  {name:<6} {count:5d} tensors {nbytes / MiB:10.2f} MiB")
    lines.append("largest tensors:")
    for w in sorted(f.tensors.values(), key=lambda w: -w.nbytes)[:8]:
        lines.append(f"  {w.name:<32} {w.type_name:<6} {str(list(w.shape)):<18} {w.nbytes / MiB:9.2f} MiB")

    k_dims, v_dims = model.kv_dims()
    # sliding-window layers keep only the window (Context's cache_swa) unless swa_full
    n_swa = int(model.n_swa)
    is_swa = list(model.is_swa) if n_swa > 0 else [False] * hp.n_layer
    n_ctx_swa = swa_cache_size(n_ctx, n_swa, n_seq_max, min(n_ubatch, n_ctx)) if any(is_swa) else n_ctx
    if swa_full or all(is_swa) or n_ctx_swa >= n_ctx:
        n_ctx_swa = n_ctx
    cells = [n_ctx_swa if s else n_ctx for s in is_swa]
    k_bytes = sum(cache_row_bytes(type_k, d) * c for d, c in zip(k_dims, cells))
    v_bytes = sum(cache_row_bytes(type_v, d) * c for d, c in zip(v_dims, cells) if d)
    swa_line = []
    if any(is_swa) and n_ctx_swa < n_ctx:
        per_cell = [cache_row_bytes(type_k, d) + (cache_row_bytes(type_v, e) if e else 0) for d, e in zip(k_dims, v_dims)]
        swa_bytes = sum(b for b, s in zip(per_cell, is_swa) if s) * n_ctx_swa
        swa_line = [f"    of which SWA     = {swa_bytes / MiB:10.2f} MiB ({sum(is_swa)} sliding-window layers x "
                    f"{n_ctx_swa} cells, window {n_swa}; --swa-full: {sum(per_cell) * n_ctx / MiB:.2f} MiB in all)"]
    n_out = max(1, n_ubatch)
    # activations of one ubatch (x, norm, q/k/v, attention out, gate/up) + logits rows, f32
    act = n_ubatch * (3 * hp.n_embd + hp.n_head * hp.n_embd_head_k + 2 * hp.n_embd_k_gqa + 2 * hp.n_ff) * 4
    logits = n_out * hp.n_vocab * 4
    lines += [
        f"memory for n_ctx = {n_ctx}, n_ubatch = {n_ubatch}:",
        f"  weights (mapped)   = {f.weights_bytes() / MiB:10.2f} MiB",
        f"  KV self size       = {(k_bytes + v_bytes) / MiB:10.2f} MiB, K ({type_k}): {k_bytes / MiB:.2f} MiB, "
        f"V ({type_v}): {v_bytes / MiB:.2f} MiB",
        *swa_line,
        f"  scratch (ubatch)   = {act / MiB:10.2f} MiB activations + {logits / MiB:.2f} MiB logits (at most)",
    ]
    if model.is_mla:  # K-only latent cache (-mla 1..3): V is a view of each K row
        lines.insert(-1, f"  MLA latent cache   : {k_dims[0]} values per cell and layer (kv_lora_rank + n_rot), "
                         f"no V tensor; -mla 0 would need "
                         f"{sum(cache_row_bytes(type_k, d) + cache_row_bytes(type_v, e) for d, e in zip(*model.kv_dims(0))) * n_ctx / MiB:.2f} MiB")
    return "\n".join(lines)
