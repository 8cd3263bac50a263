"""Sharding over a ``("data", "model")`` device mesh: one table of logical axis rules.

Every weight, the KV cache and the activations name their dimensions with *logical* axes
(``"heads"``, ``"mlp"``, ``"batch"`` ...); :data:`RULES` maps each logical axis to a mesh axis
(the MaxText / jax-llm-examples way). A dimension that the mesh axis does not divide is
replicated instead (8 KV heads on a 16-way model axis), and a mesh axis is used at most once
per array. ``fsdp=True`` also splits every weight's hidden (``"embed"``) dimension over
``"data"``.

The rest is JAX's own machinery: ``NamedSharding`` for the weights, ``jit`` propagating them
through the decode, and :func:`constrain` (``with_sharding_constraint``, a no-op without a
mesh in context) pinning the cache and the hidden states to batch-over-``"data"``. The model
code carries two such hooks (the cache's init and the embedding output); ``generate`` and
``forward_logits`` enter the params' mesh (:func:`under_params_mesh`, :func:`use_mesh`) and place
their inputs with :func:`place_rows`. Loading into a sharding is :mod:`nemodiff_jax.io.sharded`.

Meshes must use ``AxisType.Auto`` axes (:func:`make_mesh` does): ``jax.make_mesh`` defaults to
``Explicit`` axes in this jax version, under which ``with_sharding_constraint`` is an assert.
"""

from __future__ import annotations

import contextlib
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from .layout import stacked_name

DATA, MODEL = "data", "model"

# Logical axis -> mesh axis (None: replicated). The one table.
RULES: dict[str, str | None] = {
    "batch": DATA,  # batch rows, the KV cache's batch
    "vocab": MODEL,  # embedding rows, the diffusion head's columns
    "heads": MODEL,  # q/o heads (and the LoRA A's flattened q width)
    "kv_heads": MODEL,  # k/v heads and the KV cache's heads, where they divide
    "mlp": MODEL,  # the MLP intermediate dimension
    "embed": None,  # the hidden dimension of weights; DATA under FSDP
}
FSDP_RULES: dict[str, str | None] = {**RULES, "embed": DATA}

# Parameter leaf (dotted path) -> logical axes of its per-layer shape; stacked leaves under
# ``layers.`` get an unsharded layer axis in front, per-layer ones (``layers_3.``) none.
PARAM_AXES: dict[str, tuple[str | None, ...]] = {
    "embed_tokens": ("vocab", "embed"),
    "layers.input_layernorm.scale": (None,),
    "layers.post_attention_layernorm.scale": (None,),
    "layers.self_attn.q_proj": ("embed", "heads", None),
    "layers.self_attn.k_proj": ("embed", "kv_heads", None),
    "layers.self_attn.v_proj": ("embed", "kv_heads", None),
    "layers.self_attn.o_proj": ("heads", None, "embed"),
    "layers.self_attn.lora_a": ("heads", None),
    "layers.self_attn.lora_b": (None, "embed"),
    "layers.mlp.gate_proj": ("embed", "mlp"),
    "layers.mlp.up_proj": ("embed", "mlp"),
    "layers.mlp.down_proj": ("mlp", "embed"),
    "norm.scale": (None,),
    "diffusion_head": ("embed", "vocab"),
}
CACHE_AXES = (None, "batch", "kv_heads", None, None)  # k, v: [layers, B, kv_heads, T, D]
HIDDEN_AXES = ("batch", None, None)  # [B, Q, hidden]


def make_mesh(shape: str | tuple[int, int] = None, devices=None) -> Mesh:
    """A ``("data", "model")`` mesh with Auto axes: ``make_mesh((2, 4))`` or ``make_mesh("2x4")``;
    the default is ``1 x len(devices)``."""
    devices = list(jax.devices() if devices is None else devices)
    if shape is None:
        shape = (1, len(devices))
    if isinstance(shape, str):
        try:
            shape = tuple(int(s) for s in shape.lower().split("x"))
        except ValueError:
            raise ValueError(f"mesh must look like DATAxMODEL (e.g. 2x4), got {shape!r}") from None
    if len(shape) != 2 or shape[0] * shape[1] != len(devices):
        raise ValueError(f"mesh {shape} does not cover the {len(devices)} devices (data x model must equal it)")
    auto = (jax.sharding.AxisType.Auto,) * 2
    return jax.make_mesh(tuple(shape), (DATA, MODEL), axis_types=auto, devices=devices)


def _check_mesh(mesh: Mesh) -> None:
    if set(mesh.axis_names) != {DATA, MODEL}:
        raise ValueError(f"the mesh's axes must be named {DATA!r} and {MODEL!r}, got {mesh.axis_names}")


def spec_for(shape, logical, axis_sizes: dict[str, int], rules: dict[str, str | None] = RULES) -> P:
    """The PartitionSpec of an array of ``shape`` with ``logical`` axes: each dimension goes to
    its rule's mesh axis when that axis divides it and is not taken yet, else it is replicated."""
    if len(shape) != len(logical):
        raise ValueError(f"shape {tuple(shape)} and logical axes {logical} differ in rank")
    used, out = set(), []
    for dim, name in zip(shape, logical):
        axis = rules.get(name) if name is not None else None
        if axis is not None and axis in axis_sizes and axis not in used and dim % axis_sizes[axis] == 0:
            used.add(axis)
            out.append(axis if axis_sizes[axis] > 1 else None)
        else:
            out.append(None)
    while out and out[-1] is None:
        out.pop()
    return P(*out)


