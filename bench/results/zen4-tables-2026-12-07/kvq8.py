"""kvq8.py CELLS: flash_mla decode over q8_0 caches (27 layers, 16 heads, one token, 2 threads, f32 items): the
FlashMLA module of another commit against this checkout's, in one process, alternating. First:
  git show REV:pyrt/_kernels/attention_mla.py > pyrt/_kernels/attention_mla_old.py   (remove it afterwards)"""
import sys, time, types
import numpy as np
import gguf
from pyrt.ops import mla, paths
from pyrt._kernels import attention_mla as NEW, attention_mla_old as OLD
H, C, R, L = 16, 512, 64, 27
n = int(sys.argv[1])
rng = np.random.default_rng(0)
q = rng.standard_normal((1, H, R + C)).astype(np.float32)
base = gguf.quants.quantize((0.5 * rng.standard_normal((min(n, 2048), R + C))).astype(np.float32), gguf.GGMLQuantizationType.Q8_0)
ks = [np.ascontiguousarray(np.tile(base, (-(-n // base.shape[0]), 1))[:n]) for _ in range(L)]
pos = np.arange(n, dtype=np.int32)
args = (pos, np.ones(n, np.uint64), pos.copy(), np.array([n], np.int32), np.zeros(1, np.int32), 0.1, R)
orig = mla.ak
res = {}
outs = {}
for rnd in range(4):
    for name, mod in (("old", OLD), ("new", NEW)):
        mla.ak = types.SimpleNamespace(**{k: getattr(orig, k) for k in dir(orig) if not k.startswith("__")})
        mla.ak.flash_attn_mla = mod.flash_attn_mla
        with paths.using(amx=False):
            best = 1e9
            for _ in range(3):
                t0 = time.perf_counter()
                for k in ks:
                    out = mla.flash_mla(q, k, "q8_0", *args)
                best = min(best, time.perf_counter() - t0)
        outs[name] = out
        res.setdefault(name, []).append(round(best * 1e3, 2))
mla.ak = orig
print(n, {k: (min(v), max(v)) for k, v in res.items()}, "rel diff", float(np.abs(outs["old"] - outs["new"]).max() / np.abs(outs["old"]).max()))
