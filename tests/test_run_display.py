"""What a person sees on stderr: the compile notice (only when Numba compiles), the total time line whose
parts add up to the wall time, on a synthetic model."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
import time

import numba
import pytest

import synthetic

from pyrt.runtime.compile_notice import MESSAGE, CompileNotice

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    p = tmp_path_factory.mktemp("display") / "llama-q8_0.gguf"
    synthetic.write_model(p, "llama", "Q8_0")
    return str(p)


def test_compile_notice_speaks_only_when_something_compiles():
    @numba.njit
    def add_one(x):
        return x + 1

    quiet = io.StringIO()
    with CompileNotice(2, stream=quiet) as n:
        n.step()
        n.step()
    assert quiet.getvalue() == "" and not n.cold and n.n_compiled == 0
    loud = io.StringIO()
    with CompileNotice(2, stream=loud) as n:
        n.step()
        assert add_one(1) == 2  # compiles now: the listener hears numba:compile
        n.step()
    lines = loud.getvalue().splitlines()
    assert lines[0] == "pyrt: " + MESSAGE and n.cold and n.n_compiled >= 1
    assert re.fullmatch(r"pyrt: compiled \d+ functions in \d+\.\d s", lines[-1]) and len(lines) == 2
    off = io.StringIO()
    with CompileNotice(1, stream=off, enabled=False) as n:
        assert numba.njit(lambda x: x * 2)(3) == 6
    assert off.getvalue() == "" and n.cold  # counted, not printed
    again = io.StringIO()
    with CompileNotice(1, stream=again):
        add_one(2)  # already compiled: nothing to say
    assert again.getvalue() == ""


def _generate(model_path, env_extra=None, *args):
    env = dict(os.environ, PYTHONPATH=ROOT, **(env_extra or {}))
    env.setdefault("NUMBA_NUM_THREADS", "2")
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "pyrt.cli", "generate", "-m", model_path, "-p", "the world", "-n", "8",
                        "--temp", "0", "-c", "128", "-t", "1", *args], capture_output=True, text=True, timeout=900,
                       env=env, cwd=ROOT)
    return r, time.perf_counter() - t0


def test_total_time_adds_up_to_the_wall_time(model_path):
    r, wall = _generate(model_path)
    assert r.returncode == 0, r.stderr
    m = re.search(r"total time = +([\d.]+) ms \(load ([\d.]+) \+ compile/warm-up ([\d.]+) \+ prompt ([\d.]+) "
                  r"\+ eval ([\d.]+) \+ other ([\d.]+)\)", r.stderr)
    assert m, r.stderr
    total, *parts = (float(x) for x in m.groups())
    assert abs(sum(parts) - total) < 0.05
    for name, part in zip(("load time", "compile/warm-up", "prompt eval time", "eval time"), parts):
        assert re.search(rf"{re.escape(name)} = +{part:.2f} ms", r.stderr), name  # the same numbers as above
    # the interpreter's start-up is the only part of the process not counted
    assert wall * 1000 - 3000 < total <= wall * 1000


@pytest.mark.slow
@pytest.mark.own_cache
def test_cold_numba_cache_says_it_is_compiling(model_path, tmp_path):
    cache = {"NUMBA_CACHE_DIR": str(tmp_path / "numba")}
    r, _ = _generate(model_path, cache)
    assert r.returncode == 0, r.stderr
    assert ("pyrt: " + MESSAGE) in r.stderr and re.search(r"pyrt: compiled \d+ functions in", r.stderr)
    r2, _ = _generate(model_path, cache)
    assert r2.returncode == 0 and MESSAGE not in r2.stderr and r2.stdout == r.stdout
