"""What every decoding state machine shares: the output record, right-padded prompts,
the causal prefill into the static cache, and position helpers.

Prompts of different lengths sit right-padded in one ``[B, P]`` array. A causal prefill
writes the whole padded window; each row's cache length is then set to its own prompt
length, so the padding K/V are never visible and get overwritten by the next write.

The prefill fits real sizes (docs/MEMORY.md): it runs the prompt in chunks of a static
length (a ``lax.fori_loop``; chunk ``i`` is a causal window at offset ``min(i * chunk, P - chunk)``
over the K/V the earlier chunks wrote, so the attention scores are ``[B, H, chunk, T]``, not
``[B, H, P, T]``), and it computes logits only at each row's last prompt position: the final
norm and head run on ``B`` hidden states, never on ``[B, P, V]``.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import struct
from jaxtyping import Array, Float, Int

from ..model import masks
from . import sampling
from ..model.cache import KVCache
from ..model.config import NLDConfig
from ..model.forward import final_logits, forward, forward_hidden
from ..model.layers import lora_known_off


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


PREFILL_CHUNK = 512
HALF_MIN = 32  # prompts up to this width always run as one window
# Budget of one chunk's float32 attention scores [B, Hq, chunk, T] (XLA keeps about three such
# buffers alive: scores, their exponentials, the probabilities).
PREFILL_SCORE_BYTES = 2**29


def auto_chunk(cfg: NLDConfig, batch: int, cache_len: int, chunk: int = PREFILL_CHUNK,
               score_bytes: int = PREFILL_SCORE_BYTES) -> int:
    """The largest power of two <= ``chunk`` whose float32 scores fit ``score_bytes`` (at least 16)."""
    per_query = 4 * batch * cfg.num_heads * cache_len
    c = 16
    while c * 2 <= chunk and c * 2 * per_query <= score_bytes:
        c *= 2
    return min(c, chunk)


def chunk_starts(width: int, chunk: int) -> tuple[int, int]:
    """``(chunk length, number of chunks)`` for a ``width``-token prompt.

    The chunk is ``min(chunk, width)``; when it does not divide ``width`` the last chunk starts
    at ``width - chunk`` and recomputes a few positions (same tokens, same prefix: the same
    K/V), so nothing is written past the prompt and no padding is needed.
    """
    if chunk < 1:
        raise ValueError(f"prefill chunk must be >= 1, got {chunk}")
    c = min(chunk, width)
    return c, -(-width // c)


def prefill_chunk(cfg: NLDConfig, batch: int, width: int, cache_len: int, chunk: int | None = None) -> int:
    """The prefill's static chunk length for a ``width``-token prompt: ``chunk`` (None =
    :func:`auto_chunk`), at most half the padded width (not below :data:`HALF_MIN`) so that rows
    shorter than half their bucket (a slot refill pads to the queue's widest prompt) skip the
    chunks past their end, and at most ``width``."""
    if chunk is None:
        chunk = auto_chunk(cfg, batch, cache_len)
    return min(chunk, max(HALF_MIN, width // 2), width)


def prefill(
    params,
    cfg: NLDConfig,
    prompt: Int[Array, "B P"],
    prompt_len: Int[Array, "B"],
    cache: KVCache,
    lora=0.0,
    *,
    chunk: int | None = None,
) -> tuple[Float[Array, "B V"], KVCache]:
    """Causal prefill of right-padded prompts; returns each row's last-prompt-token logits.

    Runs in chunks of ``chunk`` tokens (static; None = :func:`auto_chunk`: up to
    :data:`PREFILL_CHUNK`, smaller where a chunk's attention scores would pass
    :data:`PREFILL_SCORE_BYTES`; and at most half the padded width), only as many chunks as the
    longest row needs; the cache gets the K/V of every slot those chunks cover and the length
    ``prompt_len``. Only the rows' last hidden states see the norm and the head.
    """
    b, p = prompt.shape
    c, n = chunk_starts(p, prefill_chunk(cfg, b, p, cache.max_len, chunk))
    last = jnp.asarray(prompt_len, jnp.int32) - 1

    def run_chunk(start, cache):
        tokens = jax.lax.dynamic_slice_in_dim(prompt, start, c, axis=1)
        s = jnp.broadcast_to(start, (b,)).astype(jnp.int32)
        hidden, cache = forward_hidden(params, cfg, tokens, positions_from(s, c), masks.causal(s, c, b), cache, lora)
        h = jnp.take_along_axis(hidden, jnp.clip(last - start, 0, c - 1)[:, None, None], axis=1)[:, 0]
        mine = (last >= start) & (last < start + c)
        return h, mine, cache

    if n == 1:
        h, _, cache = run_chunk(jnp.int32(0), cache)
    else:

        def body(i, carry):
            h_keep, cache = carry
            start = jnp.minimum(i * c, p - c).astype(jnp.int32)
            h, mine, cache = run_chunk(start, cache)
            return jnp.where(mine[:, None], h, h_keep), cache

        h0 = jnp.zeros((b, cfg.hidden_size), jnp.dtype(cfg.dtype))
        # Only the chunks that hold some row's prompt run (a traced trip count): the slots past
        # them keep whatever they held, invisible behind each row's cache length.
        needed = jnp.minimum(n, (jnp.max(last) + c) // c).astype(jnp.int32)
        h, cache = jax.lax.fori_loop(0, needed, body, (h0, cache))
    return final_logits(params, cfg, h), cache.with_length(prompt_len)


def prefill_with_window(
    params,
    cfg: NLDConfig,
    prompt: Int[Array, "B P"],
    prompt_len: Int[Array, "B"],
    cache: KVCache,
    window: Int[Array, "B W"],
    *,
    lora=0.0,
    chunk: int | None = None,
) -> tuple[Float[Array, "B V"], Float[Array, "B W V"], KVCache]:
    """``[prompt, window]`` under ``masks.mixed``: the prefill and one bidirectional pass over the
    window right after each row's prompt, in ONE forward where the prompt fits one prefill chunk
    (quadratic speculation's bootstrap, linear speculation's start with its first draft).

    The prompt tokens are causal (they never see the window, so their K/V are the plain
    prefill's); the window's tokens see the whole prompt and each other. Each row's last
    ``t = min(len, chunk)`` prompt tokens share the forward with the window; earlier prompt
    tokens, if any, go through :func:`prefill` first. ``lora`` (a scalar or ``[B]``) is the
    draft LoRA of the window only: prompt tokens always get the base model. Returns the last
    prompt logits, the window logits and the cache with the length ``prompt_len`` (the window's
    K/V lie past it). Writes cache slots up to ``max(P, len + chunk) + W``.
    """
    b, p = prompt.shape
    w = window.shape[1]
    tail = prefill_chunk(cfg, b, p, cache.max_len, chunk)
    prompt_len = jnp.asarray(prompt_len, jnp.int32)
    t = jnp.minimum(prompt_len, tail)
    head = prompt_len - t
    if p > tail:  # static: shorter prompts are all tail
        _, cache = prefill(params, cfg, prompt, head, cache, chunk=chunk)
    width = tail + w
    col = jnp.arange(width, dtype=jnp.int32)[None, :]
    src = jnp.take_along_axis(prompt, jnp.clip(head[:, None] + col, 0, p - 1), axis=1)
    win = jnp.take_along_axis(window, jnp.clip(col - t[:, None], 0, w - 1), axis=1)
    in_prompt, in_window = col < t[:, None], col < (t + w)[:, None]
    tokens = jnp.where(in_prompt, src, jnp.where(in_window, win, cfg.pad_token_id))
    if lora_known_off(lora):
        scale = 0  # known off: no adapter matmuls
    else:
        scale = jnp.where(in_prompt, 0.0, jnp.broadcast_to(jnp.asarray(lora, jnp.float32), (b,))[:, None])
    at = t[:, None] - 1 + jnp.arange(w + 1, dtype=jnp.int32)[None, :]
    logits, cache = forward(params, cfg, tokens, positions_from(head, width), masks.mixed(head, t, t + w, b),
                            cache, scale, logits_at=at)
    return logits[:, 0], logits[:, 1:], cache.with_length(prompt_len)


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
    cache = KVCache.for_params(params, cfg, prompt.shape[0], cache_len, jnp.dtype(cfg.dtype))
    return prefill(params, cfg, prompt, prompt_len, cache)


def select_keys(flags, new, old):
    """Per-row ``where`` over PRNG key arrays (through their raw data)."""
    nd_, od = jax.random.key_data(new), jax.random.key_data(old)
    data = jnp.where(_bcast(flags, nd_.ndim), nd_, od)
    return jax.random.wrap_key_data(data, impl=jax.random.key_impl(old))
