"""nemodiff-jax: Nemotron-Labs-Diffusion tri-mode language models in pure-functional JAX/Flax.

Names are imported lazily, except ``generate``: a submodule of the same name exists, and the
import system would rebind ``nemodiff_jax.decode.generate`` to that module on its first import, so
the function is bound eagerly, right after the module loads.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

_EXPORTS = {
    "Model": "model.forward",
    "load": "io.checkpoint",
    "forward": "model.forward",
    "forward_logits": "model.forward",
    "init_params": "model.forward",
    "abstract_params": "model.forward",
    "count_params": "model.forward",
    "KVCache": "model.cache",
    "NLDConfig": "model.config",
    "AttentionPolicy": "model.masks",
}

__all__ = sorted([*_EXPORTS, "generate", "GenerateResult"])

from .decode.generate import GenerateResult, generate  # noqa: E402,F401  (see the docstring)


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'nemodiff_jax' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + __all__)


if TYPE_CHECKING:  # pragma: no cover
    from .model.forward import Model, abstract_params, count_params, forward, forward_logits, init_params  # noqa: F401
    from .io.checkpoint import load  # noqa: F401
    from .model.cache import KVCache  # noqa: F401
    from .model.config import NLDConfig  # noqa: F401
    from .model.masks import AttentionPolicy  # noqa: F401
