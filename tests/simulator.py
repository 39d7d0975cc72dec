"""The CUDA simulator runs of the test suite: child pytests with NUMBA_ENABLE_CUDASIM=1 (numba reads it when it
loads), started together so that they share the cores (the simulator runs each GPU thread as a Python thread,
one core per process). tests/test_cuda.py owns the runs; the files they run skip their simulator tests
outside them.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile

SIM = os.environ.get("NUMBA_ENABLE_CUDASIM") == "1"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

if SIM:
    sys.setswitchinterval(1e-5)  # the simulator's threads meet at barriers: switch between them quickly


def run_children(runs: list[tuple[str, str | None, bool]], timeout: float = 1200) -> None:
    """Runs each (test file relative to tests/, marker expression or None, skips allowed) in its own simulated
    child pytest, all at once; asserts that each passed (and, where skips are not allowed, skipped nothing)."""
    # one Numba thread each: the children share the cores, and idle pool threads spinning would slow the others
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1", NUMBA_NUM_THREADS="1",
               PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    procs = []
    try:
        for path, markers, skips in runs:
            out = tempfile.TemporaryFile("w+")
            cmd = [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider",
                   *(["-m", markers] if markers else []), os.path.join(ROOT, "tests", path)]
            procs.append((f"{path} -m '{markers}'", skips, out,
                          subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, text=True)))
        for name, skips, out, p in procs:
            rc = p.wait(timeout=timeout)
            out.seek(0)
            text = out.read()
            assert rc == 0, f"{name}:\n{text[-6000:]}"
            assert " passed" in text and " failed" not in text, f"{name}:\n{text[-3000:]}"
            assert skips or "skipped" not in text, f"{name}:\n{text[-3000:]}"
    finally:
        for _, _, out, p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
            out.close()
