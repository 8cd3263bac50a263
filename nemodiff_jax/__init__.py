"""nemodiff-jax: Nemotron-Labs-Diffusion tri-mode language models in pure-functional JAX/Flax.

Every public name is imported lazily from the room that owns it (``model/``, ``decode/``,
``io/``), so ``import nemodiff_jax`` and ``nemodiff --help`` load no JAX.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

_EXPORTS = {
    "Model": "model.forward",
    "forward": "model.forward",
    "forward_logits": "model.forward",
    "init_params": "model.forward",
    "abstract_params": "model.forward",
    "count_params": "model.forward",
    "KVCache": "model.cache",
    "NLDConfig": "model.config",
    "AttentionPolicy": "model.masks",
    "generate": "decode.generate",
    "GenerateResult": "decode.generate",
    "stream": "decode.generate",
    "StreamUpdate": "decode.generate",
    "infill": "decode.infill",
    "InfillResult": "decode.infill",
    "revise": "decode.revise",
    "ReviseResult": "decode.revise",
    "load": "io.checkpoint",
    "make_mesh": "model.sharding",
    "shard_model": "model.sharding",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'nemodiff_jax' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + __all__)


if TYPE_CHECKING:  # pragma: no cover
    from .decode.generate import GenerateResult, StreamUpdate, generate, stream  # noqa: F401
    from .decode.infill import InfillResult, infill  # noqa: F401
    from .decode.revise import ReviseResult, revise  # noqa: F401
    from .io.checkpoint import load  # noqa: F401
    from .model.cache import KVCache  # noqa: F401
    from .model.config import NLDConfig  # noqa: F401
    from .model.forward import Model, abstract_params, count_params, forward, forward_logits, init_params  # noqa: F401
    from .model.masks import AttentionPolicy  # noqa: F401
    from .model.sharding import make_mesh, shard_model  # noqa: F401
