"""The attention seam: one function, two implementations (XLA einsum or the Pallas kernel).

Both take queries ``[B, Hq, Q, D]`` and the cache (window already written)
``[B, Hkv, T, D]`` and read visibility from the same :mod:`masks` policy.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from .masks import AttentionPolicy, build_mask


def xla_attention(
    q: Float[Array, "B H Q D"],
    k: Float[Array, "B K T D"],
    v: Float[Array, "B K T D"],
    policy: AttentionPolicy,
    sm_scale: float,
) -> Float[Array, "B H Q D"]:
    """Grouped-query attention with a dense policy mask; softmax in float32."""
    b, h, nq, d = q.shape
    kv_heads, t = k.shape[1], k.shape[2]
    qg = q.reshape(b, kv_heads, h // kv_heads, nq, d)
    scores = jnp.einsum("bkgqd,bktd->bkgqt", qg, k, preferred_element_type=jnp.float32) * sm_scale
    mask = build_mask(policy, nq, t)[:, None, None, :, :]
    scores = jnp.where(mask, scores, jnp.finfo(jnp.float32).min)
    # A row that sees nothing (only possible for an empty prefix and window) returns zeros,
    # as the Pallas kernel does, rather than the mean of the values.
    probs = jax.nn.softmax(scores, axis=-1) * jnp.any(mask, axis=-1, keepdims=True)
    out = jnp.einsum("bkgqt,bktd->bkgqd", probs.astype(v.dtype), v, preferred_element_type=jnp.float32)
    return out.reshape(b, h, nq, d).astype(q.dtype)


def attend(q, k, v, policy: AttentionPolicy, sm_scale: float, impl: str = "xla"):
    if impl == "xla":
        return xla_attention(q, k, v, policy, sm_scale)
    if impl == "pallas":
        from pallas_kernels.block_attention import block_attention

        return block_attention(q, k, v, policy, sm_scale=sm_scale)
    raise ValueError(f"unknown attention_impl {impl!r}; expected 'xla' or 'pallas'")
