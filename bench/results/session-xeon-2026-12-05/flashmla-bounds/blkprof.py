"""The fused attention block of a decoded token timed per phase (rdtsc; TSC 2.6 GHz): a copy of the kernels with
patch_prof.py (and patch_3r.py or patch_pfuv.py for the variants), KP its name. The counters' address is baked into
the compiled code: delete the copy's fused_mla entries from the Numba cache before each run.
    ./mk.sh kprof patch_prof.py && rm -f $NUMBA_CACHE_DIR/kprof*/fused_mla.*; KP=kprof python blkprof.py FILE 32 [DEPTH]"""
import sys, time, os
sys.path.insert(0, os.environ.get("KV", "/tmp/kv"))
import numpy as np
from pyrt.bench.engines import PyrtEngine
from pyrt.bench.sweep import decode_chunked
from pyrt.ops import mla as om
import importlib
kf = importlib.import_module(os.environ.get("KP", "kprof") + ".fused_mla")
path, ntok = sys.argv[1], int(sys.argv[2]); depth = int(sys.argv[3]) if len(sys.argv) > 3 else 0
e = PyrtEngine(path, n_ctx=depth + 512, n_ubatch=512, n_threads=2, mla=3)
om.fk = kf
rng = np.random.default_rng(1)
if depth:
    decode_chunked(e, rng.integers(0, e.n_vocab, depth).tolist(), 0)
toks = rng.integers(0, e.n_vocab, ntok).tolist()
names = ["norm+quant", "q+kv_a region", "rms/rope/store/split", "mla_decode", "wo region"]
mb = [0, 3.539 + 0.664, 0, 0.721 + 0.590, 2.359]
for rnd in range(3):
    e.seq_rm(depth); e.decode([toks[0]], depth); e.seq_rm(depth)
    kf.PROF[:] = 0
    t0 = time.perf_counter()
    for j, t in enumerate(toks):
        e.decode([t], depth + j)
    tot = (time.perf_counter() - t0) / ntok * 1e3
    n = kf.PROF[5]
    if hasattr(kf, "PROF2"):  # ../flashmla-inmodel/patch_prof2.py: the one-region mla_decode's items per phase
        print("items (W_UK, item, W_UV, whole) us:", np.round(kf.PROF2.reshape(16, 4)[:4] / n / 2600, 1).tolist())
        kf.PROF2[:] = 0
    print(f"depth {depth} {1e3/tot:.2f} t/s; per layer us: " + ", ".join(
        f"{nm} {kf.PROF[i]/n/2600:.1f}" + (f" ({mb[i]*1e3/(kf.PROF[i]/n/2600):.1f} GB/s)" if mb[i] else "") for i, nm in enumerate(names)), flush=True)
