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

Before each timed run it waits (up to --max-wait s) until other processes use at most --quiet cores, and
it reports the cores other processes used during each run (the `other cores` columns: /proc/stat busy time
less this run's): on a shared 2-core machine a run beside another job is not comparable.
Writes nothing but the copy in --tmp (default: next to FILE), which it removes. Linux only.
"""

from __future__ import annotations

import argparse
import mmap
import os
import random
import re
import resource
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


def _busy_s(user_only: bool = False) -> float:
    """CPU seconds the whole machine has spent busy (all cores, /proc/stat); user_only: in user space."""
    with open("/proc/stat") as fh:
        v = [int(x) for x in fh.readline().split()[1:]]
    busy = v[0] + v[1] if user_only else sum(v) - v[3] - v[4]  # user + nice; or all but idle and iowait
    return busy / os.sysconf("SC_CLK_TCK")


def _children_s() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def wait_quiet(max_other: float, max_wait: float) -> float:
    """Waits (up to max_wait s) until other processes use at most max_other cores over 10 s; returns the wait.
    User time only: the writeback of the `written` state's copy is the state itself, not another job."""
    t0 = time.perf_counter()
    while True:
        b0, w0 = _busy_s(True), time.perf_counter()
        time.sleep(10)
        other = (_busy_s(True) - b0) / (time.perf_counter() - w0)
        if other <= max_other or time.perf_counter() - t0 > max_wait:
            return time.perf_counter() - t0


def bench(path: str, args, mode: str) -> tuple[float | None, str, float]:
    """(tg t/s, the weights line, CPU cores other processes used on average during the run)."""
    b0, c0, w0 = _busy_s(), _children_s(), time.perf_counter()
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
    other = max(0.0, (_busy_s() - b0) - (_children_s() - c0)) / (time.perf_counter() - w0)
    return tg, pages, other


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-m", "--model", required=True)
    ap.add_argument("-t", "--threads", type=int, default=2)
    ap.add_argument("-n", type=int, default=32)
    ap.add_argument("-r", type=int, default=3)
    ap.add_argument("--states", default=",".join(STATES))
    ap.add_argument("--quiet", type=float, default=0.3,
                    help="before each timed run, wait until other processes use at most this many cores (default 0.3)")
    ap.add_argument("--max-wait", type=float, default=600, help="seconds to wait for that at most (default 600)")
    ap.add_argument("--retries", type=int, default=2,
                    help="runs again (the state produced again) when other processes used more than --quiet cores "
                         "during it, up to this many times (default 2)")
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

    def produce(st, mode):
        nonlocal holder
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
        return path

    try:
        for st in states:
            res = {}
            for mode in modes:
                path = produce(st, mode)
                for attempt in range(a.retries + 1):
                    if attempt:  # the last run shared the machine: produce the state again and rerun
                        print(f"{st} {mode}: other processes used {res[mode][2]:.2f} cores, again", file=sys.stderr,
                              flush=True)
                        for p in (copy, moved):
                            if os.path.exists(p):
                                os.remove(p)
                        path = produce(st, mode)
                    waited = wait_quiet(a.quiet, a.max_wait)
                    t0 = time.perf_counter()
                    res[mode] = bench(path, a, mode) + (time.perf_counter() - t0, waited)
                    if holder is not None:
                        holder.stdin.close()
                        holder.wait()
                        holder = None
                    if res[mode][2] <= a.quiet:
                        break
                for p in (copy, moved):
                    if os.path.exists(p):
                        os.remove(p)
                print(f"{st} {mode}: {res[mode][0]} t/s, {res[mode][3]:.0f} s, other processes "
                      f"{res[mode][2]:.2f} cores (waited {res[mode][4]:.0f} s), {res[mode][1]}", file=sys.stderr,
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
        + [f"s {m}" for m in modes] + [f"other cores {m}" for m in modes]
    print("| state | " + " | ".join(head) + " |")
    print("|---" * (len(head) + 1) + "|")
    for st, res in rows:
        tg = {m: res[m][0] for m in modes}
        cells = [f(tg[m]) for m in modes]
        cells += [f(tg[m] / tg[base] if tg[m] and tg[base] else None, 3) for m in others]
        cells += [res[modes[0]][1] if "default" not in modes else res["default"][1]]
        cells += [f"{res[m][3]:.0f}" for m in modes] + [f"{res[m][2]:.2f}" for m in modes]
        print(f"| {st} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
