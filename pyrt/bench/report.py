"""Text output of the benchmarks: sweep tables in sweep-bench's exact markdown format (and jsonl, csv),
the engine-vs-engine ratio and roofline tables, and llama-bench-style run tables.

Pure formatting over SweepRow/RunResult lists and fact dicts; no engine or kernel imports.
"""

from __future__ import annotations

import csv
import io
import json

SWEEP_HEADER = "|    PP |     TG |   N_KV |   T_PP s | S_PP t/s |   T_TG s | S_TG t/s |"
SWEEP_SEP = "|-------|--------|--------|----------|----------|----------|----------|"
CSV_FIELDS = ["engine", "pp", "tg", "n_kv", "t_pp", "speed_pp", "t_tg", "speed_tg", "rss_hwm_mib", "tg_gbps",
              "tg_bw_frac", "pp_gflops"]


def _num(v, fmt: str, width: int) -> str:
    return format(v, fmt) if v is not None else "n/a".rjust(width)


def facts_lines(facts: dict) -> list[str]:
    """key: value lines (machine, versions, model, settings) in a stable order."""
    return [f"{k}: {v}" for k, v in facts.items() if v is not None]


def main_line(p: dict) -> str:
    """sweep-bench's first line."""
    return (f"main: n_kv_max = {p['n_kv_max']}, n_batch = {p['n_batch']}, n_ubatch = {p['n_ubatch']}, "
            f"flash_attn = {p['flash_attn']}, n_gpu_layers = 0, n_threads = {p['n_threads']}, "
            f"n_threads_batch = {p['n_threads']}")


def sweep_table_md(rows, memory: bool = False) -> str:
    """One engine's rows as sweep-bench prints them (with --sweep-memory: an RSS HWM column, MiB)."""
    head, sep = SWEEP_HEADER, SWEEP_SEP
    if memory:
        head += f"{'RSS HWM':>10} |"
        sep += "-" * 11 + "|"
    lines = [head, sep]
    for r in rows:
        s = f"|{r.pp:6d} | {r.tg:6d} | {r.n_kv:6d} | {r.t_pp:8.3f} | {r.speed_pp:8.2f} | {r.t_tg:8.3f} | {r.speed_tg:8.2f} |"
        if memory:
            s += f"{_num(r.rss_hwm_mib, '10.1f', 10)} |"
        lines.append(s)
    return "\n".join(lines)


def compare_table_md(results: dict, base: str = "pyrt", other: str = "llama.cpp") -> str:
    """Per N_KV: S_PP and S_TG of both engines and base/other ratios (> 1: base is faster)."""
    a, b = results[base], results[other]
    lines = [f"|   N_KV | S_PP {base:>9} | S_PP {other:>9} | PP ratio | S_TG {base:>9} | S_TG {other:>9} | TG ratio |",
             "|--------|----------------|----------------|----------|----------------|----------------|----------|"]
    for x, y in zip(a, b):
        lines.append(f"| {x.n_kv:6d} | {x.speed_pp:14.2f} | {y.speed_pp:14.2f} | {x.speed_pp / y.speed_pp:8.3f} | "
                     f"{x.speed_tg:14.2f} | {y.speed_tg:14.2f} | {x.speed_tg / y.speed_tg:8.3f} |")
    return "\n".join(lines)


def roofline_table_md(results: dict) -> str:
    """Per N_KV and engine: TG GB/s read and its share of the measured bandwidth, PP GFLOP/s."""
    names = list(results)
    head = "|   N_KV |" + "".join(f" {n + ' TG GB/s':>18} | {'% membw':>7} | {n + ' PP GFLOP/s':>21} |" for n in names)
    sep = "|--------|" + "".join(f"{'-' * 20}|{'-' * 9}|{'-' * 23}|" for _ in names)
    lines = [head, sep]
    for i, r0 in enumerate(results[names[0]]):
        s = f"| {r0.n_kv:6d} |"
        for n in names:
            r = results[n][i]
            frac = f"{100 * r.tg_bw_frac:6.1f}%" if r.tg_bw_frac is not None else "    n/a"
            s += f" {_num(r.tg_gbps, '18.2f', 18)} | {frac} | {_num(r.pp_gflops, '21.2f', 21)} |"
        lines.append(s)
    return "\n".join(lines)


def sweep_md(results: dict, params: dict, facts: dict, memory: bool = False, times: dict | None = None) -> str:
    out = facts_lines(facts)
    for name, (t_load, t_compile) in (times or {}).items():
        out.append(f"{name}: load {t_load * 1000:.0f} ms, compile/warm-up {t_compile * 1000:.0f} ms (not timed)")
    out += ["", main_line(params), ""]
    for name, rows in results.items():
        out += [f"{name}:", "", sweep_table_md(rows, memory), ""]
    if "pyrt" in results and "llama.cpp" in results:
        out += ["pyrt / llama.cpp (ratio > 1: pyrt faster):", "", compare_table_md(results), ""]
    if any(r.tg_gbps is not None for rows in results.values() for r in rows):
        bw = facts.get("membw_gbps")
        out += [f"roofline (TG: weights + visible KV bytes per token; membw {bw} GB/s):" if bw else
                "roofline (TG: weights + visible KV bytes per token):", "", roofline_table_md(results), ""]
    return "\n".join(out).rstrip() + "\n"


