"""Decompressed MLA prompt attention (16 heads, dk 192, dv 128, T=512 over N_KV+T cells): BLAS attention_matrix vs
the f32 flash kernel (flash_attn_rows), 2 threads; max |diff|."""
import sys, time, numpy as np
from pyrt.ops.attention import attention_matrix, flash_attn_rows
H, dk, dv, T = 16, 192, 128, 512
rng = np.random.default_rng(0)
for n_kv in (int(s) for s in sys.argv[1].split(",")):
    n = n_kv + T
    k = rng.standard_normal((n, H * dk)).astype(np.float32)
    v = rng.standard_normal((n, H * dv)).astype(np.float32)
    q = rng.standard_normal((T, H, dk)).astype(np.float32)
    cp = np.arange(n, dtype=np.int32); cs = np.ones(n, np.uint64)
    qp = np.arange(n_kv, n, dtype=np.int32); qs = np.zeros(T, np.int32)
    runs = {"BLAS": lambda: attention_matrix(q, k, v, cp, cs, qp, qs, 0.07, H, dv),
            "flash": lambda: flash_attn_rows(q, k, "f32", v, "f32", cp, cs, qp, qs, 0.07, H, dv)}
    res, outs = {}, {}
    for name, fn in runs.items():
        outs[name] = fn()
        best = 1e9
        for _ in range(3):
            t0 = time.perf_counter(); fn(); best = min(best, time.perf_counter() - t0)
        res[name] = round(best * 1e3, 1)
    print(n_kv, res, "max diff", float(np.abs(outs["BLAS"] - outs["flash"]).max()), flush=True)
