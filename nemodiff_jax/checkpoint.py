"""Reading model directories: HF checkpoints (safetensors or torch pickles) and the
converted layout written by ``convert_weights`` (config.json + orbax params + manifest)."""

from __future__ import annotations

from pathlib import Path

import jax.numpy as jnp
import numpy as np

from .config import NLDConfig

EMBEDDED_DIR = Path(__file__).parent / "assets" / "embedded"


def resolve(path) -> Path:
    if str(path) == "embedded":
        if not (EMBEDDED_DIR / "config.json").is_file():
            raise ValueError(f"the embedded model is not present at {EMBEDDED_DIR}")
        return EMBEDDED_DIR
    p = Path(path)
    if not p.is_dir():
        raise ValueError(f"model directory {p} does not exist")
    if not (p / "config.json").is_file():
        raise ValueError(f"model directory {p} has no config.json")
    return p


def load_tokenizer(directory: Path, cfg: NLDConfig):
    if not (directory / "tokenizer.json").is_file():
        return None
    from .tokenizer import Tokenizer

    return Tokenizer.from_dir(directory, cfg)


def load_model(path, dtype: str | None = None, attention_impl: str | None = None):
    from .api import Model

    directory = resolve(path)
    overrides = {}
    if attention_impl is not None:
        overrides["attention_impl"] = attention_impl
    if (directory / "params").is_dir():
        from convert_weights.jax_format import read_converted

        cfg, params = read_converted(directory, dtype=dtype, **overrides)
    else:
        cfg, params = read_hf(directory, dtype=dtype, **overrides)
    return Model(cfg, params, load_tokenizer(directory, cfg), str(directory))


def read_hf(directory: Path, dtype: str | None = None, **overrides):
    """Config and parameters straight from an HF NLD checkpoint directory."""
    from convert_weights.keymap import CheckpointError, assemble_params, check_names_and_shapes
    from convert_weights.sources import TensorSource

    cfg = NLDConfig.from_hf(directory)
    if dtype is not None:
        overrides["dtype"] = dtype
    if overrides:
        cfg = cfg.replace(**overrides)
    src = TensorSource(directory)
    problems = check_names_and_shapes(cfg, src.shapes())
    if problems:
        raise CheckpointError(problems, str(directory))
    np_dtype = jnp.dtype(cfg.dtype)
    tree = assemble_params(cfg, src.get, src.names(), dtype=np_dtype)
    import jax

    return cfg, jax.tree.map(jnp.asarray, tree)


def as_numpy_dtype(name: str):
    return np.dtype(jnp.dtype(name))
