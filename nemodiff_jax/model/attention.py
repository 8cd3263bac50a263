"""The attention seam: one function, two implementations (XLA einsum or the Pallas kernel).

Both take queries ``[B, Hq, Q, D]`` and the cache (window already written)
``[B, Hkv, T, D]`` and read visibility from the same :mod:`masks` policy.
"""

from __future__ import annotations

from jaxtyping import Array, Float

from pallas_kernels.reference import reference

from .masks import AttentionPolicy


def xla_attention(
    q: Float[Array, "B H Q D"],
    k: Float[Array, "B K T D"],
    v: Float[Array, "B K T D"],
    policy: AttentionPolicy,
    sm_scale: float,
) -> Float[Array, "B H Q D"]:
    """Grouped-query attention with a dense policy mask; softmax in float32; a row that sees
    nothing returns zeros, as the Pallas kernel does. The computation is the kernels' own jnp
    reference (:func:`pallas_kernels.reference.reference`), shared so the two cannot drift."""
    return reference(q, k, v, policy, sm_scale=sm_scale)


def attend(q, k, v, policy: AttentionPolicy, sm_scale: float, impl: str = "xla"):
    if impl == "xla":
        return xla_attention(q, k, v, policy, sm_scale)
    if impl == "pallas":
        from pallas_kernels.block_attention import block_attention

        return block_attention(q, k, v, policy, sm_scale=sm_scale)
    raise ValueError(f"unknown attention_impl {impl!r}; expected 'xla' or 'pallas'")
