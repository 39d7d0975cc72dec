"""rate5.py NAME...: Q5_0 / Q4_0 one-token matvec rate (fused_mla._matvec_q) of kernel copies, 1t in L3 (16 MB) and 2t from DRAM (512 MB), alternating."""
import sys, os, time, importlib
sys.path.insert(0, os.environ.get("KV", "/tmp/kv"))
import numpy as np, numba
from pyrt._kernels import codes
from pyrt.formats.qtypes import get_qtype
from gguf import GGMLQuantizationType as T
names = sys.argv[1:]
mods = {n: importlib.import_module(n + ".fused_mla") for n in names}
rng = np.random.default_rng(0)
n_in = 1408
x = rng.standard_normal(n_in).astype(np.float32)
for name, t, code in (("Q5_0", T.Q5_0, codes.Q5_0),):
    qt = get_qtype(int(t)); rb = n_in // qt.block_size * qt.type_size
    for mb, nt in ((16, 1), (512, 2)):
        rows = int(mb * 1e6 / rb) // 64 * 64
        w = rng.integers(0, 256, (rows, rb), dtype=np.uint8)
        for b in range(0, rb, qt.type_size):
            w[:, b:b + 2] = np.frombuffer(np.float16(0.01).tobytes(), np.uint8)
        numba.set_num_threads(nt)
        outs = {}
        for n in names:
            d = np.empty(rows, np.float32); mods[n]._matvec_q(d, w, code, x); outs[n] = d
        eq = all(np.array_equal(outs[n], outs[names[0]]) for n in names)
        reps = max(1, int(300e6 / w.nbytes))
        res = {n: [] for n in names}
        d = np.empty(rows, np.float32)
        for r in range(5):
            for n in names:
                t0 = time.perf_counter()
                for _ in range(reps):
                    mods[n]._matvec_q(d, w, code, x)
                res[n].append(w.nbytes * reps / (time.perf_counter() - t0) / 1e9)
        print(name, mb, "MB", nt, "t:", {n: round(max(v), 2) for n, v in res.items()}, "equal", eq, flush=True)
