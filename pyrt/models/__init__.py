"""Architectures: one file per family; `build_model` maps general.architecture to its class."""

from __future__ import annotations

import functools

from ..errors import UnsupportedError
from ..io.gguf_file import GGUFFile
from .base import Model


def _registry():
    from .deepseek2 import DeepSeek2Model
    from .gemma3 import Gemma3Model
    from .llama import LlamaModel
    reg = {}
    for cls in (LlamaModel, Gemma3Model, DeepSeek2Model):
        reg.update({arch: cls for arch in cls.ARCHS})
    return reg


def supported_architectures() -> list[str]:
    return sorted(_registry())


def check_architecture(f: GGUFFile):
    """The model class for the file's architecture; UnsupportedError if pyrt has none."""
    arch = f.architecture
    cls = _registry().get(arch)
    if cls is None:
        raise UnsupportedError(f"{f.path}: architecture {arch!r} is not supported "
                               f"(supported: {', '.join(supported_architectures())})")
    return cls


def build_model(f: GGUFFile) -> Model:
    model = check_architecture(f)(f)
    # identifies the file in saved KV states; computed on first use (a state save or load), not at load
    model.fingerprint = functools.lru_cache(maxsize=None)(f.fingerprint)
    return model
