"""kvflt.py CELLS [TOKENS]: flash_mla over f16 caches (27 layers of CELLS cells, 16 heads, TOKENS query tokens, 2
threads): the FlashMLA module of another commit against this checkout's, in one process, alternating. First:
  git show REV:pyrt/_kernels/attention_mla.py > pyrt/_kernels/attention_mla_old.py   (remove it afterwards)"""
import sys, time, types
import numpy as np
from pyrt.ops import mla, paths
from pyrt._kernels import attention_mla as NEW, attention_mla_old as OLD
H, C, R, L = 16, 512, 64, 27
n = int(sys.argv[1])
nt = int(sys.argv[2]) if len(sys.argv) > 2 else 1
rng = np.random.default_rng(0)
q = rng.standard_normal((nt, H, R + C)).astype(np.float32)
base = (0.5 * rng.standard_normal((min(n, 2048), R + C))).astype(np.float16).view(np.uint16)
ks = [np.ascontiguousarray(np.tile(base, (-(-n // base.shape[0]), 1))[:n]) for _ in range(L)]
pos = np.arange(n, dtype=np.int32)
args = (pos, np.ones(n, np.uint64), pos.copy(), np.arange(n - nt, n, dtype=np.int32), np.zeros(nt, np.int32), 0.1, R)
orig = mla.ak
res, outs = {}, {}
for rnd in range(4):
    for name, mod in (("old", OLD), ("new", NEW)):
        mla.ak = types.SimpleNamespace(**{k: getattr(orig, k) for k in dir(orig) if not k.startswith("__")})
        mla.ak.flash_attn_mla = mod.flash_attn_mla
        with paths.using(amx=False):
            best = 1e9
            for _ in range(3):
                t0 = time.perf_counter()
                for k in ks:
                    out = mla.flash_mla(q, k, "f16", *args)
                best = min(best, time.perf_counter() - t0)
        outs[name] = out
        res.setdefault(name, []).append(round(best * 1e3, 2))
mla.ak = orig
print(n, nt, {k: (min(v), max(v)) for k, v in res.items()}, "same bits", bool(np.array_equal(outs["old"], outs["new"])))
