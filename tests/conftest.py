"""Shared pytest fixtures: tools/ on sys.path, the synthetic GGUF models and their llama.cpp goldens.

The models are written once per session into a temp dir by tools/synthetic.py; the goldens
are read from tests/data/goldens (made by tools/make_goldens.py). Imports pyrt only to find the default model.
"""

from __future__ import annotations

import json
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOLS = os.path.join(ROOT, "tools")
GOLDENS = os.path.join(ROOT, "tests", "data", "goldens")
if TOOLS not in sys.path:
    sys.path.insert(0, TOOLS)

# Rows appended by tests/test_parity.py and printed at the end of the run.
_PARITY_ROWS: list[str] = []


@pytest.fixture(scope="session")
def synthetic_models(tmp_path_factory) -> dict:
    """{variant name: (path, hparams)} for every model in synthetic.VARIANTS, written once."""
    import synthetic
    return synthetic.write_all(tmp_path_factory.mktemp("synthetic_models"))


def gemma_model_path() -> str | None:
    """Gemma 3 270M: models/ in the checkout, else the default model of the [model] extra (assembled once)."""
    local = os.path.join(ROOT, "models", "gemma-3-270m-q4_k_m.gguf")
    if os.path.exists(local):
        return local
    import importlib.util

    from pyrt.default_model import PACKAGE, default_model_path
    if importlib.util.find_spec(PACKAGE) is None:
        return None  # the [model] extra is not installed: the tests that need it skip
    return default_model_path(quiet=True)  # installed: a failure to assemble it is a failure


@pytest.fixture(scope="session")
def gemma_path() -> str:
    path = gemma_model_path()
    if path is None:
        pytest.skip("Gemma 3 270M not found (models/gemma-3-270m-q4_k_m.gguf or the [model] extra)")
    return path


@pytest.fixture(scope="session")
def goldens_dir() -> str:
    return GOLDENS


@pytest.fixture(scope="session")
def goldens_manifest() -> dict:
    with open(os.path.join(GOLDENS, "manifest.json")) as f:
        return json.load(f)


@pytest.fixture(scope="session")
def parity_report() -> list:
    return _PARITY_ROWS


def pytest_terminal_summary(terminalreporter):
    if _PARITY_ROWS:
        terminalreporter.section("pyrt vs llama.cpp parity (synthetic models)")
        for row in _PARITY_ROWS:
            terminalreporter.write_line(row)


def pytest_collection_modifyitems(items):
    """Tests marked `last` run after all the others, so that the CUDA simulator children load the CPU kernels the
    rest of the run compiled from its Numba cache rather than each compiling its own copy."""
    items.sort(key=lambda item: item.get_closest_marker("last") is not None)
