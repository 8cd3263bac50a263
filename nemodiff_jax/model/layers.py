"""The NLD network in flax.linen: Ministral3 decoder layers plus the untied diffusion head.

The model knows nothing of decoding modes. It takes tokens, their absolute positions, an
attention policy (:mod:`masks`), an optional static KV cache (:mod:`cache`) and a traced
LoRA switch, and returns float32 logits and the cache with the window's K/V written.
Layers are scanned (parameters stacked on a leading layer axis) so deep models compile once, or,
with one parameter subtree per layer, run in a Python loop so a decode step copies no weights.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import flax.linen as nn
from jaxtyping import Array, Float, Int

from .attention import attend
from .cache import KVCache, write_layer, write_stacked
from .config import NLDConfig
from .masks import AttentionPolicy
from .rope import apply_rope, cos_sin, llama4_query_scale
from .quantize import dequant
from .sharding import HIDDEN_AXES, constrain

_init = nn.initializers.normal(stddev=0.02)


def lora_known_off(lora) -> bool:
    """Whether a LoRA switch is off at trace time: None, or a Python 0 / 0.0 / False."""
    return lora is None or (isinstance(lora, (int, float)) and lora == 0)


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
    def __call__(self, x, cos, sin, qscale, kv, layer, policy: AttentionPolicy, lora):
        c = self.cfg
        dt = jnp.dtype(c.dtype)
        h, nq, nk, d = c.hidden_size, c.num_heads, c.num_kv_heads, c.head_dim
        # dequant: int8 kernels (quantize.py) back in the compute dtype; plain arrays pass through
        wq = dequant(self.param("q_proj", _init, (h, nq, d), dt), dt)
        wk = dequant(self.param("k_proj", _init, (h, nk, d), dt), dt)
        wv = dequant(self.param("v_proj", _init, (h, nk, d), dt), dt)
        wo = dequant(self.param("o_proj", _init, (nq, d, h), dt), dt)
        q = jnp.einsum("bqh,hnd->bqnd", x, wq)
        k = jnp.einsum("bqh,hnd->bqnd", x, wk)
        v = jnp.einsum("bqh,hnd->bqnd", x, wv)
        q = apply_rope(q, cos, sin)
        k = apply_rope(k, cos, sin)
        q = (q.astype(jnp.float32) * qscale[:, :, None, None]).astype(q.dtype)
        k_win, v_win = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)  # [B, K, Q, D]
        if kv is None:  # no cache: the window is the whole key set
            k_all, v_all, new_kv = k_win, v_win, None
        elif layer is None:  # this layer's own arrays (a per-layer cache): written and read whole
            k_all = write_layer(kv[0], k_win, policy.prefix_len)
            v_all = write_layer(kv[1], v_win, policy.prefix_len)
            new_kv = (k_all, v_all)
        else:
            # Write the window into the whole stacked cache (in place: the cache is the scan's
            # carry, not a scanned input with a fresh stacked output), then read this layer.
            ck = write_stacked(kv[0], k_win, layer, policy.prefix_len)
            cv = write_stacked(kv[1], v_win, layer, policy.prefix_len)
            k_all = jax.lax.dynamic_index_in_dim(ck, layer, axis=0, keepdims=False)
            v_all = jax.lax.dynamic_index_in_dim(cv, layer, axis=0, keepdims=False)
            new_kv = (ck, cv)
        out = attend(q.transpose(0, 2, 1, 3), k_all, v_all, policy, d**-0.5, c.attention_impl)
        # [B, Q, H*D] @ [H*D, hidden] as a plain matmul: with the einsum over (n, d) XLA chose to
        # transpose o_proj instead of the (small) activations, a copy of the weight per forward.
        flat = out.transpose(0, 2, 1, 3).reshape(*x.shape[:2], nq * d)
        y = flat @ wo.reshape(nq * d, h)
        if c.lora_rank:
            lora_a = self.param("lora_a", _init, (nq * d, c.lora_rank), dt)
            lora_b = self.param("lora_b", nn.initializers.zeros, (c.lora_rank, h), dt)
        # A switch known off at trace time (AR steps, prefill, verify passes: a Python 0, or
        # the None that forward() passes through its jit for one) emits no adapter matmuls.
        if c.lora_rank and not lora_known_off(lora):
            delta = (flat @ lora_a) @ lora_b
            scale = jnp.asarray(lora, jnp.float32) * c.lora_scale
            if scale.ndim == 1:  # a per-row switch [B]: rows of one forward may differ
                scale = scale[:, None, None]
            elif scale.ndim == 2:  # per token [B, Q]: a prefill and a draft in one window
                scale = scale[:, :, None]
            y = y + scale.astype(y.dtype) * delta
        return y, new_kv


class MLP(nn.Module):
    cfg: NLDConfig

    @nn.compact
    def __call__(self, x):
        c = self.cfg
        dt = jnp.dtype(c.dtype)
        gate = dequant(self.param("gate_proj", _init, (c.hidden_size, c.intermediate_size), dt), dt)
        up = dequant(self.param("up_proj", _init, (c.hidden_size, c.intermediate_size), dt), dt)
        down = dequant(self.param("down_proj", _init, (c.intermediate_size, c.hidden_size), dt), dt)
        return (jax.nn.silu(x @ gate) * (x @ up)) @ down


class DecoderLayer(nn.Module):
    cfg: NLDConfig

    @nn.compact
    def __call__(self, carry, layer, cos, sin, qscale, policy, lora):
        """``carry = (x, kv)``: the residual stream and the whole stacked cache with ``layer`` its
        index, or this layer's own K/V arrays with ``layer=None``, or None (no cache)."""
        x, kv = carry
        c = self.cfg
        dt = jnp.dtype(c.dtype)
        a, new_kv = Attention(c, name="self_attn")(
            RMSNorm(c.rms_norm_eps, dt, name="input_layernorm")(x), cos, sin, qscale, kv, layer, policy, lora
        )
        x = x + a
        x = x + MLP(c, name="mlp")(RMSNorm(c.rms_norm_eps, dt, name="post_attention_layernorm")(x))
        return (x, new_kv), None


