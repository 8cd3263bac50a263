"""What every decoding state machine shares: the output record, right-padded prompts,
the causal prefill into the static cache, and position helpers.

Prompts of different lengths sit right-padded in one ``[B, P]`` array. A causal prefill
writes the whole padded window; each row's cache length is then set to its own prompt
length, so the padding K/V are never visible and get overwritten by the next write.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import struct
from jaxtyping import Array, Float, Int

from ..model import masks
from . import sampling
from ..model.forward import forward
from ..model.cache import KVCache
from ..model.config import NLDConfig


@struct.dataclass
class DecodeOutput:
    """What a jitted decode returns. ``stats`` holds per-mode telemetry arrays.

    tokens: generated tokens ``[B, N]`` (N = the static output buffer), ``pad`` after the end.
    num_tokens: how many of them are real per row (cut after the first EOS, EOS included).
    nfe: forward passes per row, counted for the mode as in docs/ALGORITHMS.md, "Counting NFE and TPF".
    """

    tokens: Any  # int32[B, N]
    num_tokens: Any  # int32[B]
    nfe: Any  # int32[B]
    stats: Any  # dict[str, array]


def positions_from(start: Int[Array, "B"], width: int) -> Int[Array, "B Q"]:
    return start[:, None] + jnp.arange(width, dtype=jnp.int32)[None, :]


def prefill(
    params, cfg: NLDConfig, prompt: Int[Array, "B P"], prompt_len: Int[Array, "B"], cache: KVCache, lora=0.0
) -> tuple[Float[Array, "B V"], KVCache]:
    """Causal prefill of right-padded prompts; returns each row's last-prompt-token logits."""
    b, p = prompt.shape
    zero = jnp.zeros((b,), jnp.int32)
    logits, cache = forward(params, cfg, prompt, positions_from(zero, p), masks.causal(zero, p, b), cache, lora)
    last = jnp.take_along_axis(logits, (prompt_len - 1)[:, None, None], axis=1)[:, 0]
    return last, cache.with_length(prompt_len)


def pad_prompts(prompts: list[list[int]], pad_id: int, bucket: int = 16) -> tuple[jax.Array, jax.Array]:
    """Right-pad token lists into ``[B, P]`` with P rounded up to a multiple of ``bucket``."""
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("every prompt must hold at least one token")
    longest = max(len(p) for p in prompts)
    width = -(-longest // bucket) * bucket
    arr = [list(p) + [pad_id] * (width - len(p)) for p in prompts]
    return jnp.asarray(arr, jnp.int32), jnp.asarray([len(p) for p in prompts], jnp.int32)


def _bcast(x, ndim: int):
    """A per-row ``[B]`` knob shaped to broadcast against an array of ``ndim`` dims."""
    return jnp.reshape(x, x.shape + (1,) * (ndim - 1))


def row_probs(logits: Float[Array, "B *W V"], kn, mask_token_id: int) -> Float[Array, "B *W V"]:
    """Per-row sampling distributions (one-hot of the greedy token where a row's T == 0)."""
    nd = logits.ndim
    return sampling.probs(logits, _bcast(kn.temperature, nd), _bcast(kn.top_k, nd - 1),
                          _bcast(kn.top_p, nd - 1), mask_token_id)


def choose(logits: Float[Array, "B *W V"], keys, kn, mask_token_id: int) -> Int[Array, "B *W"]:
    """Per-row token choice: argmax where T == 0, else a sample with the row's own key.

    When every row is greedy (the common case) a ``lax.cond`` takes the argmax alone at run
    time: no filtering, no noise. Temperature stays traced, so this never recompiles."""
    nd = logits.ndim

    def greedy(logits):
        return sampling.greedy(logits, mask_token_id)

    def sampled(logits):
        f = sampling.filter_logits(logits, _bcast(kn.temperature, nd), _bcast(kn.top_k, nd - 1),
                                   _bcast(kn.top_p, nd - 1), mask_token_id)
        s = jax.vmap(lambda k, row: jax.random.categorical(k, row, axis=-1))(keys, f).astype(jnp.int32)
        return jnp.where(_bcast(kn.temperature, nd - 1) > 0, s, greedy(logits))

    return jax.lax.cond(kn.all_greedy, greedy, sampled, logits)


def prefilled(params, cfg: NLDConfig, prompt: Int[Array, "B P"], prompt_len: Int[Array, "B"], cache_len: int):
    """A fresh cache holding the prompts, and each row's last-prompt-token logits.

    The one call site of :func:`prefill` for the AR, diffusion and linear modes, so a better
    prefill (chunked, logits at the last position only) drops in here."""
    cache = KVCache.init(cfg, prompt.shape[0], cache_len, jnp.dtype(cfg.dtype))
    return prefill(params, cfg, prompt, prompt_len, cache)


def select_keys(flags, new, old):
    """Per-row ``where`` over PRNG key arrays (through their raw data)."""
    nd_, od = jax.random.key_data(new), jax.random.key_data(old)
    data = jnp.where(_bcast(flags, nd_.ndim), nd_, od)
    return jax.random.wrap_key_data(data, impl=jax.random.key_impl(old))
