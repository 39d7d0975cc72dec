"""depth.py FILE N_KV...: in-model one-token decode at each depth: total ms/token and the MLA blocks' share (timer around fk.mla_block_decode)."""
import sys, time, numpy as np
from pyrt.bench.engines import PyrtEngine
from pyrt._kernels import fused_mla as fk
from pyrt.ops import mla
acc = [0.0, 0]
real = fk.mla_block_decode
def timed(*a):
    t0 = time.perf_counter(); real(*a); acc[0] += time.perf_counter() - t0; acc[1] += 1
mla.fk = type(sys)("fkproxy"); mla.fk.__dict__.update(fk.__dict__); mla.fk.mla_block_decode = timed
depths = [int(a) for a in sys.argv[2:]]
e = PyrtEngine(sys.argv[1], n_ctx=max(depths) + 64, n_ubatch=512, n_threads=2, mla=3)
rng = np.random.default_rng(1)
toks = rng.integers(0, e.n_vocab, max(depths) + 64).tolist()
done = 0
for d in depths:
    while done < d:
        n = min(512, d - done); e.decode(toks[done:done + n], done, logits_last=True); done += n
    for rep in range(2):
        e.seq_rm(d)
        acc[0] = 0.0; acc[1] = 0
        t0 = time.perf_counter()
        for j in range(16):
            e.decode([toks[d + j]], d + j, logits_last=True)
        tot = (time.perf_counter() - t0) / 16 * 1e3
        print(f"N_KV {d}: {tot:.2f} ms/token, MLA blocks {acc[0] / 16 * 1e3:.2f} ms ({acc[1] // 16} calls/token)", flush=True)
cap = []
def grab(*a):
    cap.append(a); real(*a)
mla.fk.mla_block_decode = grab
e.decode([toks[depths[-1] + 16]], depths[-1] + 16, logits_last=True)
a = cap[0]
k = a[18]
print("k cache view:", k.shape, k.dtype, k.strides, "contiguous", k.flags.c_contiguous, "kv_idx", a[23].shape, a[23][:8], "kv_tile", a[27], "n_split", a[28])
