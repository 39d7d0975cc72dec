"""pyrt.ops.paths: one frozen record of path choices, changed only for a scope or by PYRT_PATHS."""

import dataclasses
import os
import subprocess
import sys
import threading

import pytest

from pyrt.errors import InvalidArgumentError
from pyrt.ops import paths


def test_frozen_and_scoped():
    base = paths.current()
    with pytest.raises(dataclasses.FrozenInstanceError):
        base.fused_moe_decode = False
    seen = {}
    with paths.using(fused_moe_decode=False, swa_pad=1) as p:
        assert p is paths.current() and not p.fused_moe_decode and p.swa_pad == 1
        with paths.using(swa_pad=8):
            assert paths.current().swa_pad == 8 and not paths.current().fused_moe_decode
        assert paths.current().swa_pad == 1
        t = threading.Thread(target=lambda: seen.update(p=paths.current()))  # another thread keeps the defaults
        t.start()
        t.join()
    assert paths.current() == base and seen["p"] == base


@pytest.mark.parametrize("kw", [{"nope": 1}, {"swa_pad": 0}, {"fused_mla_block": 1}, {"moe_id_max_tokens": -1},
                                {"blas_tile_bytes": 2.5}])
def test_bad_changes_raise_and_change_nothing(kw):
    base = paths.current()
    with pytest.raises(InvalidArgumentError):
        with paths.using(**kw):
            pass
    assert paths.current() == base


def _child(env_value):
    code = "from pyrt.ops import paths; print(paths.current())"
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, "PYRT_PATHS": env_value})


def test_environment():
    r = _child("fused_moe_decode=off, mla_decompress_min_tokens=0x40")
    assert r.returncode == 0, r.stderr
    assert "fused_moe_decode=False" in r.stdout and "mla_decompress_min_tokens=64" in r.stdout
    for bad in ("fused_moe_decode=maybe", "swa_pad", "nope=1", "swa_pad=x"):
        r = _child(bad)
        assert r.returncode != 0 and "PYRT_PATHS" in r.stderr.splitlines()[-1], (bad, r.stderr)


def test_cli_reports_a_bad_setting_in_one_line(tmp_path):
    r = subprocess.run([sys.executable, "-m", "pyrt.cli", "info", str(tmp_path / "missing.gguf")], capture_output=True,
                       text=True, env={**os.environ, "PYRT_PATHS": "swa_pad=0"})
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("error:"), r.stderr
