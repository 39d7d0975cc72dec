"""bench/vs_ik_ratio.py: the ratio tables of bench/vs_ik.sh from pyrt's and ik_llama.cpp's markdown tables, for one
round and for several (each round's t/s and the median ratio)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

SCRIPT = os.path.join(os.path.dirname(__file__), "..", "bench", "vs_ik_ratio.py")

# the tables as the engines print them: pyrt bench sweep / llama-sweep-bench, pyrt bench run / llama-bench
SWEEP = """main: n_kv_max = 1024, n_batch = 512

|    PP |     TG |   N_KV |   T_PP s | S_PP t/s |   T_TG s | S_TG t/s |
|-------|--------|--------|----------|----------|----------|----------|
|   512 |     16 |      0 |    6.299 |    {p0} |    0.873 |    {t0} |
|   512 |     16 |    512 |    6.681 |    {p1} |    0.897 |    {t1} |
"""
RUN_PYRT = """membw_gbps: 36.53

| engine    | model                |       size |    params | threads |   test |                  t/s |         roofline |
|-----------|----------------------|------------|-----------|---------|--------|----------------------|------------------|
| pyrt      | gemma3 Q4_K_M        | 241.39 MiB |  268.10 M |       2 |  pp512 |    {pp} ±   63.02 |   278.08 GFLOP/s |
| pyrt      | gemma3 Q4_K_M        | 241.39 MiB |  268.10 M |       2 |  tg128 |      {tg} ±    8.59 |       24.63 GB/s |
pyrt tg128: 24.63 GB/s = 67.4% of membw
"""
RUN_IK = """| model                          |       size | threads | rtr |          test |              t/s |
| ------------------------------ | ---------: | ------: | --: | ------------: | ---------------: |
| gemma3 ?B Q4_K - Medium        | 405.16 MiB |       2 |   1 |         pp512 |  {pp} ± 91.71 |
| gemma3 ?B Q4_K - Medium        | 405.16 MiB |       2 |   1 |         tg128 |    {tg} ± 8.47 |

build: unknown (0)
"""


def _ratio(*args):
    return subprocess.run([sys.executable, SCRIPT, *args], capture_output=True, text=True)


def _round(d, mode, pyrt, ik):
    d.mkdir()
    if mode == "sweep":
        (d / "pyrt.md").write_text(SWEEP.format(**pyrt))
        (d / "ik.md").write_text(SWEEP.format(**ik))
    else:
        (d / "pyrt.md").write_text(RUN_PYRT.format(**pyrt))
        (d / "ik.md").write_text(RUN_IK.format(**ik))
    return str(d)


def test_one_round_sweep(tmp_path):
    d = _round(tmp_path / "r", "sweep", dict(p0="80.00", t0="18.00", p1="70.00", t1="16.00"),
               dict(p0="40.00", t0="24.00", p1="70.00", t1="20.00"))
    r = _ratio("sweep", d)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[2] == "| 0 | 80.00 | 40.00 | 2.00 | 18.00 | 24.00 | 0.75 |"
    assert lines[3] == "| 512 | 70.00 | 70.00 | 1.00 | 16.00 | 20.00 | 0.80 |"


def test_one_round_run(tmp_path):
    d = _round(tmp_path / "r", "run", dict(pp="1263.40", tg="99.00"), dict(pp="1111.34", tg="110.00"))
    r = _ratio("run", d)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[2:] == ["| pp512 | 1263.40 | 1111.34 | 1.14 |", "| tg128 | 99.00 | 110.00 | 0.90 |"]


def test_rounds_median(tmp_path):
    ik = dict(pp="100.00", tg="20.00")
    dirs = [_round(tmp_path / f"r{i}", "run", dict(pp=pp, tg=tg), ik)
            for i, (pp, tg) in enumerate([("110.00", "10.00"), ("90.00", "19.00"), ("100.00", "30.00")])]
    r = _ratio("run", *dirs)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].count("round") == 3
    assert lines[2] == ("| pp512 | 110.00 / 100.00 (1.10) | 90.00 / 100.00 (0.90) | 100.00 / 100.00 (1.00) | 1.00 |")
    assert lines[3].endswith("(1.50) | 0.95 |")


def test_rounds_sweep_rows_by_phase_then_depth(tmp_path):
    a = dict(p0="80.00", t0="18.00", p1="70.00", t1="16.00")
    dirs = [_round(tmp_path / f"r{i}", "sweep", a, a) for i in range(2)]
    r = _ratio("sweep", *dirs)
    assert r.returncode == 0, r.stderr
    assert [ln.split("|")[1].strip() for ln in r.stdout.splitlines()[2:]] == [
        "PP @ N_KV 0", "PP @ N_KV 512", "TG @ N_KV 0", "TG @ N_KV 512"]


@pytest.mark.parametrize("args", [[], ["tg", "x"], ["run"]])
def test_usage(args):
    r = _ratio(*args)
    assert r.returncode == 2 and "usage" in r.stderr


def test_missing_or_bad_table(tmp_path):
    r = _ratio("run", str(tmp_path / "none"))
    assert r.returncode == 1 and r.stderr.startswith("error:") and len(r.stderr.splitlines()) == 1
    d = tmp_path / "bad"
    d.mkdir()
    (d / "pyrt.md").write_text("| a | b |\n|---|---|\n| 1 | 2 |\n")
    (d / "ik.md").write_text("| a | b |\n|---|---|\n| 1 | 2 |\n")
    r = _ratio("sweep", str(d))
    assert r.returncode == 1 and r.stderr.startswith("error:")
