"""CLI and library behaviour on good and bad input: one readable line, non-zero exit, no traceback."""

import os
import subprocess
import sys

import numpy as np
import pytest

import synthetic

import pyrt
from pyrt import cli
from pyrt.errors import ContextOverflowError, InvalidArgumentError, ModelFileError, UnsupportedError


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    p = tmp_path_factory.mktemp("cli") / "llama-q8_0.gguf"
    synthetic.write_model(p, "llama", "Q8_0")
    return str(p)


def _run(args, capsys):
    rc = cli.main(args)
    out, err = capsys.readouterr()
    return rc, out, err


def test_generate_greedy_streams_and_reports(model_path, capsys):
    rc, out, err = _run(["generate", "-m", model_path, "-p", "the world", "-n", "12", "--temp", "0",
                         "-c", "128", "-t", "1"], capsys)
    assert rc == 0
    assert out.startswith("the world")
    assert "prompt eval time" in err and "eval time" in err and "compile/warm-up" in err
    assert "KV self size" in err
    llm = pyrt.load(model_path, n_ctx=128, n_threads=1)
    text = "".join(llm.generate("the world", max_tokens=12, temperature=0.0))
    assert out.rstrip("\n") == "the world" + text  # CLI == library


@pytest.mark.parametrize("cmd", [["generate", "-p", "x"], ["serve"], ["perplexity"], ["bench", "run"],
                                 ["bench", "sweep"]])
def test_mmap_and_no_mmap_conflict(model_path, capsys, cmd):
    rc, out, err = _run(cmd + ["-m", model_path, "--mmap", "--no-mmap"], capsys)
    assert rc == 2
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and "--mmap" in lines[0] and "--no-mmap" in lines[0], err


@pytest.mark.parametrize("flag,kind,how", [([], "CPU", "auto: read"), (["--mmap"], "CPU_Mapped", "use_mmap=True"),
                                           (["--no-mmap"], "CPU", "use_mmap=False")])
def test_model_buffer_line(model_path, capsys, flag, kind, how):
    rc, out, err = _run(["generate", "-m", model_path, "-p", "the", "-n", "2", "--temp", "0", "-c", "64", "-t", "1"]
                        + flag, capsys)
    assert rc == 0
    line = next(ln for ln in err.splitlines() if "model buffer size" in ln)
    assert line.startswith(f"pyrt: {kind} model buffer size = ") and how in line, line


def test_info(model_path, capsys):
    rc, out, err = _run(["info", "-m", model_path, "-c", "256", "-ctk", "q8_0"], capsys)
    assert rc == 0
    assert "architecture:    llama" in out and "KV self size" in out and "Q8_0" in out
    assert "K (q8_0)" in out


@pytest.mark.parametrize("content,match", [
    (None, "no such file"),
    (b"not a gguf at all" * 4, "not a GGUF file"),
    (b"GGUF\x03\x00\x00\x00", "truncated"),
])
def test_bad_files_one_line(tmp_path, capsys, content, match):
    p = tmp_path / "bad.gguf"
    if content is not None:
        p.write_bytes(content)
    rc, out, err = _run(["generate", "-m", str(p), "-p", "x"], capsys)
    assert rc == 1
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and match in lines[0], err
    assert "Traceback" not in err


def test_truncated_model_library_and_cli(model_path, tmp_path, capsys):
    data = open(model_path, "rb").read()
    for frac in (0.1, 0.5, 0.9, 0.999):
        p = tmp_path / "cut.gguf"
        p.write_bytes(data[:int(len(data) * frac)])
        with pytest.raises(ModelFileError):
            pyrt.load(str(p))
        rc, _, err = _run(["generate", "-m", str(p), "-p", "x"], capsys)
        assert rc == 1 and err.startswith("error:")


