"""matvec.py FMT NAME...: one-token matvec (fused_mla._matvec_q) of kernel copies, alternating. FMT q5_0: 1408-wide
rows, one thread from L3 (16 MB) and two from DRAM (512 MB); FMT q4_k_q8_0: 2048-wide Q4_K and Q8_0 rows from DRAM
(768 MB), one and two threads."""
import sys, os, time, importlib
sys.path.insert(0, os.environ.get("KV", "/tmp/kv"))
import numpy as np, numba
from pyrt._kernels import codes
from pyrt.formats.qtypes import get_qtype
from gguf import GGMLQuantizationType as T
fmt, names = sys.argv[1], sys.argv[2:]
mods = {n: importlib.import_module(n + ".fused_mla") for n in names}
rng = np.random.default_rng(0)
if fmt == "q5_0":
    n_in, cases = 1408, [("Q5_0", T.Q5_0, codes.Q5_0, mb, nt) for mb, nt in ((16, 1), (512, 2))]
else:
    n_in, cases = 2048, [(f, t, c, 768, nt) for f, t, c in (("Q4_K", T.Q4_K, codes.Q4_K), ("Q8_0", T.Q8_0, codes.Q8_0))
                         for nt in (1, 2)]
x = rng.standard_normal(n_in).astype(np.float32)
for name, t, code, mb, nt in cases:
    qt = get_qtype(int(t))
    rb = n_in // qt.block_size * qt.type_size
    rows = int(mb * 1e6 / rb) // 64 * 64
    w = rng.integers(0, 256, (rows, rb), dtype=np.uint8)
    for b in range(0, rb, qt.type_size):  # finite f16 scales
        w[:, b:b + 2] = np.frombuffer(np.float16(0.01).tobytes(), np.uint8)
    numba.set_num_threads(nt)
    outs = {}
    for n in names:
        outs[n] = np.empty(rows, np.float32)
        mods[n]._matvec_q(outs[n], w, code, x)
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
    print(name, mb, "MB", nt, "t:", {n: round(sorted(v)[-2], 2) for n, v in res.items()}, "GB/s; equal", eq, flush=True)
