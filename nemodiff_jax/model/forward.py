"""The model's entry points: :class:`Model`, :func:`init_params`, :func:`forward`,
:func:`forward_logits` (``load`` lives in :mod:`nemodiff_jax.io.checkpoint`).

``forward`` is the one jitted forward pass that every mode shares: the policy carries the
per-mode structure, the config is static, everything else is traced.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int

from . import masks
from .cache import KVCache
from .config import NLDConfig
from .masks import AttentionPolicy
from .layers import NLDModel, lora_known_off
from .layers import final_logits as _final_logits
from .layout import is_stacked, unstack_layers

MODES = ("causal", "bidirectional")


@dataclasses.dataclass(frozen=True, eq=False)
class Model:
    """A config, its parameter tree, and the tokenizer when the checkpoint has one."""

    config: NLDConfig
    params: Any
    tokenizer: Any = None
    path: str | None = None

    def replace(self, **changes) -> "Model":
        return dataclasses.replace(self, **changes)

    @property
    def has_lora(self) -> bool:
        return self.config.lora_rank > 0


def init_params(cfg: NLDConfig, seed: int = 0, *, stacked: bool = True):
    """Random parameters (normal std 0.02, norms at one, LoRA B at zero), stacked or per layer
    (:mod:`.layout`; the same values either way)."""
    params = _init(cfg, jax.random.key(seed))
    return params if stacked else unstack_layers(params, consume=True)


def abstract_params(cfg: NLDConfig, *, stacked: bool = True):
    """Shapes and dtypes of the parameter tree without allocating it (stacked, or per layer as
    ``load(..., stacked=False)`` gives it)."""
    params = jax.eval_shape(lambda: _init(cfg, jax.random.key(0)))
    return params if stacked else unstack_layers(params)


def _init(cfg: NLDConfig, key):
    tokens = jnp.zeros((1, 1), jnp.int32)
    return NLDModel(cfg).init(key, tokens, tokens, masks.causal(jnp.zeros((1,), jnp.int32), 1, 1))["params"]


def count_params(params) -> int:
    return int(sum(np.prod(x.shape) for x in jax.tree.leaves(params)))


def forward(
    params,
    cfg: NLDConfig,
    tokens: Int[Array, "B Q"],
    positions: Int[Array, "B Q"],
    policy: AttentionPolicy,
    cache: KVCache | None = None,
    lora=0.0,
    *,
    logits_at=None,
) -> tuple[Float[Array, "B ..."], KVCache | None]:
    """The shared forward: float32 logits and the cache with the window written at ``prefix_len``.

    ``params`` in either layout of :mod:`.layout` (stacked: one scanned layer; per layer: no
    weight is sliced, faster decode steps on CPU). ``lora``: the draft LoRA's switch, a scalar,
    ``[B]`` or ``[B, Q]``; a Python 0 (or False, or None) is off at trace time (no adapter
    matmuls), anything else is traced.

    Logits ``[B, Q, V]`` of the whole window by default; with ``logits_at`` (int ``[B]`` or
    ``[B, K]`` window indices) only those rows' logits, ``[B, V]`` or ``[B, K, V]``, so the
    norm and the head run on ``B`` (or ``B x K``) hidden states instead of ``B x Q``.
    """
    return _forward(params, cfg, tokens, positions, policy, cache, _switch(lora), logits_at=logits_at)


def forward_hidden(
    params,
    cfg: NLDConfig,
    tokens: Int[Array, "B Q"],
    positions: Int[Array, "B Q"],
    policy: AttentionPolicy,
    cache: KVCache | None = None,
    lora=0.0,
) -> tuple[Float[Array, "B Q H"], KVCache | None]:
    """The forward without the final norm and head: the last layer's hidden states and the cache.

    :func:`final_logits` turns (gathered) hidden states into the logits ``forward`` gives.
    """
    return _forward_hidden(params, cfg, tokens, positions, policy, cache, _switch(lora))


def _switch(lora):
    """The LoRA switch as it crosses the jit boundary. A Python 0 would arrive traced, and the
    layers would emit the adapter matmuls of every AR step, prefill and verify pass only to scale
    them by zero; None is an empty pytree, so "off" stays known at trace time."""
    return None if lora_known_off(lora) else lora


@functools.partial(jax.jit, static_argnames=("cfg",))
def _forward(params, cfg: NLDConfig, tokens, positions, policy, cache, lora, *, logits_at=None):
    return NLDModel(cfg, is_stacked(params)).apply({"params": params}, tokens, positions, policy, cache, lora,
                                                   logits_at=logits_at)


@functools.partial(jax.jit, static_argnames=("cfg",))
def _forward_hidden(params, cfg: NLDConfig, tokens, positions, policy, cache, lora):
    return NLDModel(cfg, is_stacked(params)).apply({"params": params}, tokens, positions, policy, cache, lora,
                                                   head=False)


def final_logits(params, cfg: NLDConfig, hidden) -> jax.Array:
    """Final norm + head on hidden states from :func:`forward_hidden` (any leading shape)."""
    return _final_logits(params, cfg, hidden)


def validate_ids(ids, cfg: NLDConfig) -> jnp.ndarray:
    """An int32 ``[B, L]`` array of in-vocabulary ids, or a ValueError naming the problem."""
    if isinstance(ids, (list, tuple)):
        ids = np.asarray(ids)
    if not hasattr(ids, "dtype") or not jnp.issubdtype(ids.dtype, jnp.integer) or ids.dtype == bool:
        raise ValueError(f"ids must be an integer array, got dtype {getattr(ids, 'dtype', type(ids))}")
    if ids.ndim != 2:
        raise ValueError(f"ids must have rank 2 [batch, length], got shape {tuple(ids.shape)}")
    if ids.shape[1] == 0:
        raise ValueError("ids must hold at least one token per row")
    if not isinstance(ids, jax.core.Tracer):
        arr = np.asarray(ids)
        lo, hi = int(arr.min()), int(arr.max())
        if lo < 0 or hi >= cfg.vocab_size:
            raise ValueError(f"ids outside the vocabulary [0, {cfg.vocab_size}): min {lo}, max {hi}")
    limit = cfg.max_position_embeddings
    if ids.shape[1] > limit:
        raise ValueError(f"sequence of {ids.shape[1]} tokens is longer than the maximum position {limit}")
    return jnp.asarray(ids, jnp.int32)


def forward_logits(model: Model, ids, mode: str = "causal", lora: bool = False) -> Float[Array, "B L V"]:
    """Logits ``[B, L, V]`` of whole sequences without a cache, under a causal or bidirectional mask."""
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; expected one of {MODES}")
    if lora and not model.has_lora:
        raise ValueError("lora=True but the model has no draft LoRA (config.lora_rank == 0)")
    ids = validate_ids(ids, model.config)
    b, length = ids.shape
    positions = jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), (b, length))
    zero = jnp.zeros((b,), jnp.int32)
    policy = masks.causal(zero, length, b) if mode == "causal" else masks.bidirectional(zero, length, b)
    from .sharding import mesh_of, place_rows, use_mesh

    mesh = mesh_of(model.params)
    with use_mesh(mesh):  # a sharded model: rows over "data"
        ids, positions = place_rows(ids, mesh), place_rows(positions, mesh)
        logits, _ = forward(model.params, model.config, ids, positions, policy, None, jnp.float32(lora))
    return logits