def test_unknown_architecture_and_type(tmp_path):
    import gguf
    p = tmp_path / "arch.gguf"
    w = gguf.GGUFWriter(str(p), "mamba9")
    w.add_tensor("x", np.zeros((4, 32), dtype=np.float32))
    w.write_header_to_file(); w.write_kv_data_to_file(); w.write_tensors_to_file(); w.close()
    with pytest.raises(UnsupportedError, match="architecture 'mamba9' is not supported"):
        pyrt.load(str(p))


def test_prompt_longer_than_context(model_path, capsys):
    llm = pyrt.load(model_path, n_ctx=32, n_threads=1)
    long_ids = [1] + [100] * 40
    with pytest.raises(ContextOverflowError):
        list(llm.generate_ids(long_ids, max_tokens=4))
    assert llm.ctx.cells.used == 0  # nothing was written
    rc, out, err = _run(["generate", "-m", model_path, "-c", "32", "-p", "the " * 60, "-n", "4"], capsys)
    assert rc == 1 and "prompt is too long" in err and len(err.strip().splitlines()) == 1


def test_decode_validates_before_touching_cache(model_path):
    llm = pyrt.load(model_path, n_ctx=32, n_threads=1)
    ctx = llm.ctx
    ctx.decode(pyrt.Batch.from_tokens([1, 5, 6]))
    used = ctx.cells.used
    with pytest.raises(InvalidArgumentError):
        ctx.decode(pyrt.Batch.from_tokens([1, 10**6]))
    with pytest.raises(InvalidArgumentError):
        ctx.decode(pyrt.Batch.from_tokens([1, 2], seq_id=3))
    with pytest.raises(ContextOverflowError):
        ctx.decode(pyrt.Batch.from_tokens([7] * 30, pos0=3))
    assert ctx.cells.used == used


def test_console_script_error_exit(tmp_path):
    r = subprocess.run([sys.executable, "-m", "pyrt.cli", "generate", "-m", str(tmp_path / "none.gguf")],
                       capture_output=True, text=True)
    assert r.returncode == 1 and r.stderr.startswith("error:") and "Traceback" not in r.stderr


@pytest.mark.parametrize("flag,want", [([], True), (["--mmap"], True), (["--no-mmap"], False)])
def test_serve_ray_maps_by_default(model_path, capsys, monkeypatch, flag, want):
    """Ray replicas on one host share the page cache's copy: --ray maps unless --no-mmap."""
    import types
    seen = {}
    fake = types.ModuleType("pyrt.server.ray")
    fake.deployment = lambda model, **kw: seen.update(kw) or "app"
    fake.serve_forever = lambda app, host, port, **kw: 0
    monkeypatch.setitem(sys.modules, "pyrt.server.ray", fake)
    import pyrt.server
    monkeypatch.setattr(pyrt.server, "ray", fake, raising=False)
    rc, out, err = _run(["serve", "--ray", "-m", model_path] + flag, capsys)
    assert rc == 0, err
    assert seen["load_kw"]["use_mmap"] is want


@pytest.mark.parametrize("wrap", ["set_name", "plain"])
def test_interrupt_wrapped_by_python_is_an_interrupt(monkeypatch, capsys, wrap):
    """Ctrl-C raised inside a class's __set_name__ (an import creating a class) reaches main as a RuntimeError
    caused by the KeyboardInterrupt: the CLI reports the interrupt (exit 130), not an internal error; an
    exception without an interrupt in its chain stays an internal error."""
    class Hook:
        def __set_name__(self, owner, name):
            raise KeyboardInterrupt

    def run(argv, a_box):
        if wrap == "set_name":
            type("Made", (), {"h": Hook()})
        raise RuntimeError("boom") from ValueError("inner")

    monkeypatch.setattr(cli, "_run", run)
    rc, _, err = _run(["generate"], capsys)
    if wrap == "set_name":
        assert rc == 130 and "pyrt: interrupted (Ctrl-C)" in err and "error:" not in err
    else:
        assert rc == 1 and err.strip().splitlines() == ["error: internal error: RuntimeError: boom "
                                                        "(PYRT_DEBUG=1 shows the traceback)"]
