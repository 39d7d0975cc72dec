"""What GGUFFile.fingerprint costs on a file: time (page cache warm, as after a load's prefetch) and bytes hashed.

    python tools/fingerprint_cost.py MODEL.gguf [--repeat 5]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from pyrt.io import gguf_file as gf  # noqa: E402


def hashed_bytes(f: gf.GGUFFile) -> int:
    n = f.data_offset
    for w in f.tensors.values():
        t = w.nbytes
        if t <= gf.FP_BLOCKS * gf.FP_BLOCK:
            n += t
            continue
        n += gf.FP_BLOCKS * gf.FP_BLOCK
        if t > gf.FP_STRIDE:
            n += len(range(0, t - gf.FP_STRIDE_BYTES + 1, gf.FP_STRIDE)) * gf.FP_STRIDE_BYTES
    return n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--cold", action="store_true", help="drop the file from the page cache first (a load "
                    "without the prefetch)")
    a = ap.parse_args()
    f = gf.GGUFFile(a.model, use_mmap=True)  # the cost through the mapping
    if a.cold:
        from pyrt.io.mapping import drop_from_page_cache
        drop_from_page_cache(a.model)
        t0 = time.perf_counter()
        f.fingerprint()
        print(f"cold page cache: {(time.perf_counter() - t0) * 1000:.1f} ms")
    ts = []
    for _ in range(a.repeat):
        t0 = time.perf_counter()
        fp = f.fingerprint()
        ts.append(time.perf_counter() - t0)
    print(f"{a.model}: {f.file_size / 2**30:.2f} GiB, {len(f.tensors)} tensors, header {f.data_offset / 2**20:.2f} MiB, "
          f"hashed {hashed_bytes(f) / 2**20:.2f} MiB; fingerprint {fp}: first {ts[0] * 1000:.1f} ms, "
          f"best of {a.repeat} {min(ts) * 1000:.1f} ms")


if __name__ == "__main__":
    main()
