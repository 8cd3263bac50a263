"""Autoregressive decoding (NLD_SPEC 3.1) as one jitted ``lax.while_loop``.

Causal prefill of right-padded prompts, then one token per step per row: the token is
chosen from the last logits (greedy at T = 0, else temperature / top-k / top-p sampling),
written to the output, and fed through one causal forward at the row's own position.
A row that emits EOS (or reaches ``max_new_tokens``) is done: it keeps flowing through
the same shapes but its tokens, cache length and NFE stop changing. The loop ends when
every row is done.

NFE counts token-choosing steps, i.e. generated tokens, so the prefill is not counted
and TPF is 1 (NLD_SPEC 3.1). The forward that would follow a row's last token is skipped.

Thinking budget: with ``max_thinking_tokens >= 0`` and ``end_think_id >= 0``, a row that
has not emitted the end-think token by generated index ``max_thinking_tokens`` gets it forced
there (both traced; -1 switches it off).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import struct
from jaxtyping import Array, Int

from ..model import masks
from . import sampling
from ..model.forward import forward
from ..model.cache import KVCache
from ..model.config import NLDConfig
from .common import DecodeOutput, positions_from, prefill


@struct.dataclass
class _Carry:
    step: Int[Array, ""]
    tokens: Int[Array, "B N"]
    cache: KVCache
    done: jax.Array
    think_done: jax.Array
    count: Int[Array, "B"]
    key: jax.Array


def force_end_think(tok, index, think_done, max_thinking_tokens, end_think_id):
    """Replace ``tok`` by the end-think id where the budget is spent and it was not emitted yet."""
    budget = jnp.asarray(max_thinking_tokens, jnp.int32)
    end = jnp.asarray(end_think_id, jnp.int32)
    force = (budget >= 0) & (end >= 0) & (index >= budget) & ~think_done
    tok = jnp.where(force, end, tok)
    return tok, think_done | ((end >= 0) & (tok == end))


@functools.partial(jax.jit, static_argnames=("cfg", "out_len", "cache_len"))
def ar_decode(
    params,
    cfg: NLDConfig,
    prompt: Int[Array, "B P"],
    prompt_len: Int[Array, "B"],
    key,
    max_new_tokens,
    temperature,
    top_k,
    top_p,
    lora,
    max_thinking_tokens,
    end_think_id,
    *,
    out_len: int,
    cache_len: int,
) -> DecodeOutput:
    """AR decode of ``[B, P]`` right-padded prompts into a static ``[B, out_len]`` buffer.

    ``max_new_tokens`` (<= out_len), ``temperature``, ``top_k``, ``top_p``,
    ``max_thinking_tokens`` and ``end_think_id`` are traced. ``lora`` is accepted for a
    uniform signature and ignored: causal passes never use the draft LoRA (NLD_SPEC 3.4).
    stats: ``commit_pass`` int32[B, N] (1-based NFE index of each token, -1 past the end).
    """
    del lora
    b = prompt.shape[0]
    eos, pad = cfg.eos_token_id, cfg.pad_token_id
    limit = jnp.minimum(jnp.asarray(max_new_tokens, jnp.int32), out_len)
    cache = KVCache.init(cfg, b, cache_len, jnp.dtype(cfg.dtype))
    logits, cache = prefill(params, cfg, prompt, prompt_len, cache)

    def choose_and_write(c: _Carry, logits, key):
        tok = sampling.choose(logits, key, temperature, top_k, top_p, cfg.mask_token_id)
        tok, think_done = force_end_think(tok, c.count, c.think_done, max_thinking_tokens, end_think_id)
        live = ~c.done
        tokens = c.tokens.at[:, c.step].set(jnp.where(live, tok, c.tokens[:, c.step]))
        count = c.count + live.astype(jnp.int32)
        done = c.done | (tok == eos) | (count >= limit)
        think_done = jnp.where(live, think_done, c.think_done)
        return c.replace(tokens=tokens, count=count, done=done, think_done=think_done)

    def body(c: _Carry) -> _Carry:
        # Feed the last token (the choice that ends a row needs no forward after it).
        length = c.cache.length
        last = c.tokens[:, c.step - 1]
        step_logits, cache = forward(
            params, cfg, last[:, None], positions_from(length, 1), masks.causal(length, 1, b), c.cache, 0.0
        )
        cache = cache.with_length(jnp.where(c.done, length, length + 1))
        key, sub = sampling.split_rows(c.key)
        c = c.replace(cache=cache, key=key)
        return choose_and_write(c, step_logits[:, 0], sub).replace(step=c.step + 1)

    init = _Carry(
        step=jnp.int32(0),
        tokens=jnp.full((b, out_len), pad, jnp.int32),
        cache=cache,
        done=jnp.broadcast_to(limit <= 0, (b,)),
        think_done=jnp.zeros((b,), bool),
        count=jnp.zeros((b,), jnp.int32),
        key=sampling.row_keys(key, b),
    )
    key, sub = sampling.split_rows(init.key)
    c = choose_and_write(init.replace(key=key), logits, sub).replace(step=jnp.int32(1))
    c = jax.lax.while_loop(lambda c: (c.step < out_len) & jnp.any(~c.done), body, c)
    idx = jnp.arange(out_len, dtype=jnp.int32)[None, :]
    valid = idx < c.count[:, None]
    commit_pass = jnp.where(valid, idx + 1, -1)
    return DecodeOutput(
        tokens=jnp.where(valid, c.tokens, pad), num_tokens=c.count, nfe=c.count, stats={"commit_pass": commit_pass}
    )