def leaf_axes(name: str, ndim: int) -> tuple[str | None, ...]:
    """Logical axes of the parameter leaf ``name`` (dotted path) with ``ndim`` dimensions."""
    # int8 kernels (quantize.py): the values and their keepdims scales follow the kernel's rule
    base = name.removesuffix(".qvalue").removesuffix(".scale_q")
    base, per_layer = stacked_name(base)  # a per-layer leaf (layout.py) has no layer axis
    if base not in PARAM_AXES:
        raise KeyError(f"no sharding rule for parameter {name!r}")
    axes = PARAM_AXES[base]
    if base.startswith("layers.") and not per_layer:
        axes = (None, *axes)
    if len(axes) != ndim:
        raise ValueError(f"parameter {name!r} has {ndim} dims but its rule names {len(axes)}")
    return axes


def _name(keypath) -> str:
    return ".".join(str(getattr(k, "key", k)) for k in keypath)


def param_shardings(params_or_shapes, mesh: Mesh, *, fsdp: bool = False):
    """A tree of NamedSharding matching a parameter tree (arrays or ShapeDtypeStructs)."""
    _check_mesh(mesh)
    rules = FSDP_RULES if fsdp else RULES
    sizes = dict(mesh.shape)

    def one(keypath, leaf):
        return NamedSharding(mesh, spec_for(leaf.shape, leaf_axes(_name(keypath), len(leaf.shape)), sizes, rules))

    return jax.tree_util.tree_map_with_path(one, params_or_shapes)


def shard_params(params, mesh: Mesh, *, fsdp: bool = False):
    """``params`` moved onto ``mesh`` by the rules (one leaf at a time, each copy awaited)."""
    shardings = param_shardings(params, mesh, fsdp=fsdp)
    return jax.tree.map(lambda x, s: jax.block_until_ready(jax.device_put(x, s)), params, shardings)


def shard_model(model, mesh: Mesh, *, fsdp: bool = False):
    """An in-memory :class:`~nemodiff_jax.Model` with its weights sharded over ``mesh``."""
    return model.replace(params=shard_params(model.params, mesh, fsdp=fsdp))


def mesh_of(params) -> Mesh | None:
    """The mesh the parameters live on (None when they are not NamedSharding-placed)."""
    leaves = jax.tree.leaves(params)
    s = getattr(leaves[0], "sharding", None) if leaves else None
    if isinstance(s, NamedSharding) and set(s.mesh.axis_names) == {DATA, MODEL}:
        return s.mesh
    return None


@contextlib.contextmanager
def use_mesh(params_or_mesh):
    """Enter the mesh of ``params`` (or a mesh) so :func:`constrain` applies while tracing;
    a no-op for unsharded parameters."""
    mesh = params_or_mesh if isinstance(params_or_mesh, Mesh) else mesh_of(params_or_mesh)
    if mesh is None:
        yield None
        return
    with jax.set_mesh(mesh):
        yield mesh


def constrain(x, logical: tuple[str | None, ...]):
    """``with_sharding_constraint`` by the rules under the mesh in context; else ``x`` itself."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or set(mesh.axis_names) != {DATA, MODEL}:
        return x
    return jax.lax.with_sharding_constraint(x, spec_for(x.shape, logical, dict(mesh.shape)))


def place_rows(x, mesh: Mesh | None):
    """A host array (or key array) with rows over ``"data"`` where they divide, else replicated.
    Works with several processes: each passes the same host value."""
    if mesh is None:
        return x
    if isinstance(x, jax.Array) and not jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
        x = np.asarray(x)
    logical = ("batch",) + (None,) * (np.ndim(x) - 1) if np.ndim(x) else ()
    spec = spec_for(np.shape(x), logical, dict(mesh.shape))
    sharding = NamedSharding(mesh, spec)
    if jax.dtypes.issubdtype(getattr(x, "dtype", None), jax.dtypes.prng_key):
        data = jax.random.key_data(x)
        host = np.asarray(data)
        raw = jax.make_array_from_callback(host.shape, NamedSharding(mesh, P(*spec, None)), lambda i: host[i])
        return jax.random.wrap_key_data(raw, impl=jax.random.key_impl(x))
    host = np.asarray(x)
    return jax.make_array_from_callback(host.shape, sharding, lambda i: host[i])


def replicated(tree, mesh: Mesh | None):
    """Outputs gathered onto every device, so each process can read them on the host."""
    if mesh is None:
        return tree
    return jax.jit(lambda t: t, out_shardings=NamedSharding(mesh, P()))(tree)


def describe(params) -> dict[str, str]:
    """``{leaf: "shape spec"}``: where each weight lives (for docs and debugging)."""
    out = {}
    for keypath, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        spec = getattr(getattr(leaf, "sharding", None), "spec", None)
        out[_name(keypath)] = f"{tuple(leaf.shape)} {spec}"
    return out


def per_device_bytes(tree) -> int:
    """Bytes of ``tree`` held by the most loaded addressable device."""
    totals: dict[Any, int] = {}
    for leaf in jax.tree.leaves(tree):
        for shard in leaf.addressable_shards:
            totals[shard.device] = totals.get(shard.device, 0) + shard.data.nbytes
    return max(totals.values()) if totals else 0


def under_params_mesh(fn):
    """Decorator: run ``fn(model, ...)`` inside the mesh of ``model.params`` (see :func:`use_mesh`)."""
    import functools

    @functools.wraps(fn)
    def wrapped(model, *args, **kwargs):
        with use_mesh(model.params):
            return fn(model, *args, **kwargs)

    return wrapped
