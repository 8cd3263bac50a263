"""Loading straight into a sharding: every leaf is a ``jax.make_array_from_callback`` whose
callback reads only what one device holds.

* converted layout (orbax / tensorstore zarr): the callback reads exactly the device's slice
  of the stored leaf (tensorstore indexing), cast to the wanted dtype while reading;
* HF checkpoints (safetensors, torch pickles): the callback reads the layers of its slice
  one HF tensor at a time (safetensors memory-maps it), converts it to our layout and keeps
  the device's part. Host peak: one HF tensor plus one device shard.

No step holds the whole model on one device or on the host. Devices that hold the same
slice (replicated dimensions) share one read.
"""

from __future__ import annotations

from pathlib import Path

import jax
import numpy as np

from ..model.forward import abstract_params
from ..model.sharding import param_shardings


def _key(index) -> tuple:
    return tuple((s.start, s.stop, s.step) for s in index)


def _assemble(shape, sharding, read):
    cache: dict = {}

    def cb(index):
        k = _key(index)
        if k not in cache:
            cache[k] = read(index)
        return cache[k]

    arr = jax.make_array_from_callback(tuple(shape), sharding, cb)
    return jax.block_until_ready(arr)


def _set(tree: dict, path, value) -> None:
    for key in path[:-1]:
        tree = tree.setdefault(key, {})
    tree[path[-1]] = value


def read_converted_sharded(directory: Path, mesh, *, fsdp: bool = False, dtype: str | None = None, **overrides):
    """``(cfg, params)`` of a converted directory, each leaf read into its sharding."""
    from .hf_read import read_config
    from .jax_format import LORA_DIR, PARAMS_DIR, LeafReader, check_stored, np_dtype
    from .keymap import CheckpointError

    directory = Path(directory)
    if dtype is not None:
        overrides["dtype"] = dtype
    cfg, _ = read_config(directory, **overrides)
    problems = check_stored(directory / PARAMS_DIR, cfg, lora=False)
    if cfg.lora_rank:
        problems += check_stored(directory / LORA_DIR, cfg, lora=True)
    if problems:
        raise CheckpointError(problems, str(directory))
    want = np_dtype(cfg.dtype)
    reader = LeafReader(directory)
    abstract = abstract_params(cfg)
    shardings = param_shardings(abstract, mesh, fsdp=fsdp)
    params: dict = {}
    for (keypath, leaf), sharding in zip(jax.tree_util.tree_flatten_with_path(abstract)[0], jax.tree.leaves(shardings)):
        path = [str(getattr(k, "key", k)) for k in keypath]
        name = ".".join(path)
        store = reader._store(LORA_DIR if path[-1].startswith("lora_") else PARAMS_DIR, name)

        def read(index, store=store):
            return np.asarray(store[index].read().result()).astype(want, copy=False)

        _set(params, path, _assemble(leaf.shape, sharding, read))
    return cfg, params


def read_hf_sharded(directory: Path, mesh, *, fsdp: bool = False, dtype: str | None = None, **overrides):
    """``(cfg, params)`` of an HF directory (and its bundled draft LoRA), each leaf read into its sharding."""
    from .hf_read import open_hf
    from .jax_format import np_dtype
    from .keymap import hf_param_specs, leaves

    ckpt = open_hf(directory, dtype=dtype, **overrides)
    cfg = ckpt.config
    want = np_dtype(cfg.dtype)
    abstract = abstract_params(cfg)
    shardings = param_shardings(abstract, mesh, fsdp=fsdp)
    flat_shardings = {".".join(str(getattr(k, "key", k)) for k in kp): s
                      for kp, s in jax.tree_util.tree_flatten_with_path(shardings)[0]}
    flat_shapes = {".".join(str(getattr(k, "key", k)) for k in kp): a.shape
                   for kp, a in jax.tree_util.tree_flatten_with_path(abstract)[0]}
    specs = hf_param_specs(cfg, include_lora=cfg.lora_rank > 0)
    params: dict = {}
    for name, group in leaves(specs, cfg.num_layers).items():
        get = ckpt.adapter.source.get if group[0].lora else ckpt.source.get

        def one(spec, get=get):
            return spec.to_jax(get(spec.hf_name).astype(want, copy=False))

        if group[0].layer is None:
            def read(index, spec=group[0], one=one):
                return np.ascontiguousarray(one(spec)[index])
        else:
            def read(index, group=group, one=one):
                layers = range(*index[0].indices(len(group)))
                return np.stack([one(group[i])[index[1:]] for i in layers])

        _set(params, group[0].path, _assemble(flat_shapes[name], flat_shardings[name], read))
    return cfg, params
