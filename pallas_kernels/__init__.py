"""GPU kernels written in Pallas (Triton lowering), each beside its pure-jnp reference.

* :mod:`pallas_kernels.block_attention`: flash attention of a query window over the static
  KV cache under an :class:`nemodiff_jax.model.masks.AttentionPolicy` (all three layouts).
* :mod:`pallas_kernels.reference`: the dense jnp attention the kernel is checked against and
  differentiates through (also the model's XLA path).
* :mod:`pallas_kernels.roofline`: FLOPs / HBM bytes / H100 roofline time of one call.
* :mod:`pallas_kernels.bench`: times the kernel against ``xla_attention`` (``main(argv)``).

Submodules are imported lazily so ``import pallas_kernels`` stays cheap.
"""

__all__ = ["block_attention", "reference", "roofline", "bench"]
