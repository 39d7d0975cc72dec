"""rate2.py N_IN MB NAME...: one-token Q8_0/Q4_0 matvec GB/s of kernel copies (KV dir), 1 and 2 threads, alternating."""
import sys, os, time, importlib
sys.path.insert(0, os.environ.get("KV", "/tmp/kv"))
import numpy as np, numba
from pyrt.formats.qtypes import get_qtype
from gguf import GGMLQuantizationType as T
n_in, mb, names = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3:]
mods = {n: importlib.import_module(n + ".matmul_q8_0") for n in names}
rng = np.random.default_rng(0)
x = rng.standard_normal((1, n_in)).astype(np.float32)
xq = np.empty((1, n_in // 32 * 34), np.uint8)
mods[names[0]].quantize_rows_q8_0(xq, x)
fmts = os.environ.get("FMTS", "Q8_0").split(",")
for f in fmts:
    t = getattr(T, f); qt = get_qtype(int(t)); rb = n_in // qt.block_size * qt.type_size
    rows = int(mb * 1e6 / rb) // 64 * 64
    w = rng.integers(0, 256, (rows, rb), dtype=np.uint8)
    for b in range(0, rb, qt.type_size):
        w[:, b:b + 2] = np.frombuffer(np.float16(0.01).tobytes(), np.uint8)
    d = np.empty((1, rows), np.float32)
    for nt in (1, 2):
        numba.set_num_threads(nt)
        res = {n: [] for n in names}
        fns = {n: getattr(mods[n], "matmul_" + f.lower()) for n in names}
        for n in names: fns[n](d, w, xq)
        for r in range(5):
            for n in names:
                t0 = time.perf_counter(); fns[n](d, w, xq); res[n].append(w.nbytes / (time.perf_counter() - t0) / 1e9)
        print(f, n_in, mb, "MB", nt, "t:", {n: round(sorted(v)[-2], 2) for n, v in res.items()}, flush=True)
