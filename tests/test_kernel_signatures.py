"""One compiled copy of each kernel for each argument type: Numba types a constant that one jitted function
passes to another (a kind code, a 0 offset) as a Literal and compiles the callee once more for that value, the
same machine code again in every Numba cache and every CI lane. pyrt's kernels pass np.int64(...) instead. Runs
a prompt and decoded tokens of each model family and weight kind, then reads the signatures of every kernel."""

import sys

import pytest
import synthetic
import synthetic_deepseek2 as sd
from numba import types
from numba.core.registry import CPUDispatcher

import pyrt
from pyrt.runtime.context import Batch

# Kernels compiled for a constant by design: the decoded token's FlashMLA (one query: q_tile 1, t0 0, t1 1, its
# query loops folded) and the Q4_K/Q5_K dequantization with and without the fifth bit.
SPECIALIZED = {"flash_attn_mla", "_mla_item", "_dequant_rows_q45_k"}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("kernel_signatures")
    out = []
    for arch, wtype in (("llama", "Q4_0"), ("llama", "Q8_0"), ("llama", "Q5_0"), ("qwen2", "Q4_K"),
                        ("llama", "Q6_K"), ("llama", "Q5_K"), ("llama", "F16")):
        out.append(str(d / f"{arch}-{wtype}.gguf"))
        synthetic.write_model(out[-1], arch, wtype, n_layer=2)
    for name, wtype, conv, dims in sd.VARIANTS[2:]:  # k_b Q8_0 with q_lora, kv_b Q4_0 without
        out.append(str(d / f"{name}.gguf"))
        sd.write_model(out[-1], wtype, conv, **dims)
    return out


def _signatures(dispatcher):
    """The signatures compiled in this process and those in the dispatcher's disk-cache index (kernels that an
    earlier process compiled, or that load inside a cached caller, never compile here)."""
    sigs = set(dispatcher.signatures)
    cache = dispatcher._cache  # numba.core.caching.FunctionCache: its index maps (signature, target, ...) to code
    sigs.update(key[0] for key in cache._cache_file._load_index())
    return sigs


def _literal_signatures():
    found, seen = [], set()
    for name, mod in list(sys.modules.items()):
        if not name.startswith("pyrt._kernels"):
            continue
        for obj in vars(mod).values():
            if isinstance(obj, CPUDispatcher) and obj.py_func.__name__ not in SPECIALIZED and id(obj) not in seen:
                seen.add(id(obj))
                found += [f"{obj.py_func.__module__}.{obj.py_func.__name__}{sig}" for sig in _signatures(obj)
                          if any(isinstance(a, types.Literal) for a in sig)]
    return found


def test_no_kernel_compiled_for_a_constant(files):
    for path in files:
        for cache in ("f16", "q8_0"):
            llm = pyrt.load(path, n_ctx=64, n_threads=2, type_k=cache, type_v=cache, warmup=False)
            logits = llm.ctx.decode(Batch.from_tokens([5, 9, 14, 30, 2, 7, 11], pos0=0, logits="last"))
            tok = int(logits[-1].argmax())
            for pos in range(7, 10):
                tok = int(llm.ctx.decode(Batch.from_tokens([tok], pos0=pos, logits="last"))[-1].argmax())
    found = _literal_signatures()
    assert not found, "\n".join(found)
