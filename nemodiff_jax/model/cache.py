"""The static-shape KV cache (docs/DESIGN.md, "The static cache"): preallocated, indexed, never reallocated.

``k, v: [layers, B, kv_heads, T_max, head_dim]`` plus ``length: int32[B]``. A forward
writes its window's K/V at ``[length, length + Q)``; the caller decides the new length:
leave it ("peek", a draft), advance it ("commit"), or set it back ("crop").
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
    def init(cfg: NLDConfig, batch: int, max_len: int, dtype=None) -> "KVCache":
        dtype = jnp.dtype(dtype or cfg.dtype)
        shape = (cfg.num_layers, batch, cfg.num_kv_heads, max_len, cfg.head_dim)
        from .sharding import CACHE_AXES, constrain  # batch over "data" under a mesh (sharding.py)

        k, v = constrain(jnp.zeros(shape, dtype), CACHE_AXES), constrain(jnp.zeros(shape, dtype), CACHE_AXES)
        return KVCache(k, v, jnp.zeros((batch,), jnp.int32))

    def with_length(self, length) -> "KVCache":
        """Commit or crop: only the index moves."""
        return self.replace(length=jnp.broadcast_to(jnp.asarray(length, jnp.int32), self.length.shape))

    def keep_strided(self, start: Int[Array, "B"], count: int, stride: int) -> "KVCache":
        """Move the K/V at slots ``start + i * stride`` (i < count) to ``start + i``.

        Quadratic self-speculation keeps only the row heads of its B x (B+1) layout
        (docs/ALGORITHMS.md, "Quadratic self-speculation"); the length is left to the caller.
        """
        idx = jnp.arange(count, dtype=jnp.int32)

        def one_row(kr, vr, s):  # kr: [L, K, T, D]
            src = s + idx * stride
            gathered_k = jnp.take(kr, src, axis=2)
            gathered_v = jnp.take(vr, src, axis=2)
            kr = jax.lax.dynamic_update_slice_in_dim(kr, gathered_k, s, axis=2)
            vr = jax.lax.dynamic_update_slice_in_dim(vr, gathered_v, s, axis=2)
            return kr, vr

        k, v = jax.vmap(one_row, in_axes=(1, 1, 0), out_axes=(1, 1))(self.k, self.v, start)
        return self.replace(k=k, v=v)


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
