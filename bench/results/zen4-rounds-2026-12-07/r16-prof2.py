import sys, time, gc, mmap, numpy as np
def huge(a):
    n = a.nbytes; mm = mmap.mmap(-1, n + (2 << 20), flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    mm.madvise(mmap.MADV_HUGEPAGE)
    b = np.frombuffer(mm, np.uint8)
    off = (-b.ctypes.data) % (2 << 20)
    b = b[off:off + n].reshape(a.shape); b[:] = a
    return b
def ro(a):
    a = a.view(); a.flags.writeable = False; return a

from pyrt.bench.engines import PyrtEngine
from pyrt._kernels import fused_moe as fm, fused_mla as fk, repack_k as rk, codes
from pyrt.ops.moe import MoEDecode
T = {"moe": 0.0, "mla": 0.0}
N = {"moe": 0, "mla": 0}
def wrap(mod, name, key):
    real = getattr(mod, name)
    def f(*a):
        t = time.perf_counter(); real(*a); T[key] += time.perf_counter() - t; N[key] += 1
    setattr(mod, name, f)
e = PyrtEngine(sys.argv[1], n_ctx=1024, n_ubatch=512, n_threads=2)
rng = np.random.default_rng(1)
toks = rng.integers(0, e.n_vocab, 80).tolist()
e.decode(toks[:16], 0, logits_last=True)
decs = [o for o in gc.get_objects() if isinstance(o, MoEDecode)]
print(len(decs), "moe layers; kinds", decs[0].kinds)
orig = [(d.gate_exps, d.up_exps, d.gate_shexp, d.up_shexp, d.kinds.copy()) for d in decs]
rep = []; rep_e = []; rep_s = []
ORDER = sys.argv[2]
for d in decs:
    if ORDER == 'oldfirst': rep_e.append((ro(huge(d.gate_exps)), ro(huge(d.up_exps)), ro(huge(d.gate_shexp)), ro(huge(d.up_shexp)), d.kinds.copy()))
    g = huge(d.gate_exps); rk.repack_q4_k_r16(g)
    u = huge(d.up_exps); rk.repack_q4_k_r16(u)
    gs = huge(d.gate_shexp); rk.repack_q4_k_r16(gs)
    us = huge(d.up_shexp); rk.repack_q4_k_r16(us)
    k = d.kinds.copy(); k[0] = codes.Q4_K_R16; k[2] = codes.Q4_K_R16 if k[2] == codes.Q4_K else k[2]
    rep.append((ro(g), ro(u), ro(gs), ro(us), k))
    if ORDER != 'oldfirst': rep_e.append((ro(huge(d.gate_exps)), ro(huge(d.up_exps)), ro(huge(d.gate_shexp)), ro(huge(d.up_shexp)), d.kinds.copy()))
def use(sets):
    for d, (g, u, gs, us, k) in zip(decs, sets):
        d.gate_exps, d.up_exps, d.gate_shexp, d.up_shexp, d.kinds = g, u, gs, us, k
# check same logits
use(orig); l0 = e.ctx.decode(e._Batch.from_tokens([toks[16]], pos0=16)).copy(); e.seq_rm(16)
use(rep); l1 = e.ctx.decode(e._Batch.from_tokens([toks[16]], pos0=16)).copy()
print("same logits:", np.array_equal(l0, l1))
from pyrt.io.mapping import huge_page_share
print([huge_page_share(x) for x in rep[0][:4]], huge_page_share(orig[0][0]))
wrap(fm, "moe_block_decode", "moe"); wrap(fk, "mla_block_decode", "mla")
pos = 17
for rep_i in range(3):
    for name, sets in (("old", orig), ("r16", rep), ("copy_old", rep_e)):
        use(sets)
        for k in T: T[k] = 0.0; N[k] = 0
        t0 = time.perf_counter(); n = 16
        for j in range(n): e.decode([toks[(pos + j) % 80]], pos + j, logits_last=True)
        pos += n
        tt = (time.perf_counter() - t0) / n
        print(f"{name}: token {tt*1e3:.1f} ms ({1/tt:.1f} t/s): moe {T['moe']/n*1e3:.1f} ms, mla {T['mla']/n*1e3:.1f} ms, rest {(tt - (T['moe']+T['mla'])/n)*1e3:.1f} ms")
