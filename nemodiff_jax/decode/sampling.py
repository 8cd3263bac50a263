"""Token choice: greedy / temperature / top-k / top-p, and the confidence scores decoders rank by.

Every knob (temperature, top_k, top_p) is a traced scalar, so sweeping it never recompiles:
both the greedy and the sampled branch are computed and one is selected with ``jnp.where``.
At ``temperature == 0`` the choice is the greedy argmax. The mask token is never chosen
(docs/ALGORITHMS.md, "Block diffusion decoding" notes SGLang excludes it and reports no accuracy change; docs/DESIGN.md, "Numbers and dtypes").

Filtering order: mask token removed, logits divided by T, top-k (by rank, ties broken by
lower token id), then top-p on the renormalised top-k distribution (the smallest prefix of
the sorted distribution whose mass reaches ``top_p``; the best token is always kept).

Randomness is per row: decoders carry one key per batch row (:func:`row_keys`) and every draw
of row b uses only row b's key, so a sampled row never depends on the other rows of its batch.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, Int

NEG_INF = -jnp.inf


def mask_out(logits: Float[Array, "... V"], mask_token_id: int) -> Float[Array, "... V"]:
    """Logits with the mask token at -inf (it is never an output)."""
    vocab = logits.shape[-1]
    if 0 <= mask_token_id < vocab:
        logits = logits.at[..., mask_token_id].set(NEG_INF)
    return logits


def greedy(logits: Float[Array, "... V"], mask_token_id: int) -> Int[Array, "..."]:
    """Argmax over the vocabulary, mask token excluded; ``jnp.argmax``'s answer, ties to the
    lowest id and a NaN's first index included.

    Written as two fused reductions (the maximum, then the lowest id holding it) instead of
    ``jnp.argmax``, whose (value, index) pair reduction XLA on CPU runs 3-4x slower over a
    ``[B, 32, V]`` block of logits; the mask token is dropped inside the same fusion rather
    than by a scatter into a copy of the logits. The ids are float32 iotas, exact up to 2^24.
    """
    x = logits.astype(jnp.float32)
    vocab = x.shape[-1]
    if vocab >= 1 << 24:
        return jnp.argmax(mask_out(x, mask_token_id), axis=-1).astype(jnp.int32)
    ids = jax.lax.broadcasted_iota(jnp.float32, x.shape, x.ndim - 1)
    if 0 <= mask_token_id < vocab:
        x = jnp.where(ids == mask_token_id, NEG_INF, x)
    best = jnp.max(x, axis=-1, keepdims=True)
    hit = (x == best) | jnp.isnan(x)
    return jnp.min(jnp.where(hit, ids, float(vocab)), axis=-1).astype(jnp.int32)


def _ranks(x: Float[Array, "... V"]) -> Int[Array, "... V"]:
    """Rank of each entry in descending order (0 = largest), ties broken by lower index."""
    order = jnp.argsort(-x, axis=-1, stable=True)
    return jnp.argsort(order, axis=-1, stable=True).astype(jnp.int32)


def filter_logits(
    logits: Float[Array, "... V"], temperature, top_k, top_p, mask_token_id: int
) -> Float[Array, "... V"]:
    """``logits / T`` with -inf outside the top-k / top-p support and at the mask token.

    ``top_k <= 0`` and ``top_p >= 1`` switch the filters off. At ``T == 0`` the logits are
    left unscaled (callers take the greedy branch).
    """
    x = mask_out(logits.astype(jnp.float32), mask_token_id)
    t = jnp.asarray(temperature, jnp.float32)
    x = x / jnp.where(t > 0, t, 1.0)
    vocab = x.shape[-1]
    k = jnp.asarray(top_k, jnp.int32)
    k = jnp.where(k > 0, jnp.minimum(k, vocab), vocab)
    p = jnp.asarray(top_p, jnp.float32)

    def apply(x):
        ranks = _ranks(x)
        x = jnp.where(ranks < jnp.expand_dims(k, -1) if k.ndim else ranks < k, x, NEG_INF)
        # top-p on the (renormalised) top-k distribution, walked in rank order.
        order = jnp.argsort(-x, axis=-1, stable=True)
        sorted_probs = jnp.take_along_axis(jax.nn.softmax(x, axis=-1), order, axis=-1)
        mass_before = jnp.cumsum(sorted_probs, axis=-1) - sorted_probs
        pp = jnp.expand_dims(p, -1) if p.ndim else p
        keep_sorted = (mass_before < pp) | (pp >= 1.0)
        keep_sorted = keep_sorted.at[..., 0].set(True)
        keep = jnp.take_along_axis(keep_sorted, jnp.argsort(order, axis=-1, stable=True), axis=-1)
        return jnp.where(keep, x, NEG_INF)

    # The sorts are skipped at run time when both filters are off (the common greedy case).
    return jax.lax.cond(jnp.any(k < vocab) | jnp.any(p < 1.0), apply, lambda x: x, x)


def probs(logits: Float[Array, "... V"], temperature, top_k, top_p, mask_token_id: int) -> Float[Array, "... V"]:
    """The distribution :func:`choose` samples from; a one-hot of the greedy token at ``T == 0``."""
    sampled = jax.nn.softmax(filter_logits(logits, temperature, top_k, top_p, mask_token_id), axis=-1)
    onehot = jax.nn.one_hot(greedy(logits, mask_token_id), logits.shape[-1], dtype=jnp.float32)
    return jnp.where(jnp.asarray(temperature, jnp.float32) > 0, sampled, onehot)


def row_keys(key, batch: int):
    """One key per row: ``key`` itself if it already holds ``batch`` keys, else
    ``fold_in(key, b)`` for row b (a single key shared by the batch)."""
    if key.shape == (batch,):
        return key
    if key.shape != ():
        raise ValueError(f"expected a single key or {batch} row keys, got key shape {key.shape}")
    return jax.vmap(lambda b: jax.random.fold_in(key, b))(jnp.arange(batch, dtype=jnp.uint32))


def split_rows(keys, num: int = 2) -> tuple:
    """``jax.random.split`` applied to each row key: ``num`` arrays of row keys."""
    parts = jax.vmap(lambda k: jax.random.split(k, num))(keys)
    return tuple(parts[:, i] for i in range(num))


def fold_rows(keys, data):
    """``jax.random.fold_in(keys[b], data[b])`` per row; ``data`` is one int for all rows or a
    row-local counter ``[B]``."""
    data = jnp.broadcast_to(jnp.asarray(data, jnp.uint32), keys.shape)
    return jax.vmap(jax.random.fold_in)(keys, data)


def row_uniform(keys, shape: tuple[int, ...]) -> Float[Array, "..."]:
    """Uniforms in (0, 1) of shape ``[B, *shape]``, row b drawn from ``keys[b]`` only."""
    tiny = jnp.finfo(jnp.float32).tiny
    return jax.vmap(lambda k: jax.random.uniform(k, shape, jnp.float32, minval=tiny, maxval=1.0))(keys)


def choose(
    logits: Float[Array, "... V"], key, temperature, top_k, top_p, mask_token_id: int
) -> Int[Array, "..."]:
    """Greedy argmax at ``T == 0``, else a sample of ``probs`` (Gumbel-max).

    ``key``: one key for all rows, or row keys ``[B]`` (``logits`` ``[B, ..., V]``), row b
    sampled with ``key[b]`` alone.
    """
    t = jnp.asarray(temperature, jnp.float32)

    def sample(logits, key):
        f = filter_logits(logits, temperature, top_k, top_p, mask_token_id)
        if key.ndim == 1:
            return jax.vmap(lambda k, row: jax.random.categorical(k, row, axis=-1))(key, f).astype(jnp.int32)
        return jax.random.categorical(key, f, axis=-1).astype(jnp.int32)

    if t.ndim == 0:  # run only the branch that is needed (no sorting or noise when greedy)
        return jax.lax.cond(t > 0, sample, lambda logits, key: greedy(logits, mask_token_id), logits, key)
    return jnp.where(t > 0, sample(logits, key), greedy(logits, mask_token_id))


def confidence(logits: Float[Array, "... V"], tokens: Int[Array, "..."]) -> Float[Array, "..."]:
    """Softmax of the RAW logits (full vocabulary, T-independent) at ``tokens`` (docs/ALGORITHMS.md, "Block diffusion decoding")."""
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    return jnp.exp(jnp.take_along_axis(logp, tokens[..., None].astype(jnp.int32), axis=-1)[..., 0])


def entropy(logits: Float[Array, "... V"]) -> Float[Array, "..."]:
    """Entropy (nats) of the raw softmax; a per-position uncertainty for unmasking policies."""
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    p = jnp.exp(logp)
    return -jnp.sum(jnp.where(p > 0, p * logp, 0.0), axis=-1)


def margin(logits: Float[Array, "... V"]) -> Float[Array, "..."]:
    """Top-1 minus top-2 probability of the raw softmax."""
    p = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
    top2 = jax.lax.top_k(p, 2)[0]
    return top2[..., 0] - top2[..., 1]
