"""The kernel package's source stamp: an edit in one kernel file recompiles a cached kernel in another that
inlines it; unchanged files load from the disk cache. Runs a throwaway package that carries pyrt/_kernels'
own __init__.py and disk_cache.py, in subprocesses with their own NUMBA_CACHE_DIR."""

import os
import shutil
import subprocess
import sys
import textwrap

import pytest

import pyrt._kernels as kernels

pytestmark = pytest.mark.own_cache

KERNELS = os.path.dirname(os.path.abspath(kernels.__file__))

# a script preamble that records the names of the functions Numba compiles in `compiled`
LISTEN = textwrap.dedent("""
    from numba.core import event
    compiled = []

    class L(event.Listener):
        def on_start(self, ev):
            compiled.append(ev.data["dispatcher"].py_func.__name__)

        def on_end(self, ev):
            pass

    event.register("numba:compile", L())
""")

RUN = LISTEN + textwrap.dedent("""
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


def test_uncachable_kernel_warns_and_runs(tmp_path):
    """A kernel Numba cannot cache (it reads a dynamic global: the threading layer's thread count) gets Numba's
    warning and runs; the package's cache locator answers what the warning asks of it."""
    _package(tmp_path, 1)
    (tmp_path / "kpkg" / "dyn.py").write_text(textwrap.dedent("""
        from numba import get_num_threads, njit

        @njit(cache=True)
        def dyn(x):
            return x + get_num_threads() * 0
    """))
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path / "numba"), PYTHONPATH=str(tmp_path))
    r = subprocess.run([sys.executable, "-c", "from kpkg.dyn import dyn; print(dyn(3))"], env=env, cwd=tmp_path,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "3"
    assert "Cannot cache" in r.stderr


def test_cached_inline_asm_callee_links_into_a_fresh_caller(tmp_path):
    """A kernel compiled in a process that loaded its inline-asm callee from the disk cache (no inline asm built
    in that process) is emitted with the callee's asm in it: the package readies LLVM's asm parser at import,
    else LLVM aborts the process (a DeepSeek decode compiling mla_decode for a new signature over the cached
    AMX FlashMLA items did)."""
    _package(tmp_path, 1)
    (tmp_path / "kpkg" / "asmhelper.py").write_text(textwrap.dedent("""
        from llvmlite import ir
        from numba import njit, types
        from numba.extending import intrinsic

        @intrinsic
        def asm_nop(typingctx, x):
            def codegen(context, builder, sig, args):
                fnty = ir.FunctionType(ir.VoidType(), [])
                builder.call(ir.InlineAsm(fnty, "nop", "~{memory}", side_effect=True), [])
                return args[0]
            return types.int64(types.int64), codegen

        @njit(cache=True)
        def helper(x):
            return asm_nop(x) + 1
    """))
    (tmp_path / "kpkg" / "asmkern.py").write_text(textwrap.dedent("""
        from numba import njit
        from .asmhelper import helper

        @njit(cache=True)
        def kernel(x):
            return helper(3) * 10 + x
    """))
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path / "numba"), PYTHONPATH=str(tmp_path))
    script = LISTEN + "from kpkg.asmkern import kernel\nprint(kernel({}), sorted(set(compiled)))"
    outs = []
    for arg in ("4", "4.5"):  # the second signature compiles kernel again, helper loads from the cache
        r = subprocess.run([sys.executable, "-c", script.format(arg)], env=env, cwd=tmp_path, capture_output=True,
                           text=True, timeout=300)
        assert r.returncode == 0, r.stderr
        outs.append(r.stdout.strip())
    assert outs == ["44 ['helper', 'kernel']", "44.5 ['kernel']"]


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


ATTN = LISTEN + textwrap.dedent("""
    import hashlib
    import numpy as np
    from pyrt.ops.attention import flash_attn_rows
    rng = np.random.default_rng(0)
    h = hashlib.sha256()
    for kind in ("f16", "f32"):
        for n_kv in (32, 33, 48, 65, 128):
            q = rng.standard_normal((1, 4, 256)).astype(np.float32)
            k, v = (rng.standard_normal((n_kv, 256)).astype(np.float16 if kind == "f16" else np.float32)
                    for _ in range(2))
            out = flash_attn_rows(q, k, kind, v, kind, np.arange(n_kv, dtype=np.int32), np.ones(n_kv, np.uint64),
                                  np.array([n_kv], np.int32), np.array([0], np.int32), 1 / 16, 1, 256)
            h.update(out.tobytes())
    print(h.hexdigest(), "flash_attn" in compiled)
""")


def test_cached_attention_computes_the_compiled_bits(tmp_path):
    """flash_attn (4 query heads over 1 KV head, head_dim 256, f16 and f32 cells) gives the same bytes when
    its kernels are compiled in the process (cold cache) and when they load from the disk cache (warm): a
    kernel calls the copies of its callees inside its own machine code, not a callee library that only the
    compiling process has loaded."""
    path = os.pathsep.join([os.path.dirname(os.path.dirname(KERNELS)), os.environ.get("PYTHONPATH", "")])
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path / "numba"), PYTHONPATH=path)
    outs = []
    for _ in range(2):
        r = subprocess.run([sys.executable, "-c", ATTN], env=env, cwd=tmp_path, capture_output=True, text=True,
                           timeout=300)
        assert r.returncode == 0, r.stderr
        outs.append(r.stdout.split())
    assert outs[0][1] == "True" and outs[1][1] == "False"  # cold compiled flash_attn, warm loaded it
    assert outs[0][0] == outs[1][0]
