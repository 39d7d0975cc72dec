"""pfrate.py NAME...: one-token matvec (fused_mla._matvec_q) from DRAM (768 MB), 1 and 2 threads, Q4_K and Q8_0, kernel copies alternating."""
import sys, os, time, importlib
sys.path.insert(0, os.environ.get("KV", "/tmp/kv"))
import numpy as np, numba
from pyrt._kernels import codes
from pyrt.formats.qtypes import get_qtype
from gguf import GGMLQuantizationType as T
names = sys.argv[1:]
mods = {n: importlib.import_module(n + ".fused_mla") for n in names}
rng = np.random.default_rng(0)
n_in = 2048
x = rng.standard_normal(n_in).astype(np.float32)
for name, t, code in (("Q4_K", T.Q4_K, codes.Q4_K), ("Q8_0", T.Q8_0, codes.Q8_0)):
    qt = get_qtype(int(t)); rb = n_in // qt.block_size * qt.type_size
    rows = int(768e6 / rb) // 64 * 64
    w = rng.integers(0, 256, (rows, rb), dtype=np.uint8)
    for nt in (1, 2):
        numba.set_num_threads(nt)
        d = np.empty(rows, np.float32)
        for n in names: mods[n]._matvec_q(d, w, code, x)
        res = {n: [] for n in names}
        for r in range(4):
            for n in names:
                t0 = time.perf_counter(); mods[n]._matvec_q(d, w, code, x)
                res[n].append(w.nbytes / (time.perf_counter() - t0) / 1e9)
        print(name, nt, "t:", {n: round(sorted(v)[-2], 2) for n, v in res.items()}, flush=True)
