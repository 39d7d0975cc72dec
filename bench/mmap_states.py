"""Default decode against --mmap and --no-mmap after different page-cache histories of the model file.

Each state is produced, then `pyrt bench run -m FILE -p 0 -n N -r R` runs in a fresh process with the
default loading (read into anonymous memory when the file fits in half of the available memory, else
mapped); the state is produced again and the same command runs with --mmap (the shared mapping), and again
with --no-mmap. The table gives the tg rates, the ratios to --no-mmap and what the default run reported of
its weights (how it loaded them, the share in 2 MiB pages, why it chose so). The issue's target: the default
within 5% of --no-mmap in every state. States:

  cold         the file dropped from the page cache (fsync + POSIX_FADV_DONTNEED): a fresh boot
  written      a fresh copy written with write() just now (dirty, small folios), run on the copy
  moved        that copy renamed after one --mmap run on it (same inode, same cached pages)
  small        dropped, then read back 4 KiB at a time in random order with readahead off
               (POSIX_FADV_RANDOM): the page cache holds it in 4 KiB folios, as a host that split the
               folios of an idle file leaves it
  evicted      cached, then every other 64 MiB range dropped (memory pressure evicted part of it)
  shared       another process maps the whole file without 2 MiB alignment and keeps its 4 KiB page
               tables (a second server on the host) while the benchmark runs
  warm         right after a --mmap run (the page cache as a mapped run left it)

    python bench/mmap_states.py -m FILE [-t 2] [-n 32] [-r 3] [--states cold,written,...]
                                [--modes default,mmap,no-mmap] [--tmp DIR]

Writes nothing but the copy in --tmp (default: next to FILE), which it removes. Linux only.
"""

from __future__ import annotations

import argparse
import mmap
import os
import random
import re
import shutil
import subprocess
import sys
import time

from pyrt.io.mapping import drop_from_page_cache as drop

STATES = ("cold", "written", "moved", "small", "evicted", "shared", "warm")
CHUNK = 64 << 20


def read_sequential(path: str) -> None:
    with open(path, "rb", buffering=0) as fh:
        while fh.read(CHUNK):
            pass


