"""Plot sweep tables (the seeds' markdown format) from several files or engines into one PNG.

For sweeps run in separate processes (e.g. `bench/bench_mla.py sweep` for pyrt and for llama.cpp on a file
too large for both engines in one process):

    python bench/plot_sweeps.py bench/results/sweep-dsv2lite-q4_0-CPU.png pyrt=A.md llama.cpp=B.md --title "..."
"""

from __future__ import annotations

import argparse
import re

from pyrt.bench.plot import plot_sweep
from pyrt.bench.sweep import SweepRow

ROW = re.compile(r"^\|\s*(\d+) \|\s*(\d+) \|\s*(\d+) \|\s*([\d.]+) \|\s*([\d.]+) \|\s*([\d.]+) \|\s*([\d.]+) \|")


def read_rows(path: str, engine: str) -> list[SweepRow]:
    rows = []
    with open(path) as f:
        for line in f:
            m = ROW.match(line)
            if m:
                pp, tg, n_kv = (int(m.group(i)) for i in (1, 2, 3))
                t_pp, s_pp, t_tg, s_tg = (float(m.group(i)) for i in (4, 5, 6, 7))
                rows.append(SweepRow(engine, pp, tg, n_kv, t_pp, s_pp, t_tg, s_tg))
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out")
    ap.add_argument("tables", nargs="+", help="ENGINE=FILE.md")
    ap.add_argument("--title", default="")
    a = ap.parse_args(argv)
    results = {}
    for spec in a.tables:
        name, path = spec.split("=", 1)
        results[name] = read_rows(path, name)
    plot_sweep(results, a.out, a.title)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
