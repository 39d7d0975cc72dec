"""The kernel package's source stamp: an edit in one kernel file recompiles a cached kernel in another that
inlines it; unchanged files load from the disk cache. Runs a throwaway package that carries pyrt/_kernels'
own __init__.py and disk_cache.py, in subprocesses with their own NUMBA_CACHE_DIR."""

import os
import shutil
import subprocess
import sys
import textwrap

import pyrt._kernels as kernels

KERNELS = os.path.dirname(os.path.abspath(kernels.__file__))

RUN = textwrap.dedent("""
    from numba.core import event
    compiled = []

    class L(event.Listener):
        def on_start(self, ev):
            compiled.append(ev.data["dispatcher"].py_func.__name__)

        def on_end(self, ev):
            pass

    event.register("numba:compile", L())
    from kpkg.kern import kernel
    print(kernel(3), sorted(set(compiled)))
""")


def _package(tmp_path, helper_value):
    pkg = tmp_path / "kpkg"
    pkg.mkdir(exist_ok=True)
    for name in ("__init__.py", "config.py", "disk_cache.py"):
        shutil.copy(os.path.join(KERNELS, name), pkg / name)
    (pkg / "helper.py").write_text(textwrap.dedent(f"""
        from numba import njit

        @njit(cache=True)
        def helper(x):
            return x + {helper_value}
    """))
    (pkg / "kern.py").write_text(textwrap.dedent("""
        from numba import njit
        from .helper import helper

        @njit(cache=True)
        def kernel(x):
            return helper(x) * 10
    """))


def _run(tmp_path, **extra):
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path / "numba"), PYTHONPATH=str(tmp_path), **extra)
    if "PYRT_NO_SIMD" not in extra:
        env.pop("PYRT_NO_SIMD", None)
    r = subprocess.run([sys.executable, "-c", RUN], env=env, cwd=tmp_path, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


def test_helper_edit_recompiles_kernel_in_other_file(tmp_path):
    _package(tmp_path, 1)
    assert _run(tmp_path) == "40 ['helper', 'kernel']"
    assert _run(tmp_path) == "40 []"  # unchanged: both load from the disk cache
    _package(tmp_path, 2)  # only helper.py changes; kern.py's bytes and mtime stay as they were
    assert _run(tmp_path) == "50 ['helper', 'kernel']"
    assert _run(tmp_path) == "50 []"


def test_no_simd_keeps_its_own_cache(tmp_path):
    _package(tmp_path, 1)
    assert _run(tmp_path) == "40 ['helper', 'kernel']"
    assert _run(tmp_path, PYRT_NO_SIMD="1") == "40 ['helper', 'kernel']"  # code differs: not the default's cache
    assert _run(tmp_path, PYRT_NO_SIMD="1") == "40 []"
    assert _run(tmp_path) == "40 []"  # the default cache was left alone
    assert any(d == "no-simd" for _, dirs, _ in os.walk(tmp_path / "numba") for d in dirs)


def test_stamp_covers_every_kernel_file(tmp_path):
    from pyrt._kernels.disk_cache import package_stamp

    _package(tmp_path, 1)
    pkg = tmp_path / "kpkg"
    s1 = package_stamp(str(pkg))
    (pkg / "sub").mkdir()
    (pkg / "sub" / "x.py").write_text("A = 1\n")
    s2 = package_stamp(str(pkg))
    (pkg / "sub" / "x.py").write_text("A = 2\n")
    assert len({s1, s2, package_stamp(str(pkg))}) == 3
    assert kernels.SOURCE_STAMP == package_stamp(KERNELS)
