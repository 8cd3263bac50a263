"""Model specs for the eval tools: ``embedded``, a checkpoint directory, or ``random:PRESET``.

``random:tiny`` builds a random model from numpy draws over the parameter shapes (no
compile, so it is instant): what tests, CI and the notebooks use when the embedded model is
absent. Its head is scaled up so argmaxes are clear and confidences spread, which makes
diffusion telemetry non-trivial even without training.
"""

from __future__ import annotations

import jax
import numpy as np

from ..io.checkpoint import load
from ..model.forward import Model, abstract_params
from ..model.config import NLDConfig


def random_model(preset: str = "tiny", seed: int = 0, head_scale: float = 30.0, **overrides) -> Model:
    """Random parameters (normal 0.02, norm scales 1, LoRA B 0) of a preset config with ``overrides``."""
    cfg = NLDConfig.preset(preset).replace(**overrides)
    rng = np.random.default_rng(seed)

    def leaf(path, x):
        name = jax.tree_util.keystr(path)
        if "scale" in name:
            return np.ones(x.shape, x.dtype)
        if "lora_b" in name.lower():
            return np.zeros(x.shape, x.dtype)
        w = rng.normal(0.0, 0.02, x.shape)
        if "diffusion_head" in name:
            w = w * head_scale
        return w.astype(x.dtype)

    params = jax.tree_util.tree_map_with_path(leaf, abstract_params(cfg))
    return Model(cfg, jax.tree.map(jax.numpy.asarray, params), None, f"random:{preset}")


def load_model(spec: str = "embedded", dtype: str | None = None) -> Model:
    """``embedded``, a model directory, or ``random:PRESET[:SEED]``."""
    if spec.startswith("random"):
        parts = spec.split(":")
        preset = parts[1] if len(parts) > 1 and parts[1] else "tiny"
        seed = int(parts[2]) if len(parts) > 2 else 0
        return random_model(preset, seed)
    return load(spec, dtype=dtype)


def embedded_or_random(note: bool = True) -> Model:
    """The embedded model, or (with a printed note) the tiny random one when it is absent.

    ``$NEMODIFF_MODEL`` (a :func:`load_model` spec) overrides the choice: the notebooks use
    this, so ``NEMODIFF_MODEL=path/to/ckpt`` runs them on any checkpoint.
    """
    import os

    spec = os.environ.get("NEMODIFF_MODEL")
    if spec:
        return load_model(spec)
    try:
        return load("embedded")
    except (ValueError, FileNotFoundError, ImportError) as e:
        if note:
            print(f"note: embedded model unavailable ({e}); using a tiny random model (outputs are noise)")
        return random_model("tiny")
