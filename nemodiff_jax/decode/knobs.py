"""What a decode is told: the static :class:`LoopSpec` (it keys the compiled program) and the
traced :class:`Knobs` (one value per row; changing them never recompiles).

The split is the no-recompile guarantee: everything that changes the shapes or the structure
of the loop (mode, block length, buffer sizes, acceptance rule, unmask policy, slots) is in the
frozen, hashable spec; every number a sweep wants to vary is a per-row ``[B]`` array in the
knobs, so one compiled program serves a whole grid, and rows of one batch may each carry their
own values (the sweep and the oracle put one grid point per row).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct
from jaxtyping import Array, ArrayLike, Bool, Float, Int

MODES = ("ar", "diffusion", "linear_spec", "quadratic_spec")
ACCEPTANCE = ("speculative", "match")


@dataclasses.dataclass(frozen=True)
class LoopSpec:
    """The static shape of a decode. Hashable: it is a ``static_argnames`` of the engine's jit.

    ``block_length``: the window of one proposal (1 for AR). ``out_len``: the per-row output
    buffer. ``cache_len``: KV slots per row. ``prompt_width``: the padded prompt width.
    ``acceptance``: linear_spec's rule. ``policy``: diffusion's unmask policy name.
    ``slots``: rows decoded at once; prompts beyond them wait and take a slot when a row ends.
    ``refill_batch``: when at least this many slots are free at once (rows that end in the same
    round) and as many prompts wait, they start together in one batched start forward; the rest
    start one at a time. 1 = always one at a time.
    """

    mode: str
    block_length: int
    out_len: int
    cache_len: int
    prompt_width: int
    acceptance: str = "speculative"
    policy: str = "threshold"
    slots: int = 1
    refill_batch: int = 4

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"unknown mode {self.mode!r}; expected one of {MODES}")
        if self.block_length < 1 or self.out_len < 1 or self.slots < 1 or self.refill_batch < 1:
            raise ValueError(f"block_length, out_len, slots and refill_batch must be >= 1, got {self}")
        if self.acceptance not in ACCEPTANCE:
            raise ValueError(f"acceptance must be one of {ACCEPTANCE}, got {self.acceptance!r}")
        if self.mode == "diffusion" and self.out_len % self.block_length:
            raise ValueError(f"out_len ({self.out_len}) must be a multiple of block_length ({self.block_length})")
        need = cache_needed(self.mode, self.prompt_width, self.out_len, self.block_length)
        if self.cache_len < need:
            raise ValueError(f"cache_len {self.cache_len} too small for {self.mode}: needs {need}")


def cache_needed(mode: str, width: int, out_len: int, bl: int) -> int:
    """KV slots a mode writes into at most: the padded prompt, the output, the widest window past it."""
    if mode == "linear_spec":
        # The last cycle's block ends at P + N + B - 2; the first draft's masks at P + B.
        return max(width + out_len + bl - 2, width + bl)
    if mode == "quadratic_spec":
        return width + out_len - 1 + bl * (bl + 1)  # a cycle at L0 <= P + N - 1 writes B(B+1) slots
    if mode == "diffusion":
        return width + out_len + bl
    return width + out_len


@struct.dataclass
class Knobs:
    """Traced per-row knobs, each ``[B]``. ``-1`` switches the thinking budget off; ``lora`` is
    0 or 1 (the draft LoRA in bidirectional passes); ``ar_mix < 0`` is quadratic_spec's "off"."""

    limit: Int[ArrayLike, "B"]
    temperature: Float[ArrayLike, "B"]
    top_k: Int[ArrayLike, "B"]
    top_p: Float[ArrayLike, "B"]
    threshold: Float[ArrayLike, "B"]
    gamma: Float[ArrayLike, "B"]
    lora: Float[ArrayLike, "B"]
    budget: Int[ArrayLike, "B"]
    end_think: Int[ArrayLike, "B"]
    ar_mix: Float[ArrayLike, "B"]

    @staticmethod
    def make(batch: int, *, max_new_tokens=128, temperature=0.0, top_k=0, top_p=1.0, threshold=0.0, gamma=1.0,
             lora=0.0, max_thinking_tokens=-1, end_think_id=-1, ar_mix_weight=-1.0) -> "Knobs":
        """Knobs for ``batch`` rows from scalars or per-row sequences (broadcast to ``[batch]``)."""

        def rows(x, dtype):
            if isinstance(x, jax.Array):  # traced or on device: stay there
                return jnp.broadcast_to(x.astype(dtype), (batch,))
            return np.broadcast_to(np.asarray(x, dtype), (batch,)).copy()  # host: no device dispatch

        i32, f32 = np.int32, np.float32
        return Knobs(
            limit=rows(max_new_tokens, i32), temperature=rows(temperature, f32), top_k=rows(top_k, i32),
            top_p=rows(top_p, f32), threshold=rows(threshold, f32), gamma=rows(gamma, f32), lora=rows(lora, f32),
            budget=rows(max_thinking_tokens, i32), end_think=rows(end_think_id, i32), ar_mix=rows(ar_mix_weight, f32),
        )

    def clipped(self, out_len: int) -> "Knobs":
        xp = jnp if isinstance(self.limit, jax.Array) else np
        return self.replace(limit=xp.clip(self.limit, 0, out_len))

    @property
    def thinking(self) -> Bool[ArrayLike, "B"]:
        return (self.budget >= 0) & (self.end_think >= 0)

    @property
    def all_greedy(self) -> Bool[ArrayLike, ""]:
        """True when no row samples: the engine then takes the argmax-only path (no noise, no
        distributions), chosen at run time by ``lax.cond`` so temperature stays traced."""
        return jnp.all(self.temperature <= 0)

    def take(self, idx: Int[Array, "S"]) -> "Knobs":
        """The knobs of rows ``idx`` (the prompts sitting in the slots)."""
        return jax.tree.map(lambda x: jnp.take(x, idx, axis=0), self)
