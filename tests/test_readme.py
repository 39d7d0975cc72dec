"""The README's library example runs as written on the default model (Gemma 3 270M base, no chat template
in its file: `llm.chat` uses the built-in gemma template)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.slow

README = Path(__file__).resolve().parents[1] / "README.md"


def _library_example() -> str:
    text = README.read_text(encoding="utf-8")
    section = text[text.index("## Library"):]
    m = re.search(r"```python\n(.*?)```", section, re.S)
    assert m, "the README's Library section has no python block"
    return m.group(1)


def test_readme_library_example_runs_on_the_default_model(gemma_path, capsys):
    code = _library_example()
    assert "pyrt.load(n_ctx" in code and "llm.chat(" in code  # the default model, chat included
    ns: dict = {}
    exec(compile(code, str(README), "exec"), ns)
    out = capsys.readouterr().out
    llm = ns["llm"]
    assert llm.file.path == Path(gemma_path) or str(llm.file.path) == gemma_path
    assert len(out) > 0
    assert ns["logits"].shape == (len(ns["ids"]), llm.n_vocab) and ns["text"] == "Hello world"
    assert ns["out"].shape == (1, llm.n_vocab) and np.isfinite(ns["out"]).all()
    from pyrt.runtime.chat import template_for
    assert template_for(llm).origin == "built-in gemma"  # what llm.chat used: the file has no template
