"""The ratio tables of bench/vs_ik.sh: pyrt's and ik_llama.cpp's markdown tables side by side, one round or several.

    python bench/vs_ik_ratio.py sweep|run DIR            # DIR/pyrt.md and DIR/ik.md -> the ratio table
    python bench/vs_ik_ratio.py sweep|run DIR1 DIR2 ...  # one round per DIR -> each row's t/s per round and the
                                                          # median ratio

On a machine whose speed moves between runs (a shared VM), one pair of runs can put either engine in a fast
spell: rounds taken in alternating order, summarised by the median of the per-round ratios, compare the engines
under the same conditions. Standard library only.
"""

from __future__ import annotations

import re
import statistics
import sys


def rows(path: str) -> list[list[str]]:
    """The first markdown table of a file as lists of cells (header included), separator lines dropped."""
    res: list[list[str]] = []
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            if not line.startswith("|"):
                if res:
                    break
                continue
            if not re.match(r"^\|[-:| ]+\|\s*$", line):
                res.append([c.strip() for c in line.strip().strip("|").split("|")])
    return res


def num(s: str) -> float:
    """The mean of a "12.34 ± 0.56" cell (or a plain number)."""
    return float(s.split("±")[0])


def speeds(path: str, mode: str) -> dict:
    """{row key: t/s} of one engine's table. sweep: {(N_KV, "PP"|"TG"): S_PP/S_TG t/s}; run: {test: t/s}."""
    t = rows(path)
    if mode == "sweep":
        h = t[0]
        out = {}
        for r in t[1:]:
            n = int(r[h.index("N_KV")])
            out[(n, "PP")] = num(r[h.index("S_PP t/s")])
            out[(n, "TG")] = num(r[h.index("S_TG t/s")])
        return out
    t = [r for r in t if len(r) > 2]
    h = t[0]
    return {r[h.index("test")]: num(r[h.index("t/s")]) for r in t[1:]}


def ratio_table(d: str, mode: str) -> str:
    """One round's table: each row's pyrt and ik t/s and their ratio."""
    p, k = speeds(f"{d}/pyrt.md", mode), speeds(f"{d}/ik.md", mode)
    if mode == "sweep":
        lines = ["| N_KV | pyrt S_PP | ik S_PP | PP ratio | pyrt S_TG | ik S_TG | TG ratio |",
                 "|---:|---:|---:|---:|---:|---:|---:|"]
        for n in sorted({n for n, _ in p} & {n for n, _ in k}):
            pp, kp, pt, kt = p[(n, "PP")], k[(n, "PP")], p[(n, "TG")], k[(n, "TG")]
            lines.append(f"| {n} | {pp:.2f} | {kp:.2f} | {pp / kp:.2f} | {pt:.2f} | {kt:.2f} | {pt / kt:.2f} |")
    else:
        lines = ["| test | pyrt t/s | ik t/s | ratio |", "|---|---:|---:|---:|"]
        for test in p:
            if test in k:
                lines.append(f"| {test} | {p[test]:.2f} | {k[test]:.2f} | {p[test] / k[test]:.2f} |")
    return "\n".join(lines)


def rounds_table(dirs: list[str], mode: str) -> str:
    """Several rounds: per row, each round's "pyrt / ik (ratio)" and the median of the rounds' ratios."""
    per = [(speeds(f"{d}/pyrt.md", mode), speeds(f"{d}/ik.md", mode)) for d in dirs]
    keys = [key for key in per[0][0] if all(key in p and key in k for p, k in per)]
    if mode == "sweep":
        keys.sort(key=lambda key: (key[1], key[0]))
    name = (lambda key: f"{key[1]} @ N_KV {key[0]}") if mode == "sweep" else str
    head = "| row | " + " | ".join(f"round {i + 1}: pyrt / ik (ratio)" for i in range(len(dirs))) + " | median ratio |"
    lines = [head, "|---|" + "---:|" * (len(dirs) + 1)]
    for key in keys:
        ratios = [p[key] / k[key] for p, k in per]
        cells = [f"{p[key]:.2f} / {k[key]:.2f} ({r:.2f})" for (p, k), r in zip(per, ratios)]
        lines.append(f"| {name(key)} | " + " | ".join(cells) + f" | {statistics.median(ratios):.2f} |")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    if len(argv) < 2 or argv[0] not in ("sweep", "run"):
        print("usage: python bench/vs_ik_ratio.py sweep|run DIR [DIR ...]", file=sys.stderr)
        return 2
    mode, dirs = argv[0], argv[1:]
    try:
        print(ratio_table(dirs[0], mode) if len(dirs) == 1 else rounds_table(dirs, mode))
    except (OSError, ValueError, IndexError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