def sweep_jsonl(results: dict, params: dict, facts: dict) -> str:
    """A meta record (facts), then one record per row with sweep-bench's keys plus engine and roofline."""
    lines = [json.dumps({"record": "meta", **facts, **params})]
    for rows in results.values():
        for r in rows:
            d = {"record": "sweep", "engine": r.engine, "n_kv_max": params["n_kv_max"],
                 "n_batch": params["n_batch"], "n_ubatch": params["n_ubatch"], "flash_attn": params["flash_attn"],
                 "n_gpu_layers": 0, "n_threads": params["n_threads"], "n_threads_batch": params["n_threads"],
                 "pp": r.pp, "tg": r.tg, "n_kv": r.n_kv, "t_pp": r.t_pp, "speed_pp": r.speed_pp,
                 "t_tg": r.t_tg, "speed_tg": r.speed_tg}
            for k in ("rss_hwm_mib", "tg_gbps", "tg_bw_frac", "pp_gflops"):
                if getattr(r, k) is not None:
                    d[k] = getattr(r, k)
            lines.append(json.dumps(d))
    return "\n".join(lines) + "\n"


def sweep_csv(results: dict, params: dict, facts: dict) -> str:
    """'# key: value' comment lines (facts), then a header and one line per row (empty = not measured)."""
    buf = io.StringIO()
    for line in facts_lines({**facts, **params}):
        buf.write(f"# {line}\n")
    w = csv.DictWriter(buf, fieldnames=CSV_FIELDS, lineterminator="\n")
    w.writeheader()
    for rows in results.values():
        for r in rows:
            d = r.to_dict()
            w.writerow({k: ("" if d[k] is None else d[k]) for k in CSV_FIELDS})
    return buf.getvalue()


def run_md(results, facts: dict, model: dict, n_threads: int, times: dict | None = None) -> str:
    """llama-bench's table (t/s as mean ± std), with an engine column, ratios and roofline columns."""
    out = facts_lines(facts)
    for name, (t_load, t_compile) in (times or {}).items():
        out.append(f"{name}: load {t_load * 1000:.0f} ms, compile/warm-up {t_compile * 1000:.0f} ms (not timed)")
    size = f"{model['size_mib'] / 1024:.2f} GiB" if model["size_mib"] >= 1024 else f"{model['size_mib']:.2f} MiB"
    params = f"{model['n_params'] / 1e9:.2f} B" if model["n_params"] >= 1e9 else f"{model['n_params'] / 1e6:.2f} M"
    mdl = f"{model['arch']} {model['file_type']}"
    tw = max([6] + [len(r.test) for r in results])
    out += ["", f"| {'engine':<9} | {'model':<20} | {'size':>10} | {'params':>9} | threads | {'test':>{tw}} | "
                f"{'t/s':>20} | {'roofline':>16} |",
            "|-----------|----------------------|------------|-----------|---------|-" + "-" * tw + "-|"
            "----------------------|------------------|"]
    for r in results:
        roof = f"{r.gbps:.2f} GB/s" if r.gbps is not None else (f"{r.gflops:.2f} GFLOP/s" if r.gflops is not None
                                                                else "")
        out.append(f"| {r.engine:<9} | {mdl:<20} | {size:>10} | {params:>9} | {n_threads:7d} | {r.test:>{tw}} | "
                   f"{r.avg_ts:10.2f} ± {r.stddev_ts:7.2f} | {roof:>16} |")
    by = {}
    for r in results:
        by.setdefault(r.test, {})[r.engine] = r
    ratios = [(t, d["pyrt"].avg_ts / d["llama.cpp"].avg_ts) for t, d in by.items() if {"pyrt", "llama.cpp"} <= set(d)]
    if ratios:
        out += ["", "pyrt / llama.cpp: " + ", ".join(f"{t} {x:.3f}" for t, x in ratios)]
    return "\n".join(out) + "\n"


def run_jsonl(results, facts: dict) -> str:
    lines = [json.dumps({"record": "meta", **facts})]
    lines += [json.dumps({"record": "run", **r.to_dict()}) for r in results]
    return "\n".join(lines) + "\n"


def run_csv(results, facts: dict) -> str:
    buf = io.StringIO()
    for line in facts_lines(facts):
        buf.write(f"# {line}\n")
    fields = ["engine", "test", "n_prompt", "n_gen", "avg_ts", "stddev_ts", "gbps", "gflops"]
    w = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    w.writeheader()
    for r in results:
        d = r.to_dict()
        w.writerow({k: ("" if d[k] is None else d[k]) for k in fields})
    return buf.getvalue()
