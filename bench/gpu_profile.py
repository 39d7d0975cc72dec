"""Where a CUDA decode step's time goes: kernel launches (Python + driver) vs the kernels themselves.

    python bench/gpu_profile.py [-m model.gguf] [-n 32] [--json OUT.json]

Decodes n tokens on --device cuda after a warm-up, then the same again with a CUDA event pair around
every kernel launch (recorded on the stream, read after the run): the sum of kernel times, the number of
launches per token, the wall time per token, and the weight bytes read per token over the kernel time as
a share of the GPU's memory bandwidth (--peak-gbs, default 4800 for an H200). Needs a GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-m", "--model", default=None)
    ap.add_argument("-n", "--n-tokens", type=int, default=32)
    ap.add_argument("--peak-gbs", type=float, default=4800.0, help="the GPU's memory bandwidth in GB/s")
    ap.add_argument("--json", default=None)
    a = ap.parse_args(argv)

    from numba import cuda
    if os.environ.get("NUMBA_ENABLE_CUDASIM", "0") not in ("", "0"):  # a dry run of this script
        from numba.cuda.simulator.kernel import FakeCUDAKernel as CUDADispatcher
    else:
        from numba.cuda.dispatcher import CUDADispatcher

    import pyrt
    from pyrt.runtime.context import Batch

    llm = pyrt.load(a.model, n_ctx=512, device="cuda", progress=False)
    ctx = llm.ctx
    weight_bytes = sum(w.raw.nbytes for w in llm.file.tensors.values())

    def decode_run(pos0: int) -> float:
        cuda.synchronize()
        t0 = time.perf_counter()
        for i in range(a.n_tokens):
            ctx.decode(Batch.from_tokens([1 + i % 100], pos0=pos0 + i))
        cuda.synchronize()
        return time.perf_counter() - t0

    ctx.decode(Batch.from_tokens([1, 2, 3, 4]))
    wall = decode_run(4)

    events: list = []
    names: dict[str, int] = {}
    orig = CUDADispatcher.__getitem__

    def timed(self, cfg):
        launch = orig(self, cfg)

        def run(*args):
            e0, e1 = cuda.event(), cuda.event()
            e0.record()
            launch(*args)
            e1.record()
            events.append((getattr(self, "py_func", getattr(self, "fn", None)).__name__, e0, e1))
        return run

    CUDADispatcher.__getitem__ = timed
    try:
        wall_timed = decode_run(4 + a.n_tokens)
    finally:
        CUDADispatcher.__getitem__ = orig
    per_kernel: dict[str, float] = {}
    for name, e0, e1 in events:
        e1.synchronize()
        per_kernel[name] = per_kernel.get(name, 0.0) + e0.elapsed_time(e1) / 1e3
        names[name] = names.get(name, 0) + 1
    k_time = sum(per_kernel.values())
    if not events or k_time <= 0:
        print("gpu_profile: no kernel launches were timed (the CUDA simulator has no dispatcher to wrap)")
        k_time = float("nan")
    n = a.n_tokens
    res = {
        "gpu": ctx.backend.describe(), "model": str(llm.file.path), "tokens": n,
        "wall_ms_per_token": 1e3 * wall / n, "tok_per_s": n / wall,
        "launches_per_token": len(events) / n,
        "kernel_ms_per_token": 1e3 * k_time / n,
        "launch_overhead_share": max(0.0, 1.0 - k_time / wall_timed),
        "weight_gb_per_token": weight_bytes / 1e9,
        "bandwidth_share_of_kernel_time": weight_bytes * n / k_time / 1e9 / a.peak_gbs,
        "bandwidth_share_of_wall": weight_bytes * n / wall / 1e9 / a.peak_gbs,
        "kernels_ms_per_token": {k: 1e3 * v / n for k, v in sorted(per_kernel.items(), key=lambda kv: -kv[1])},
        "launches_by_kernel_per_token": {k: c / n for k, c in names.items()},
    }
    for k, v in res.items():
        if not isinstance(v, dict):
            print(f"{k:32s} {v:.4g}" if isinstance(v, float) else f"{k:32s} {v}")
    print("kernel time per token (ms):")
    for k, v in res["kernels_ms_per_token"].items():
        print(f"  {k:28s} {v:8.3f}  ({res['launches_by_kernel_per_token'][k]:.0f} launches)")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(res, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
