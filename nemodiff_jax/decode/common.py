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
