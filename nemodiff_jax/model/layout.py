"""The two layouts of the layers' parameters, and the conversions between them.

* **stacked**: ``params["layers"]`` holds every layer's arrays stacked on a leading layer axis,
  run by one ``nn.scan``. Training and checkpoints use it: one compiled layer body, one array per
  weight.
* **per-layer**: ``params["layers_0"] ... params["layers_{L-1}"]``, one subtree per layer, run in
  a Python loop (``nemodiff_jax.load(..., stacked=False)``). A scan reads layer ``i`` as
  ``dynamic_slice(stack, i)``, and XLA on CPU materialises that slice, i.e. copies every weight
  of the model once per forward, a large part of a 1-token decode step on CPU. Decoders give
  it a per-layer KV cache too (``KVCache.for_params``). Not the default: deep models compile
  about four times longer (docs/DESIGN.md, "Parameter layouts").

Both layouts hold the same arrays and give the same logits; :func:`~.forward.forward` takes
either. The conversions go leaf by leaf and, for a tree the caller hands over, free each source
leaf as soon as its copy exists (``consume=True``), so converting costs one leaf of extra memory,
not a second model.
"""

from __future__ import annotations

import functools
import re

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec

_LAYER_KEY = re.compile(r"^layers_(\d+)$")
_LAYER_PREFIX = re.compile(r"^layers_\d+\.")


def is_stacked(params) -> bool:
    """True for the stacked layout (``params["layers"]``), False for one subtree per layer."""
    if "layers" in params:
        return True
    if any(_LAYER_KEY.match(k) for k in params):
        return False
    raise ValueError("parameters hold neither 'layers' (stacked) nor 'layers_0' ... (per-layer) subtrees")


def stacked_name(name: str) -> tuple[str, bool]:
    """A parameter leaf's dotted name as the stacked layout spells it, and whether it was a
    per-layer leaf (no layer axis): ``"layers_3.mlp.up_proj"`` -> ``("layers.mlp.up_proj", True)``.
    The rule tables (sharding, quantization) are keyed by the stacked names."""
    m = _LAYER_PREFIX.match(name)
    return ("layers." + name[m.end():], True) if m else (name, False)


def layer_keys(params) -> list[str]:
    """The per-layer subtrees' keys in layer order."""
    keys = [k for k in params if _LAYER_KEY.match(k)]
    return sorted(keys, key=lambda k: int(_LAYER_KEY.match(k).group(1)))


@functools.lru_cache(maxsize=None)
def _splitter(n: int, out_sharding):
    """One jitted program per layer count and output sharding (compiled once per leaf shape)."""
    outs = None if out_sharding is None else (out_sharding,) * n
    return jax.jit(lambda x: tuple(x[i] for i in range(n)), out_shardings=outs)


def _split(leaf, n: int) -> list:
    """The ``n`` layer slices of a stacked leaf, in one jitted call (not one per layer); a
    NamedSharding-placed leaf's slices keep the spec of its remaining dimensions (every process
    of a multi-host mesh runs the same call)."""
    if isinstance(leaf, jax.ShapeDtypeStruct):
        return [jax.ShapeDtypeStruct(leaf.shape[1:], leaf.dtype) for _ in range(n)]
    sharding = getattr(leaf, "sharding", None)
    out = None
    if isinstance(sharding, NamedSharding):
        out = NamedSharding(sharding.mesh, PartitionSpec(*tuple(sharding.spec)[1:]))
    return list(_splitter(n, out)(leaf))


def unstack_layers(params, *, consume: bool = False) -> dict:
    """The per-layer layout of ``params`` (returned as is when it already is per-layer).

    ``consume=True``: the caller gives ``params`` up, so each stacked leaf is dropped from it as
    soon as its slices exist (peak memory: the model plus one stacked leaf)."""
    if not is_stacked(params):
        return params
    stacked = params["layers"]
    paths, treedef = jax.tree_util.tree_flatten_with_path(stacked)
    n = paths[0][1].shape[0]
    per = [[] for _ in range(n)]
    for path, leaf in paths:
        for i, part in enumerate(jax.block_until_ready(_split(leaf, n))):
            per[i].append(part)
        if consume:
            _drop(stacked, path)
    out = {k: v for k, v in params.items() if k != "layers"}
    if consume:
        params.clear()
    for i in range(n):
        out[f"layers_{i}"] = jax.tree.unflatten(treedef, per[i])
    return out


def stack_layers(params) -> dict:
    """The stacked layout of ``params`` (returned as is when it already is stacked): a copy."""
    if is_stacked(params):
        return params
    keys = layer_keys(params)
    out = {k: v for k, v in params.items() if not _LAYER_KEY.match(k)}
    layers = [params[k] for k in keys]
    if isinstance(jax.tree.leaves(layers[0])[0], jax.ShapeDtypeStruct):
        out["layers"] = jax.tree.map(lambda *xs: jax.ShapeDtypeStruct((len(xs),) + xs[0].shape, xs[0].dtype), *layers)
    else:
        out["layers"] = jax.tree.map(lambda *xs: _stack(*xs), *layers)
    return out


@jax.jit
def _stack(*xs):
    return jnp.stack(xs)


def _drop(tree, path) -> None:
    """Remove the leaf at ``path`` from nested dicts (its memory goes when nothing else holds it)."""
    node = tree
    for k in path[:-1]:
        node = node[getattr(k, "key", k)]
    node[getattr(path[-1], "key", path[-1])] = None
