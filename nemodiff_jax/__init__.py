"""nemodiff-jax: Nemotron-Labs-Diffusion tri-mode language models in pure-functional JAX/Flax.

Names are imported lazily, except ``generate``: a submodule of the same name exists, and the
import system would rebind ``nemodiff_jax.generate`` to that module on its first import, so
the function is bound eagerly, right after the module loads.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

_EXPORTS = {
    "Model": "api",
    "load": "api",
    "forward": "api",
    "forward_logits": "api",
    "init_params": "api",
    "abstract_params": "api",
    "count_params": "api",
    "KVCache": "cache",
    "NLDConfig": "config",
    "AttentionPolicy": "masks",
}

__all__ = sorted([*_EXPORTS, "generate", "GenerateResult"])

from .generate import GenerateResult, generate  # noqa: E402,F401  (see the docstring)


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'nemodiff_jax' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + __all__)


if TYPE_CHECKING:  # pragma: no cover
    from .api import Model, abstract_params, count_params, forward, forward_logits, init_params, load  # noqa: F401
    from .cache import KVCache  # noqa: F401
    from .config import NLDConfig  # noqa: F401
    from .masks import AttentionPolicy  # noqa: F401
