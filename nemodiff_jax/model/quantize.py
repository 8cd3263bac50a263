"""int8 weight-only quantization of the linear layers, per output channel (a small, documented
implementation: qwix intercepts Flax ``nn.Dense``/``nn.Einsum`` modules, and our linen model keeps
raw ``self.param`` kernels in einsums, so there is nothing for it to intercept).

A quantized kernel is the dict ``{"qvalue": int8, "scale_q": float32}`` in place of the array:
``w ~ qvalue * scale_q``, with ``scale_q = max|w| / 127`` over the contracting (input) axes, kept
as size-1 dimensions, i.e. one scale per output channel (per layer for stacked leaves); the scales
broadcast against the kernel and shard by the kernel's own rule (size-1 dimensions replicate).
:func:`dequant` (called by the layers on every kernel) turns it back into the compute dtype
inside the jitted forward, layer by layer under the scan, so device memory holds int8 weights.

Quantized: q/k/v/o, gate/up/down and the diffusion head. Kept: the embedding (a gather, not a
matmul), the norms and the draft LoRA (small).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from .layout import stacked_name

# Leaf -> number of leading contracting (input) axes of the per-layer kernel.
CONTRACTING = {
    "layers.self_attn.q_proj": 1,  # [h, nq, d]
    "layers.self_attn.k_proj": 1,
    "layers.self_attn.v_proj": 1,
    "layers.self_attn.o_proj": 2,  # [nq, d, h]
    "layers.mlp.gate_proj": 1,  # [h, i]
    "layers.mlp.up_proj": 1,
    "layers.mlp.down_proj": 1,  # [i, h]
    "diffusion_head": 1,  # [h, v]
}
MODES = ("int8",)


def is_quantized(w) -> bool:
    return isinstance(w, dict) and "qvalue" in w


def dequant(w, dtype):
    """The kernel in ``dtype``: a plain array as it is, an int8 kernel times its scales."""
    if not is_quantized(w):
        return w
    return w["qvalue"].astype(dtype) * w["scale_q"].astype(dtype)


def quantize_leaf(w, contracting: int, stacked: bool):
    """``{"qvalue", "scale_q"}`` for one kernel (``stacked``: a leading layer axis)."""
    first = 1 if stacked else 0
    axes = tuple(range(first, first + contracting))
    return _quantize(w, axes)


def _quantize(w, axes):
    return _quantize_jit(w, axes)


def _quantize_impl(w, axes):
    w32 = w.astype(jnp.float32)
    amax = jnp.max(jnp.abs(w32), axis=axes, keepdims=True)
    scale = jnp.where(amax > 0, amax / 127.0, 1.0)
    q = jnp.clip(jnp.round(w32 / scale), -127, 127).astype(jnp.int8)
    return {"qvalue": q, "scale_q": scale}


_quantize_jit = jax.jit(_quantize_impl, static_argnums=1)


def quantize_params(params, mode: str = "int8"):
    """A copy of ``params`` with the linear kernels in int8 (one leaf at a time)."""
    if mode not in MODES:
        raise ValueError(f"quantize must be one of {MODES}, got {mode!r}")
    out = jax.tree.map(lambda x: x, params)  # new containers, same leaves

    def walk(node, prefix):
        for key, value in list(node.items()):
            name = f"{prefix}{key}"
            rule, _ = stacked_name(name)  # a per-layer leaf (layout.py) has no layer axis
            if rule in CONTRACTING and not is_quantized(value):
                node[key] = jax.block_until_ready(quantize_leaf(value, CONTRACTING[rule], name.startswith("layers.")))
            elif isinstance(value, dict) and not is_quantized(value):
                node[key] = dict(value)
                walk(node[key], name + ".")

    out = dict(out)
    walk(out, "")
    return out


def quantize_model(model, mode: str = "int8", *, fsdp: bool = False):
    """The model with int8 linear kernels; on a mesh, each part placed by the sharding rules."""
    from .sharding import mesh_of, param_shardings

    mesh = mesh_of(model.params)
    params = quantize_params(model.params, mode)
    if mesh is not None:
        shardings = param_shardings(params, mesh, fsdp=fsdp)
        params = jax.tree.map(lambda x, s: jax.block_until_ready(jax.device_put(x, s)), params, shardings)
    return model.replace(params=params)


def param_bytes(params) -> int:
    return int(sum(x.nbytes for x in jax.tree.leaves(params)))
