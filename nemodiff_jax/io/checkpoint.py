"""Reading model directories: HF checkpoints (safetensors or torch pickles) and the
converted layout written by ``convert_weights`` (config.json + orbax params + manifest)."""

from __future__ import annotations

from pathlib import Path

import jax.numpy as jnp
import numpy as np

from ..model.config import NLDConfig
from ..model.forward import Model
from ..model.layout import is_stacked, unstack_layers

EMBEDDED_DIR = Path(__file__).parent.parent / "assets" / "embedded"


def resolve(path) -> Path:
    if str(path) == "embedded":
        if not (EMBEDDED_DIR / "config.json").is_file():
            raise ValueError(f"the embedded model is not present at {EMBEDDED_DIR}")
        return EMBEDDED_DIR
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise ValueError(f"{p} is a file, not a model directory")
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


def load(
    path: str | Path = "embedded",
    *,
    dtype: str | None = None,
    attention_impl: str | None = None,
    mesh=None,
    fsdp: bool = False,
    quantize: str | None = None,
    stacked: bool = True,
) -> Model:
    """Load a model: ``"embedded"``, a directory written by the port script, or an HF NLD directory.

    ``mesh``: a ``jax.sharding.Mesh`` with axes ``("data", "model")`` (``nd.make_mesh("2x4")``):
    each weight is read straight into its sharding by the rules of :mod:`nemodiff_jax.model.sharding`
    (:mod:`.sharded`); ``fsdp`` also splits the weights' hidden dimension over ``"data"``.
    ``quantize="int8"``: the linear kernels in int8 with per-output-channel scales
    (:mod:`nemodiff_jax.model.quantize`), quantized leaf by leaf after reading.
    ``stacked=False``: one subtree per layer instead of the stacked (scanned) layout; on CPU a
    decode step then copies no weights (AR 1.28x faster on the shipped model, README), at the cost
    of longer compiles and more temporaries per layer for deep models (docs/DESIGN.md,
    "Parameter layouts")."""
    model = load_model(path, dtype=dtype, attention_impl=attention_impl, mesh=mesh, fsdp=fsdp, stacked=stacked)
    if quantize is not None:
        from ..model.quantize import quantize_model

        model = quantize_model(model, quantize, fsdp=fsdp)
    return model


def load_model(path, dtype: str | None = None, attention_impl: str | None = None, mesh=None, fsdp: bool = False,
               *, stacked: bool = True) -> Model:

    directory = resolve(path)
    overrides = {}
    if attention_impl is not None:
        overrides["attention_impl"] = attention_impl
    if mesh is not None:  # each tensor read straight into its sharding
        from .sharded import read_converted_sharded, read_hf_sharded

        reader = read_converted_sharded if (directory / "params").is_dir() else read_hf_sharded
        cfg, params = reader(directory, mesh, fsdp=fsdp, dtype=dtype, **overrides)
    elif (directory / "params").is_dir():
        from nemodiff_jax.io.jax_format import read_converted

        cfg, params = read_converted(directory, dtype=dtype, **overrides)
    else:
        cfg, params = read_hf(directory, dtype=dtype, **overrides)
    check_finite(cfg, params, str(directory))
    if not stacked:  # one subtree per layer, each stacked leaf freed once sliced
        params = unstack_layers(params, consume=True)
    return Model(cfg, params, load_tokenizer(directory, cfg), str(directory))


def check_finite(cfg: NLDConfig, params, where: str = "checkpoint") -> None:
    """A CheckpointError naming the first tensor (HF name, layer included) holding NaN or Inf.

    One reduction per leaf on the device (per layer in the per-layer layout); only a bad stacked
    leaf is searched layer by layer."""
    import jax

    from .keymap import CheckpointError, get_path, hf_param_specs, spec_array
    from ..guard import nonfinite_count

    stacked = is_stacked(params)
    leaf_ok: dict[tuple, bool] = {}
    for spec in hf_param_specs(cfg, include_lora=cfg.lora_rank > 0):
        leaf = get_path(params, spec.path) if stacked else spec_array(params, spec)
        key = spec.path if stacked else (spec.path, spec.layer)
        if key not in leaf_ok:
            leaf_ok[key] = bool(jax.numpy.isfinite(leaf).all())
        if leaf_ok[key]:
            continue
        count = nonfinite_count(spec_array(params, spec))
        if count:
            raise CheckpointError([f"non-finite weights: {spec.hf_name} holds {count} NaN/Inf value(s) "
                                   "(a corrupt or diverged checkpoint; it would decode garbage)"], where)


def read_hf(directory: Path, dtype: str | None = None, **overrides):
    """Config and parameters straight from an HF NLD checkpoint directory, with the bundled
    draft LoRA (``linear_spec_lora/``) when it has one. Everything is checked first; one
    CheckpointError lists all problems."""
    from nemodiff_jax.io.hf_read import open_hf
    from nemodiff_jax.io.jax_format import to_device
    from nemodiff_jax.io.keymap import assemble_params

    ckpt = open_hf(directory, dtype=dtype, **overrides)
    cfg = ckpt.config
    np_dtype = as_numpy_dtype(cfg.dtype)
    tree = assemble_params(cfg, ckpt.source.get, dtype=np_dtype, include_lora=False)
    if ckpt.adapter is not None:
        get = ckpt.adapter.source.get
        lora = assemble_params(cfg, get, dtype=np_dtype, include_lora=True, lora_only=True)
        tree["layers"]["self_attn"].update(lora["layers"]["self_attn"])
        del lora
    return cfg, to_device(tree)


def as_numpy_dtype(name: str):
    return np.dtype(jnp.dtype(name))