def read_small_random(path: str) -> None:
    """Every 4 KiB page once, in random order, readahead off: 4 KiB folios."""
    size = os.path.getsize(path)
    pages = list(range((size + 4095) // 4096))
    random.Random(0).shuffle(pages)
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)
        for p in pages:
            os.pread(fd, 4096, p * 4096)
    finally:
        os.close(fd)


def evict_half(path: str) -> None:
    size = os.path.getsize(path)
    fd = os.open(path, os.O_RDONLY)
    try:
        for off in range(0, size, 2 * CHUNK):
            os.posix_fadvise(fd, off, CHUNK, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


_HOLDER = r"""
import mmap, sys, os
f = open(sys.argv[1], "rb")
m = mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ)
s = 0
for off in range(0, len(m), 4096):
    s += m[off]
print("ready", flush=True)
sys.stdin.read()
"""


MODES = ("default", "mmap", "no-mmap")
FLAGS = {"default": [], "mmap": ["--mmap"], "no-mmap": ["--no-mmap"]}


def bench(path: str, args, mode: str) -> tuple[float | None, str]:
    cmd = [sys.executable, "-m", "pyrt.cli", "bench", "run", "-m", path, "-p", "0", "-n", str(args.n),
           "-r", str(args.r), "-t", str(args.threads)] + FLAGS[mode]
    p = subprocess.run(cmd, capture_output=True, text=True)
    out = p.stdout + p.stderr
    tg = None
    for line in out.splitlines():
        m = re.search(r"\|\s+tg\d+\s+\|\s+([0-9.]+)", line)
        if m and line.lstrip("| ").startswith("pyrt"):
            tg = float(m.group(1))
    pages = ""
    m = re.search(r"pyrt_weights:\s*(.*)", out)
    if m:
        pages = m.group(1).strip()
    if tg is None:
        pages = "failed: " + " ".join(out.strip().splitlines()[-1:])
    return tg, pages


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-m", "--model", required=True)
    ap.add_argument("-t", "--threads", type=int, default=2)
    ap.add_argument("-n", type=int, default=32)
    ap.add_argument("-r", type=int, default=3)
    ap.add_argument("--states", default=",".join(STATES))
    ap.add_argument("--modes", default=",".join(MODES), help="loading modes to run (default: all three)")
    ap.add_argument("--tmp", default=None, help="folder for the copy (default: next to the model)")
    a = ap.parse_args(argv)
    src = os.path.abspath(a.model)
    states = [s for s in a.states.split(",") if s]
    bad = [s for s in states if s not in STATES]
    if bad:
        ap.error(f"unknown state {bad[0]!r} (choose from {', '.join(STATES)})")
    modes = [m for m in a.modes.split(",") if m]
    bad = [m for m in modes if m not in MODES]
    if bad or not modes:
        ap.error(f"unknown mode {bad[0] if bad else ''!r} (choose from {', '.join(MODES)})")
    copy = os.path.join(a.tmp or os.path.dirname(src), ".mmap-states-copy.gguf")
    moved = copy + ".moved"
    rows = []
    holder = None
    try:
        for st in states:
            res = {}
            for mode in modes:
                path = src
                if st == "cold":
                    drop(src)
                elif st in ("written", "moved"):
                    for p in (copy, moved):
                        if os.path.exists(p):
                            os.remove(p)
                    shutil.copyfile(src, copy)  # write(): dirty, small folios
                    path = copy
                    if st == "moved":
                        bench(copy, a, "mmap")  # one mapped run on it, then the rename
                        os.rename(copy, moved)
                        path = moved
                elif st == "small":
                    drop(src)
                    read_small_random(src)
                elif st == "evicted":
                    read_sequential(src)
                    evict_half(src)
                elif st == "shared":
                    holder = subprocess.Popen([sys.executable, "-c", _HOLDER, src], stdin=subprocess.PIPE,
                                              stdout=subprocess.PIPE, text=True)
                    holder.stdout.readline()
                elif st == "warm":
                    bench(src, a, "mmap")
                t0 = time.perf_counter()
                res[mode] = bench(path, a, mode) + (time.perf_counter() - t0,)
                if holder is not None:
                    holder.stdin.close()
                    holder.wait()
                    holder = None
                for p in (copy, moved):
                    if os.path.exists(p):
                        os.remove(p)
                print(f"{st} {mode}: {res[mode][0]} t/s, {res[mode][2]:.0f} s, {res[mode][1]}", file=sys.stderr,
                      flush=True)
            rows.append((st, res))
    finally:
        if holder is not None:
            holder.kill()
        for p in (copy, moved):
            if os.path.exists(p):
                os.remove(p)
    cpu = ""
    try:
        with open("/proc/cpuinfo") as fh:
            cpu = next((ln.split(":", 1)[1].strip() for ln in fh if ln.startswith("model name")), "")
    except OSError:
        pass
    print(f"model {src}, {cpu}, {a.threads} threads, tg{a.n} x {a.r}\n")
    f = lambda v, d=2: "-" if v is None else f"{v:.{d}f}"  # noqa: E731
    base = "no-mmap" if "no-mmap" in modes else None
    others = [m for m in modes if m != base] if base else []
    head = [f"{m} t/s" for m in modes] + [f"{m} / no-mmap" for m in others] + ["default run's weights"] \
        + [f"s {m}" for m in modes]
    print("| state | " + " | ".join(head) + " |")
    print("|---" * (len(head) + 1) + "|")
    for st, res in rows:
        tg = {m: res[m][0] for m in modes}
        cells = [f(tg[m]) for m in modes]
        cells += [f(tg[m] / tg[base] if tg[m] and tg[base] else None, 3) for m in others]
        cells += [res[modes[0]][1] if "default" not in modes else res["default"][1]]
        cells += [f"{res[m][2]:.0f}" for m in modes]
        print(f"| {st} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
