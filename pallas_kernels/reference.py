"""The kernels' pure-jnp reference: dense-mask grouped-query attention under a policy.

The Pallas kernel's backward and its tests use it; the model's XLA path
(:func:`nemodiff_jax.model.attention.xla_attention`) is this same function, so there is one dense
attention in the project. It imports only the policy (:mod:`nemodiff_jax.model.masks`) and no Pallas.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from nemodiff_jax.model.masks import AttentionPolicy, build_mask


def reference(q, k, v, policy: AttentionPolicy, *, sm_scale: float):
    """The kernel's own pure-jnp reference and its backward: grouped-query attention of
    ``q [B, Hq, Q, D]`` over ``k, v [B, Hkv, T, D]`` under the dense policy mask, softmax in
    float32; a row that sees no key returns zeros. Same semantics as the model's XLA path."""
    b, h, nq, d = q.shape
    kv_heads, t = k.shape[1], k.shape[2]
    qg = q.reshape(b, kv_heads, h // kv_heads, nq, d)
    scores = jnp.einsum("bkgqd,bktd->bkgqt", qg, k, preferred_element_type=jnp.float32) * sm_scale
    mask = build_mask(policy, nq, t)[:, None, None, :, :]
    scores = jnp.where(mask, scores, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(scores, axis=-1) * jnp.any(mask, axis=-1, keepdims=True)
    out = jnp.einsum("bkgqt,bktd->bkgqd", probs.astype(v.dtype), v, preferred_element_type=jnp.float32)
    return out.reshape(b, h, nq, d).astype(q.dtype)
