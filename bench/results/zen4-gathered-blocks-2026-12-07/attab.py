"""attab.py CELLS: GQA flash_attn, one token over f16 caches (Gemma 3 270M shape: 4 heads, 1 kv head, 256 wide, 18 layers;
Llama 3 8B shape: 32/8/128, 22 layers), the attention module of another commit against this checkout's, alternating. First:
  git show REV:pyrt/_kernels/attention.py > pyrt/_kernels/attention_old.py   (remove it afterwards)"""
import sys, time
import numpy as np
from pyrt._kernels import attention as NEW, attention_old as OLD
from pyrt._kernels import codes
n = int(sys.argv[1])
rng = np.random.default_rng(0)
for (H, HKV, D, L) in ((4, 1, 256, 18), (32, 8, 128, 22)):
    k = [rng.standard_normal((n, HKV * D)).astype(np.float16).view(np.uint16) for _ in range(L)]
    v = [rng.standard_normal((n, HKV * D)).astype(np.float16).view(np.uint16) for _ in range(L)]
    q = rng.standard_normal((1, H, D)).astype(np.float32)
    pos = np.arange(n, dtype=np.int32); seq = np.ones(n, np.uint64); kv_idx = np.arange(n, dtype=np.int32)
    n_split = max(1, min(16, n // 256))
    res, outs = {}, {}
    for rnd in range(4):
        for name, mod in (("old", OLD), ("new", NEW)):
            best = 1e9
            for _ in range(3):
                t0 = time.perf_counter()
                for il in range(L):
                    dst = np.empty((1, H, D), np.float32)
                    mod.flash_attn(dst, q, k[il], v[il], codes.F16, codes.F16, 0, 0, 0, HKV, pos, seq, kv_idx,
                                   np.array([n], np.int32), np.zeros(1, np.int32), np.float32(0.0625), 0, np.float32(0.0), 1, 64, n_split)
                best = min(best, time.perf_counter() - t0)
            outs[name] = dst
            res.setdefault(name, []).append(round(best * 1e3, 2))
    print(f"H={H} HKV={HKV} D={D} L={L} cells={n}:", {k_: (min(v_), max(v_)) for k_, v_ in res.items()}, "same bits", np.array_equal(outs["old"], outs["new"]))
