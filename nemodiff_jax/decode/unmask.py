"""Unmasking policies: which masked positions of a block a diffusion step commits.

Every policy is a pure function of ONE signature, for one row (``jax.vmap`` it over rows)::

    policy(logits f32[L, V], candidates i32[L], masked bool[L], key, params: UnmaskParams) -> bool[L]

``logits`` are the RAW logits of the bidirectional pass, ``candidates`` the tokens that
would be written (argmax or a sample), ``masked`` which positions still hold the mask token.
A policy ranks the masked positions by a score and commits a prefix of that ranking, so
every policy commits at least one masked position whenever one is left, and never a
position that is not masked. The numeric knobs in :class:`UnmaskParams` are traced.

Registry (:data:`POLICIES`, :func:`get`):

* ``threshold``: confidence (raw softmax at the candidate); the best one plus every other
  with confidence >= ``threshold`` (NLD_SPEC 3.2, HF ``threshold=tau``).
* ``quota`` (aliases ``low_confidence``, ``topk``): the ``quota`` most confident (NLD_SPEC 3.2,
  HF ``threshold=None``; :func:`quota_schedule` gives the per-step quotas).
* ``margin``: the ``quota`` positions with the largest top-1 minus top-2 probability (3.7).
* ``entropy``: the ``quota`` positions with the lowest entropy (3.7 negative entropy).
* ``leftmost``: the ``quota`` leftmost masked positions (vLLM ``leftmost``, 3.7).
* ``random``: ``quota`` masked positions uniformly at random (3.7 ``random``).
* ``eb`` (EB-sampler): in confidence order, commit while the cumulative entropy of the
  committed set stays <= ``gamma``; at least one.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
from flax import struct
from jaxtyping import Array, ArrayLike, Bool, Float, Int

from . import sampling


@struct.dataclass
class UnmaskParams:
    """Traced policy knobs. ``quota``: how many a ranking policy commits this step (>= 1 is enforced)."""

    threshold: Float[Array, "*b"] = 0.9
    gamma: Float[Array, "*b"] = 1.0
    quota: Int[Array, "*b"] = 1

    @staticmethod
    def make(threshold=0.9, gamma=1.0, quota=1) -> "UnmaskParams":
        return UnmaskParams(
            jnp.asarray(threshold, jnp.float32), jnp.asarray(gamma, jnp.float32), jnp.asarray(quota, jnp.int32)
        )


Policy = Callable[..., Bool[Array, "L"]]


def _rank(score: Float[Array, "L"], masked: Bool[Array, "L"]) -> Int[Array, "L"]:
    """Rank among positions (0 = best); masked positions first, ties to the left."""
    s = jnp.where(masked, score.astype(jnp.float32), -jnp.inf)
    order = jnp.lexsort((jnp.arange(s.shape[0]), -s, ~masked))  # last key is primary
    return jnp.argsort(order).astype(jnp.int32)


def _top(score, masked, count) -> Bool[Array, "L"]:
    """The ``count`` (at least one) best-scoring masked positions."""
    count = jnp.maximum(jnp.asarray(count, jnp.int32), 1)
    return masked & (_rank(score, masked) < count)


def threshold(logits, candidates, masked, key, params: UnmaskParams) -> Bool[Array, "L"]:
    del key
    conf = sampling.confidence(logits, candidates)
    return masked & ((_rank(conf, masked) == 0) | (conf >= params.threshold))


def quota(logits, candidates, masked, key, params: UnmaskParams) -> Bool[Array, "L"]:
    del key
    return _top(sampling.confidence(logits, candidates), masked, params.quota)


def margin(logits, candidates, masked, key, params: UnmaskParams) -> Bool[Array, "L"]:
    del key, candidates
    return _top(sampling.margin(logits), masked, params.quota)


def entropy(logits, candidates, masked, key, params: UnmaskParams) -> Bool[Array, "L"]:
    del key, candidates
    return _top(-sampling.entropy(logits), masked, params.quota)


def leftmost(logits, candidates, masked, key, params: UnmaskParams) -> Bool[Array, "L"]:
    del key, candidates, logits
    return _top(-jnp.arange(masked.shape[0], dtype=jnp.float32), masked, params.quota)


def random(logits, candidates, masked, key, params: UnmaskParams) -> Bool[Array, "L"]:
    del candidates, logits
    return _top(jax.random.uniform(key, masked.shape), masked, params.quota)


def eb(logits, candidates, masked, key, params: UnmaskParams) -> Bool[Array, "L"]:
    del key
    conf = sampling.confidence(logits, candidates)
    ent = jnp.where(masked, sampling.entropy(logits), 0.0)
    rank = _rank(conf, masked)
    order = jnp.argsort(rank)
    cum = jnp.cumsum(ent[order])  # non-decreasing along the ranking
    count = jnp.sum((cum <= params.gamma) & masked[order])
    return masked & (rank < jnp.maximum(count, 1))


POLICIES: dict[str, Policy] = {
    "threshold": threshold,
    "quota": quota,
    "low_confidence": quota,
    "topk": quota,
    "margin": margin,
    "entropy": entropy,
    "leftmost": leftmost,
    "random": random,
    "eb": eb,
}


def get(name: str) -> Policy:
    """The policy registered under ``name``, or a ValueError naming the choices."""
    try:
        return POLICIES[name]
    except KeyError:
        raise ValueError(f"unknown unmask policy {name!r}; expected one of {sorted(POLICIES)}") from None


def quota_schedule(num_masked: Int[ArrayLike, "..."], steps: int) -> Int[Array, "... S"]:
    """Per-step commit counts: ``num_masked`` split evenly over ``steps``, remainder first (NLD_SPEC 3.2)."""
    n = jnp.asarray(num_masked, jnp.int32)[..., None]
    s = jnp.arange(steps, dtype=jnp.int32)
    return n // steps + (s < n % steps).astype(jnp.int32)


def quota_at(num_masked: Int[ArrayLike, "..."], steps: int, step: Int[ArrayLike, "..."]) -> Int[Array, "..."]:
    """Element ``step`` of :func:`quota_schedule` without building it."""
    n = jnp.asarray(num_masked, jnp.int32)
    return n // steps + (jnp.asarray(step, jnp.int32) < n % steps).astype(jnp.int32)
