"""YaRN rotary embeddings and the Llama-4 query scale (NLD_SPEC 1.3).

The inverse frequencies are computed the way transformers' ``_compute_yarn_parameters``
does (same correction range, truncation and ramp), in float32, so ported checkpoints
reproduce the reference logits. Positions are absolute cache positions.
"""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int

from .config import NLDConfig


def _yarn_mscale(scale: float, mscale: float = 1.0) -> float:
    return 1.0 if scale <= 1 else 0.1 * mscale * math.log(scale) + 1.0


def inv_freq_and_attention_factor(cfg: NLDConfig) -> tuple[np.ndarray, float]:
    """``inv_freq`` (float32 ``[head_dim // 2]``) and the cos/sin attention factor."""
    dim = cfg.head_dim
    base = cfg.rope_theta
    exponents = np.arange(0, dim, 2, dtype=np.float32) / np.float32(dim)
    pos_freqs = np.power(np.float32(base), exponents, dtype=np.float32)
    inv_extrap = (np.float32(1.0) / pos_freqs).astype(np.float32)
    if cfg.rope_type != "yarn":
        return inv_extrap, 1.0
    factor = cfg.rope_factor
    inv_interp = (np.float32(1.0) / (np.float32(factor) * pos_freqs)).astype(np.float32)
    if cfg.mscale and cfg.mscale_all_dim:
        attention_factor = _yarn_mscale(factor, cfg.mscale) / _yarn_mscale(factor, cfg.mscale_all_dim)
    else:
        attention_factor = _yarn_mscale(factor)

    def correction_dim(rotations: float) -> float:
        orig = cfg.original_max_position_embeddings
        return (dim * math.log(orig / (rotations * 2 * math.pi))) / (2 * math.log(base))

    low, high = correction_dim(cfg.beta_fast), correction_dim(cfg.beta_slow)
    if cfg.rope_truncate:
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001
    ramp = np.clip((np.arange(dim // 2, dtype=np.float32) - np.float32(low)) / np.float32(high - low), 0, 1)
    extrap_weight = (np.float32(1.0) - ramp.astype(np.float32)).astype(np.float32)
    inv = inv_interp * (1 - extrap_weight) + inv_extrap * extrap_weight
    return inv.astype(np.float32), float(attention_factor)


def cos_sin(cfg: NLDConfig, positions: Int[Array, "B Q"]) -> tuple[Float[Array, "B Q D"], Float[Array, "B Q D"]]:
    """float32 cos and sin tables for rotate-half RoPE at the given positions."""
    inv_freq, factor = inv_freq_and_attention_factor(cfg)
    angles = positions.astype(jnp.float32)[..., None] * jnp.asarray(inv_freq)[None, None, :]
    emb = jnp.concatenate([angles, angles], axis=-1)
    return jnp.cos(emb) * factor, jnp.sin(emb) * factor


def rotate_half(x):
    half = x.shape[-1] // 2
    return jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)


def apply_rope(x: Float[Array, "B Q N D"], cos: Float[Array, "B Q D"], sin: Float[Array, "B Q D"]):
    """Rotate ``x`` (heads on axis 2) in float32 and return it in its own dtype."""
    c, s = cos[:, :, None, :], sin[:, :, None, :]
    x32 = x.astype(jnp.float32)
    return (x32 * c + rotate_half(x32) * s).astype(x.dtype)


def llama4_query_scale(cfg: NLDConfig, positions: Int[Array, "B Q"]) -> Float[Array, "B Q"]:
    """``1 + beta * ln(1 + floor(pos / original_max))``; exactly 1 below the original window."""
    if not cfg.llama4_scaling_beta:
        return jnp.ones(positions.shape, jnp.float32)
    pos = positions.astype(jnp.float32)
    return 1.0 + cfg.llama4_scaling_beta * jnp.log1p(jnp.floor(pos / cfg.original_max_position_embeddings))
