"""The NLD network in flax.linen: Ministral3 decoder layers plus the untied diffusion head.

The model knows nothing of decoding modes. It takes tokens, their absolute positions, an
attention policy (:mod:`masks`), an optional static KV cache (:mod:`cache`) and a traced
LoRA switch, and returns float32 logits and the cache with the window's K/V written.
Layers are scanned (parameters stacked on a leading layer axis) so deep models compile once.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import flax.linen as nn
from jaxtyping import Array, Float, Int

from .attention import attend
from .cache import KVCache, write_window
from .config import NLDConfig
from .masks import AttentionPolicy
from .rope import apply_rope, cos_sin, llama4_query_scale

_init = nn.initializers.normal(stddev=0.02)


class RMSNorm(nn.Module):
    """RMSNorm with float32 statistics, cast back before the weight (as transformers does)."""

    eps: float
    dtype: jnp.dtype

    @nn.compact
    def __call__(self, x):
        scale = self.param("scale", nn.initializers.ones, (x.shape[-1],), self.dtype)
        x32 = x.astype(jnp.float32)
        y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        return scale * y.astype(x.dtype)


class Attention(nn.Module):
    cfg: NLDConfig

    @nn.compact
    def __call__(self, x, cos, sin, qscale, layer_kv, policy: AttentionPolicy, lora):
        c = self.cfg
        dt = jnp.dtype(c.dtype)
        h, nq, nk, d = c.hidden_size, c.num_heads, c.num_kv_heads, c.head_dim
        wq = self.param("q_proj", _init, (h, nq, d), dt)
        wk = self.param("k_proj", _init, (h, nk, d), dt)
        wv = self.param("v_proj", _init, (h, nk, d), dt)
        wo = self.param("o_proj", _init, (nq, d, h), dt)
        q = jnp.einsum("bqh,hnd->bqnd", x, wq)
        k = jnp.einsum("bqh,hnd->bqnd", x, wk)
        v = jnp.einsum("bqh,hnd->bqnd", x, wv)
        q = apply_rope(q, cos, sin)
        k = apply_rope(k, cos, sin)
        q = (q.astype(jnp.float32) * qscale[:, :, None, None]).astype(q.dtype)
        k_win, v_win = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)  # [B, K, Q, D]
        if layer_kv is None:  # no cache: the window is the whole key set
            k_all, v_all, new_kv = k_win, v_win, None
        else:
            k_all = write_window(layer_kv[0], k_win, policy.prefix_len)
            v_all = write_window(layer_kv[1], v_win, policy.prefix_len)
            new_kv = (k_all, v_all)
        out = attend(q.transpose(0, 2, 1, 3), k_all, v_all, policy, d**-0.5, c.attention_impl)
        out = out.transpose(0, 2, 1, 3)  # [B, Q, H, D]
        y = jnp.einsum("bqnd,ndh->bqh", out, wo)
        if c.lora_rank:
            lora_a = self.param("lora_a", _init, (nq * d, c.lora_rank), dt)
            lora_b = self.param("lora_b", nn.initializers.zeros, (c.lora_rank, h), dt)
            flat = out.reshape(*out.shape[:2], nq * d)
            delta = (flat @ lora_a) @ lora_b
            scale = jnp.asarray(lora, jnp.float32) * c.lora_scale
            if scale.ndim == 1:  # a per-row switch [B]: rows of one forward may differ
                scale = scale[:, None, None]
            y = y + scale.astype(y.dtype) * delta
        return y, new_kv


class MLP(nn.Module):
    cfg: NLDConfig

    @nn.compact
    def __call__(self, x):
        c = self.cfg
        dt = jnp.dtype(c.dtype)
        gate = self.param("gate_proj", _init, (c.hidden_size, c.intermediate_size), dt)
        up = self.param("up_proj", _init, (c.hidden_size, c.intermediate_size), dt)
        down = self.param("down_proj", _init, (c.intermediate_size, c.hidden_size), dt)
        return (jax.nn.silu(x @ gate) * (x @ up)) @ down


class DecoderLayer(nn.Module):
    cfg: NLDConfig

    @nn.compact
    def __call__(self, x, layer_kv, cos, sin, qscale, policy, lora):
        c = self.cfg
        dt = jnp.dtype(c.dtype)
        a, new_kv = Attention(c, name="self_attn")(
            RMSNorm(c.rms_norm_eps, dt, name="input_layernorm")(x), cos, sin, qscale, layer_kv, policy, lora
        )
        x = x + a
        x = x + MLP(c, name="mlp")(RMSNorm(c.rms_norm_eps, dt, name="post_attention_layernorm")(x))
        return x, new_kv


class NLDModel(nn.Module):
    """``(tokens, positions, policy, cache, lora) -> (logits float32 [B, Q, V], cache)``."""

    cfg: NLDConfig

    @nn.compact
    def __call__(
        self,
        tokens: Int[Array, "B Q"],
        positions: Int[Array, "B Q"],
        policy: AttentionPolicy,
        cache: KVCache | None = None,
        lora=0.0,
    ):
        c = self.cfg
        dt = jnp.dtype(c.dtype)
        embed = self.param("embed_tokens", _init, (c.vocab_size, c.hidden_size), dt)
        x = jnp.take(embed, tokens, axis=0)
        cos, sin = cos_sin(c, positions)
        qscale = llama4_query_scale(c, positions)
        layers = nn.scan(
            DecoderLayer,
            variable_axes={"params": 0},
            split_rngs={"params": True},
            in_axes=(0, nn.broadcast, nn.broadcast, nn.broadcast, nn.broadcast, nn.broadcast),
            length=c.num_layers,
        )(c, name="layers")
        layer_kv = None if cache is None else (cache.k, cache.v)
        x, new_kv = layers(x, layer_kv, cos, sin, qscale, policy, lora)
        x = RMSNorm(c.rms_norm_eps, dt, name="norm")(x)
        head = self.param("diffusion_head", _init, (c.hidden_size, c.vocab_size), dt)
        logits = jnp.einsum("bqh,hv->bqv", x, head, preferred_element_type=jnp.float32)
        new_cache = None if cache is None else cache.replace(k=new_kv[0], v=new_kv[1])
        return logits, new_cache
