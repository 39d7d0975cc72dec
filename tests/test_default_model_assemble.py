"""Assembling the default model from its package's chunk files: the bytes, the SHA-256 check and the
progress on stderr, with a stand-in package (no real model needed)."""

from __future__ import annotations

import hashlib
import sys
import types

import pytest

from pyrt import default_model
from pyrt.errors import PyrtError


def _fake_package(tmp_path, parts, sha=None):
    paths = []
    for i, data in enumerate(parts):
        p = tmp_path / f"chunk{i}"
        p.write_bytes(data)
        paths.append(p)
    pkg = types.ModuleType(default_model.PACKAGE)
    pkg.chunk_paths = lambda: list(paths)
    pkg.verify_chunks = lambda: None
    pkg.EXPECTED_SHA256 = sha or hashlib.sha256(b"".join(parts)).hexdigest()
    pkg.assemble = lambda *a, **k: pytest.fail("pyrt assembles the chunks itself")
    return pkg


def test_assemble_writes_the_chunks_and_shows_progress(tmp_path, monkeypatch, capfd):
    parts = [bytes(range(256)) * 40000, b"GGUF" * 1000, b"tail"]
    monkeypatch.setitem(sys.modules, default_model.PACKAGE, _fake_package(tmp_path, parts))
    monkeypatch.setenv("PYRT_CACHE", str(tmp_path / "cache"))
    path = default_model.default_model_path()
    assert open(path, "rb").read() == b"".join(parts)
    err = capfd.readouterr().err
    assert "assembling the default model" in err and "pyrt: assembling" in err  # the line and the bar
    assert not list((tmp_path / "cache").glob("*.part"))
    # assembled once: the next call only returns the path
    assert default_model.default_model_path() == path and capfd.readouterr().err == ""


def test_assemble_rejects_a_wrong_checksum(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, default_model.PACKAGE, _fake_package(tmp_path, [b"abc"], sha="0" * 64))
    monkeypatch.setenv("PYRT_CACHE", str(tmp_path / "cache"))
    with pytest.raises(PyrtError, match="SHA-256"):
        default_model.default_model_path(quiet=True)
    assert not list((tmp_path / "cache").iterdir())  # neither the model nor a partial file
