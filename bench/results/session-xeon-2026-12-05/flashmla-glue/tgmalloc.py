"""TG at depth and page faults per token, glibc malloc as it starts, then with mallopt thresholds raised."""
import sys, time, resource, ctypes
import numpy as np
from pyrt.bench.engines import PyrtEngine
from pyrt.bench.sweep import decode_chunked
from pyrt.ops import mla
path, depth, rounds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
e = PyrtEngine(path, n_ctx=depth + 512, n_ubatch=512, n_threads=2, mla=3)
rng = np.random.default_rng(1)
decode_chunked(e, rng.integers(0, e.n_vocab, depth).tolist(), 0)
toks = rng.integers(0, e.n_vocab, 16).tolist()
def run(tag):
    for mi in (16, 4):
        mla.MIN_ITEMS = mi
        e.seq_rm(depth); e.decode([toks[0]], depth); e.seq_rm(depth)
        f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        t0 = time.perf_counter()
        for j, t in enumerate(toks):
            e.decode([t], depth + j)
        dt = time.perf_counter() - t0
        f1 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        print(tag, "splits", mi, "t/s %.2f" % (len(toks) / dt), "faults/token %.0f" % ((f1 - f0) / len(toks)), flush=True)
for r in range(rounds):
    run("default")
libc = ctypes.CDLL("libc.so.6")
M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3
print(libc.mallopt(M_MMAP_THRESHOLD, 64 << 20), libc.mallopt(M_TRIM_THRESHOLD, 1 << 30), libc.mallopt(M_TOP_PAD, 64 << 20))
for r in range(rounds):
    run("mallopt")
