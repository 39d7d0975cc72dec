#!/bin/bash
# A sampling profile of the FlashMLA items (Numba's JIT code has no symbols): perf samples the instruction
# pointer, the script dumps its anonymous executable mappings at exit (dumpjit.py), and the hottest addresses
# are shown in their disassembly (samples land on the instruction after the one that waited).
#   PERFD="-D 5000" HOTENV="X=1" ./hot.sh bf16 8192 150     # 27 caches of 8192 cells, one thread, skip setup
#   HOTENV="ONE=1" ./hot.sh bf16 1024 300                     # one 1024-cell cache for all layers (L2)
here=$(cd "$(dirname "$0")" && pwd)
mkdir -p /tmp/jitdump && rm -f /tmp/jitdump/*
{ echo "import sys; sys.path.insert(0, '$here')"; cat "$here/d16only.py"; } > /tmp/d16dump.py
echo 'sys.path.insert(0, "'"$here"'"); from dumpjit import dump; dump()' >> /tmp/d16dump.py
env ${HOTENV:-ONE=1} perf record ${PERFD:-} -e cpu-clock -F 20000 -o /tmp/hot.data python /tmp/d16dump.py ${2:-1024} 1 ${1:-bf16} ${3:-300} > /dev/null 2>&1
perf report -i /tmp/hot.data --no-children --sort sym 2>/dev/null | grep -o "[0-9.]*%.*0x00007[0-9a-f]*" | awk '{print $NF, $1}' > /tmp/hot.txt
python3 - <<'PY'
import os, re, subprocess
hot = {}
for line in open("/tmp/hot.txt"):
    a, p = line.split()
    hot[int(a, 16)] = float(p.rstrip('%'))
best = None
for f in os.listdir("/tmp/jitdump"):
    a, b = (int(x, 16) for x in f[:-4].split("-"))
    w = sum(p for x, p in hot.items() if a <= x < b)
    if best is None or w > best[0]:
        best = (w, f, a)
w, f, base = best
asm = subprocess.run(["objdump", "-D", "-b", "binary", "-mi386:x86-64", f"--adjust-vma={base:#x}", f"/tmp/jitdump/{f}"],
                     capture_output=True, text=True).stdout.splitlines()
addr = [int(m.group(1), 16) if (m := re.match(r"\s*([0-9a-f]+):", l)) else None for l in asm]
print("JIT region %", round(w, 1), "all JIT %", round(sum(hot.values()), 1))
shown = []
for a, p in sorted(hot.items(), key=lambda x: -x[1])[:12]:
    idx = [i for i, x in enumerate(addr) if x == a]
    if not idx or any(abs(idx[0] - j) < 30 for j in shown):
        continue
    i = idx[0]
    shown.append(i)
    tot = sum(hot.get(addr[j], 0) for j in range(max(0, i - 25), min(len(asm), i + 8)) if addr[j])
    print("=" * 10, hex(a), p, "window", round(tot, 1))
    for j in range(max(0, i - 25), min(len(asm), i + 8)):
        if addr[j] is not None:
            print(f"{hot.get(addr[j], 0):5.2f} {asm[j][30:110]}")
PY