def final_logits(params, cfg: NLDConfig, hidden: Float[Array, "... H"]) -> Float[Array, "... V"]:
    """The final norm and the diffusion head on hidden states taken before the norm.

    Exactly what :class:`NLDModel` does after its last layer, for hidden states that a
    ``head=False`` call returned (any leading shape): callers gather the few rows they need
    first, so the ``[B, Q, V]`` logits of a whole window are never built.
    """
    dt = jnp.dtype(cfg.dtype)
    x = RMSNorm(cfg.rms_norm_eps, dt).apply({"params": params["norm"]}, hidden)
    return jnp.einsum("...h,hv->...v", x, dequant(params["diffusion_head"], dt), preferred_element_type=jnp.float32)


def gather_rows(x: Float[Array, "B Q H"], idx) -> jax.Array:
    """``x[b, idx[b]]`` for ``idx`` int ``[B]`` (-> ``[B, H]``) or ``[B, K]`` (-> ``[B, K, H]``)."""
    idx = jnp.asarray(idx, jnp.int32)
    flat = idx if idx.ndim == 2 else idx[:, None]
    out = jnp.take_along_axis(x, flat[:, :, None], axis=1)
    return out if idx.ndim == 2 else out[:, 0]


class NLDModel(nn.Module):
    """``(tokens, positions, policy, cache, lora) -> (logits float32 [B, Q, V], cache)``.

    ``logits_at`` (int ``[B]`` or ``[B, K]`` window indices): logits only at those rows
    (``[B, V]`` or ``[B, K, V]``). ``head=False``: no norm or head at all; the first result is
    the last layer's hidden states ``[B, Q, H]`` (see :func:`final_logits`).

    ``scan_layers``: the layers' weights stacked under ``layers`` and run by one ``nn.scan``
    (training, one compiled layer body), or one subtree per layer, ``layers_0 ...``, run in a
    Python loop (decoding: a scan slices each layer's weights out of the stack, and XLA copies
    those slices every forward; :mod:`.layout` converts between the two).
    """

    cfg: NLDConfig
    scan_layers: bool = True

    @nn.compact
    def __call__(
        self,
        tokens: Int[Array, "B Q"],
        positions: Int[Array, "B Q"],
        policy: AttentionPolicy,
        cache: KVCache | None = None,
        lora=0.0,
        logits_at=None,
        head: bool = True,
    ):
        c = self.cfg
        dt = jnp.dtype(c.dtype)
        embed = self.param("embed_tokens", _init, (c.vocab_size, c.hidden_size), dt)
        x = constrain(jnp.take(embed, tokens, axis=0), HIDDEN_AXES)  # rows over "data" under a mesh
        cos, sin = cos_sin(c, positions)
        qscale = llama4_query_scale(c, positions)
        kv = None if cache is None else (cache.k, cache.v)
        if self.scan_layers and cache is not None and cache.per_layer:
            raise ValueError("a per-layer KV cache needs per-layer parameters (nemodiff_jax.model.layout); "
                             "build the cache with KVCache.for_params(params, ...)")
        if self.scan_layers:
            layers = nn.scan(
                DecoderLayer,
                variable_axes={"params": 0},
                split_rngs={"params": True},
                in_axes=(0, nn.broadcast, nn.broadcast, nn.broadcast, nn.broadcast, nn.broadcast),
                length=c.num_layers,
            )(c, name="layers")
            (x, new_kv), _ = layers((x, kv), jnp.arange(c.num_layers, dtype=jnp.int32), cos, sin, qscale, policy, lora)
        elif cache is not None and cache.per_layer:  # per-layer weights and cache: nothing is sliced
            ks, vs = [], []
            for i in range(c.num_layers):
                (x, (k_i, v_i)), _ = DecoderLayer(c, name=f"layers_{i}")(
                    (x, (cache.k[i], cache.v[i])), None, cos, sin, qscale, policy, lora)
                ks.append(k_i)
                vs.append(v_i)
            new_kv = (tuple(ks), tuple(vs))
        else:  # per-layer weights (layout.py), a stacked cache or none: no weight is sliced
            carry = (x, kv)
            for i in range(c.num_layers):
                carry, _ = DecoderLayer(c, name=f"layers_{i}")(carry, i, cos, sin, qscale, policy, lora)
            x, new_kv = carry
        new_cache = None if cache is None else cache.replace(k=new_kv[0], v=new_kv[1])
        if not head:
            return x, new_cache
        if logits_at is not None:
            x = gather_rows(x, logits_at)
        x = RMSNorm(c.rms_norm_eps, dt, name="norm")(x)
        head_w = dequant(self.param("diffusion_head", _init, (c.hidden_size, c.vocab_size), dt), dt)
        logits = jnp.einsum("...h,hv->...v", x, head_w, preferred_element_type=jnp.float32)
        return logits, new_cache
