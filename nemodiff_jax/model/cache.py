"""The static-shape KV cache (docs/DESIGN.md, "The static cache"): preallocated, indexed, never reallocated.

``k, v: [layers, B, kv_heads, T_max, head_dim]`` plus ``length: int32[B]``. A forward
writes its window's K/V at ``[length, length + Q)``; the caller decides the new length:
leave it ("peek", a draft), advance it ("commit"), or set it back ("crop").

Two layouts, following the parameters' (:mod:`.layout`): one stacked array per K and V for
stacked parameters (the layer scan carries it), or a tuple of ``L`` arrays ``[B, kv_heads,
T_max, head_dim]`` for per-layer parameters (:meth:`KVCache.for_params` picks). A layer's
attention then reads its own whole array: nothing is sliced out of a stack (with the stacked
cache each forward slices every layer's K/V out, a copy of the whole cache, before attention;
the Pallas kernel's operand is such a slice too). On the shipped model a 1-token decode step on
per-layer weights took 0.35 ms with the stacked cache and 0.24 ms with the per-layer one
(CPU, best of 25 interleaved). XLA on CPU still copies a written per-layer array for its two
readers (the attention and the returned cache); that is time, not memory. Operations that
touch every layer (:meth:`KVCache.map_stacks`) see each per-layer array as a stack of one.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import struct
from jaxtyping import Array, Float, Int

from .config import NLDConfig


@struct.dataclass
class KVCache:
    # k, v: [layers, B, kv_heads, T_max, head_dim]; length: int32[B]. Plain annotations so
    # JAX may rebuild the pytree from placeholder leaves under runtime type checks.
    k: Any
    v: Any
    length: Any

    @staticmethod
    def init(cfg: NLDConfig, batch: int, max_len: int, dtype=None, *, per_layer: bool = False) -> "KVCache":
        """Zeros, stacked ``[L, B, K, T, D]`` or (``per_layer``) ``L`` arrays ``[B, K, T, D]``."""
        dtype = jnp.dtype(dtype or cfg.dtype)
        shape = (batch, cfg.num_kv_heads, max_len, cfg.head_dim)
        from .sharding import CACHE_AXES, constrain  # batch over "data" under a mesh (sharding.py)

        if per_layer:
            def zeros():
                return tuple(constrain(jnp.zeros(shape, dtype), CACHE_AXES[1:]) for _ in range(cfg.num_layers))
        else:
            def zeros():
                return constrain(jnp.zeros((cfg.num_layers, *shape), dtype), CACHE_AXES)
        return KVCache(zeros(), zeros(), jnp.zeros((batch,), jnp.int32))

    @staticmethod
    def for_params(params, cfg: NLDConfig, batch: int, max_len: int, dtype=None) -> "KVCache":
        """A zero cache in the layout that suits ``params``: per layer for per-layer parameters."""
        from .layout import is_stacked

        return KVCache.init(cfg, batch, max_len, dtype, per_layer=not is_stacked(params))

    @property
    def per_layer(self) -> bool:
        return isinstance(self.k, (tuple, list))

    @property
    def max_len(self) -> int:
        """Static slot count ``T_max``."""
        return (self.k[0] if self.per_layer else self.k).shape[-2]

    def map_stacks(self, fn, *others: "KVCache") -> "KVCache":
        """``fn(k_stack, *other_k_stacks)`` and the same for V, on ``[L', B, K, T, D]`` stacks:
        the whole stack, or each per-layer array as a stack of one (an expand and a squeeze,
        no copy). ``others`` must share the layout; the length is left alone."""
        if any(o.per_layer != self.per_layer for o in others):
            raise ValueError("KV caches of different layouts (stacked and per-layer) cannot be combined")
        if not self.per_layer:
            return self.replace(k=fn(self.k, *(o.k for o in others)), v=fn(self.v, *(o.v for o in others)))

        def each(xs, *ys):
            return tuple(fn(x[None], *(y[i][None] for y in ys))[0] for i, x in enumerate(xs))

        return self.replace(k=each(self.k, *(o.k for o in others)), v=each(self.v, *(o.v for o in others)))

    def with_length(self, length) -> "KVCache":
        """Commit or crop: only the index moves."""
        return self.replace(length=jnp.broadcast_to(jnp.asarray(length, jnp.int32), self.length.shape))

    def keep_strided(self, start: Int[Array, "B"], count: int, stride: int) -> "KVCache":
        """Move the K/V at slots ``start + i * stride`` (i < count) to ``start + i``.

        Quadratic self-speculation keeps only the row heads of its B x (B+1) layout
        (docs/ALGORITHMS.md, "Quadratic self-speculation"); the length is left to the caller.
        """
        idx = jnp.arange(count, dtype=jnp.int32)

        def one_row(xr, s):  # xr: [L, K, T, D], one row of K or V
            return jax.lax.dynamic_update_slice_in_dim(xr, jnp.take(xr, s + idx * stride, axis=2), s, axis=2)

        return self.map_stacks(lambda x: jax.vmap(one_row, in_axes=(1, 0), out_axes=1)(x, start))


def write_window(cache_kv: Float[Array, "B K T D"], window_kv: Float[Array, "B K Q D"], start: Int[Array, "B"]):
    """Write each row's window K/V at its own offset ``start[b]`` (one layer)."""
    t_max, q = cache_kv.shape[2], window_kv.shape[2]
    if q > t_max:
        raise ValueError(f"window of {q} tokens does not fit a cache of {t_max} slots")
    return jax.vmap(lambda c, w, s: jax.lax.dynamic_update_slice_in_dim(c, w.astype(c.dtype), s, axis=1))(
        cache_kv, window_kv, start
    )


def write_stacked(cache_kv: Float[Array, "L B K T D"], window_kv: Float[Array, "B K Q D"], layer, start: Int[Array, "B"]):
    """Write layer ``layer``'s window K/V into the stacked cache at each row's ``start[b]``.

    Only the window is written, as one scatter with unique, in-bounds indices, which XLA
    performs in place when the cache is a loop carry or a donated buffer (a vmapped
    ``dynamic_update_slice`` becomes a scatter XLA copies the whole cache for). Starts are
    clamped to ``[0, T - Q]`` as ``dynamic_update_slice`` clamps them.
    """
    _, b, k, t_max, _ = cache_kv.shape
    q = window_kv.shape[2]
    if q > t_max:
        raise ValueError(f"window of {q} tokens does not fit a cache of {t_max} slots")
    s = jnp.clip(jnp.asarray(start, jnp.int32), 0, t_max - q)
    rows = jnp.arange(b, dtype=jnp.int32)[:, None, None]
    heads = jnp.arange(k, dtype=jnp.int32)[None, :, None]
    slots = s[:, None, None] + jnp.arange(q, dtype=jnp.int32)[None, None, :]
    return cache_kv.at[layer, rows, heads, slots].set(
        window_kv.astype(cache_kv.dtype), unique_indices=True, indices_are_sorted=True, mode="promise_in_bounds"
    )


def write_layer(cache_kv: Float[Array, "B K T D"], window_kv: Float[Array, "B K Q D"], start: Int[Array, "B"]):
    """:func:`write_stacked` for one layer's own array (a per-layer cache): the same in-place scatter."""
    return write_stacked(cache_kv[None], window_kv, 0, start)[0]
