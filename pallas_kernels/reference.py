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
    # Keys as the dot's left operand, contracted over their minor (head) dim: the cache is read
    # in its own layout; XLA on CPU transposed the whole K cache per forward for q @ k^T.
    scores_t = jax.lax.dot_general(k, qg, (((3,), (4,)), ((0, 1), (0, 1))), preferred_element_type=jnp.float32)
    scores = scores_t.transpose(0, 1, 3, 4, 2) * sm_scale  # [B, Hkv, G, Q, T]
    mask = build_mask(policy, nq, t)[:, None, None, :, :]
    scores = jnp.where(mask, scores, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(scores, axis=-1) * jnp.any(mask, axis=-1, keepdims=True)
    out = jnp.einsum("bkgqt,bktd->bkgqd", probs.astype(v.dtype), v, preferred_element_type=jnp.float32)
    return out.reshape(b, h, nq, d).astype(q.dtype)
