"""Writes the anonymous executable mappings of this process (Numba's JIT code) to files named by address."""
import ctypes, os
def dump(outdir="/tmp/jitdump"):
    for line in open("/proc/self/maps"):
        parts = line.split()
        if len(parts) < 5 or "x" not in parts[1] or "r" not in parts[1]:
            continue
        if len(parts) >= 6 and parts[5].startswith("/"):
            continue
        a, b = (int(x, 16) for x in parts[0].split("-"))
        if b - a > (64 << 20):
            continue
        try:
            data = ctypes.string_at(a, b - a)
        except Exception:
            continue
        open(f"{outdir}/{a:x}-{b:x}.bin", "wb").write(data)
