"""One decoded token's FlashMLA items on AMX tiles, a kernel revision against the working tree: one item over
all cells of each of 27 layers' f16 caches (rows out of the CPU caches when their turn comes), one thread,
CPU time, the revisions alternating; best of ROUNDS.

    PYTHONPATH=. python bench/results/mla-value-words-xeon-2026-12-04/item_ab.py REV [N_CELLS] [ROUNDS]

REV's pyrt/_kernels/attention_mla_amx.py and softmax.py are loaded beside the current ones (their other sibling
imports from the working tree's pyrt._kernels), so the comparison isolates those files.
"""
import importlib.util
import subprocess
import sys
import tempfile
import time

import numpy as np

from pyrt._kernels import attention_mla_amx as new
from pyrt._kernels.kv import KIND_F16
from pyrt.ops import mla

rev = sys.argv[1]
n = int(sys.argv[2]) if len(sys.argv) > 2 else 8192
rounds = int(sys.argv[3]) if len(sys.argv) > 3 else 10


def load(name, path, subst=()):
    """REV's path as module name, its relative imports from the working tree's pyrt._kernels (subst first)."""
    src = subprocess.run(["git", "show", f"{rev}:{path}"], check=True, capture_output=True, text=True).stdout
    for a, b in subst:
        src = src.replace(a, b)
    src = src.replace("from .", "from pyrt._kernels.").replace("cache=True", "cache=False")
    with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as f:
        f.write(src)
    spec = importlib.util.spec_from_file_location(name, f.name)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


load("softmax_rev", "pyrt/_kernels/softmax.py")  # the tile masks' signature changed with the kernels
old = load("amx_rev", "pyrt/_kernels/attention_mla_amx.py", [("from .softmax import", "from softmax_rev import")])

H, C, R, L = 16, 512, 64, 27
rng = np.random.default_rng(0)
q = rng.standard_normal((1, H, R + C)).astype(np.float32)
ks = [(0.5 * rng.standard_normal((n, R + C))).astype(np.float16).view(np.uint16) for _ in range(L)]
pos = np.arange(n, dtype=np.int32)
seq = np.ones(n, np.uint64)
cfg = mla.amx_config()
if cfg.size == 0:
    sys.exit("no AMX-BF16 tiles here")
qpos, qseq, cfgp = np.array([n], np.int32), np.zeros(1, np.int32), np.int64(cfg.ctypes.data)


def run(mod):
    acc, m, l = np.zeros((H, C), np.float32), np.zeros(H, np.float32), np.zeros(H, np.float32)
    qp = mod.pack_q(q)
    t0 = time.process_time()
    for k in ks:
        mod.mla_item_amx(acc, m, l, qp, H, k, KIND_F16, R, pos, seq, pos, qpos, qseq, np.float32(0.1), 0, 1, 0, n,
                         0, cfgp)
    return time.process_time() - t0, acc / l[:, None]


best = {}
outs = {}
for _ in range(rounds + 1):  # the first compiles
    for name, mod in ((rev, old), ("working tree", new)):
        t, outs[name] = run(mod)
        best[name] = min(best.get(name, 1e9), t)
tiles = L * n / 32
for name, t in best.items():
    print(f"{name}: {t * 1e3:.1f} ms per token, {t / tiles * 1e6:.2f} us per 32-cell tile")
print(f"largest difference of the outputs: {np.abs(outs[rev] - outs['working tree']).max():.3g}")
