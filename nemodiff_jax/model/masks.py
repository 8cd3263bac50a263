"""Attention policies as data, and the pure mask builders that read them.

Every NLD mode is the same forward pass under a different policy. A policy says, for
each query of the current *window* and each slot of the static KV cache, whether the
query may see that key. The window's own K/V are written into the cache at
``[prefix_len, prefix_len + Q)`` before attention, so keys are always cache slots.

Layouts (static, they change the structure of the mask):

* ``"window"``: keys ``[0, prefix_len)`` (the committed prefix) are visible to every
  query. Inside the window, query ``i`` sees key ``j`` when ``j <= i`` (causal), or,
  if ``i >= bidir_start``, every ``j < window_len`` (bidirectional). So
  ``bidir_start = Q`` is causal, ``bidir_start = 0`` is a bidirectional block, and
  ``0 < bidir_start < Q`` is the quadratic-speculation bootstrap ("default") mask:
  prompt causal, trailing masks see everything. ``window_len`` hides right padding.
* ``"quadratic"``: the B x (B+1) self-speculation layout (docs/ALGORITHMS.md, "Quadratic self-speculation"). Row
  ``r`` is ``[d_r, M x B]``; the row head sees the heads ``0..r``; a mask slot of row
  ``r`` sees the heads ``0..r`` and every slot of its own row.
* ``"block_diff"``: the training mask over ``[x_t | x_0]`` (docs/ALGORITHMS.md, "Training objective"), used
  without a cache: the window is the whole doubled sequence of length ``2L``. Here
  ``bidir_start`` is the row's block offset: blocks are ``(position - offset) // block``, so
  with offset = the answer's first position the training blocks line up with inference
  blocks, which start at the prompt's end (positions before the offset fall in negative blocks).

Per-row fields are traced int32 arrays, so changing them never recompiles.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from flax import struct
from jaxtyping import Array, Bool, Int

LAYOUTS = ("window", "quadratic", "block_diff")


@struct.dataclass
class AttentionPolicy:
    """Which cached keys each window query may see. See the module docstring."""

    # int32[B] each. Plain annotations on purpose: JAX rebuilds pytrees from placeholder
    # leaves (jit(...).trace, custom_vjp), which a runtime shape check would reject.
    prefix_len: Any
    bidir_start: Any
    window_len: Any
    layout: str = struct.field(pytree_node=False, default="window")
    block: int = struct.field(pytree_node=False, default=0)

    def __post_init__(self):
        if self.layout not in LAYOUTS:
            raise ValueError(f"unknown attention layout {self.layout!r}; expected one of {LAYOUTS}")
        if self.layout in ("quadratic", "block_diff") and self.block <= 0:
            raise ValueError(f"layout {self.layout!r} needs a positive block size, got {self.block}")


def _rows(x, batch: int) -> Int[Array, "B"]:
    return jnp.broadcast_to(jnp.asarray(x, jnp.int32), (batch,))


def causal(prefix_len, window: int, batch: int | None = None) -> AttentionPolicy:
    """Causal window after a cached prefix (prefill, AR steps, verify and commit passes)."""
    batch = jnp.shape(prefix_len)[0] if batch is None else batch
    return AttentionPolicy(_rows(prefix_len, batch), _rows(window, batch), _rows(window, batch))


def bidirectional(prefix_len, window: int, batch: int | None = None, window_len=None) -> AttentionPolicy:
    """Bidirectional window over a cached prefix (diffusion denoising and draft passes)."""
    batch = jnp.shape(prefix_len)[0] if batch is None else batch
    wl = window if window_len is None else window_len
    return AttentionPolicy(_rows(prefix_len, batch), _rows(0, batch), _rows(wl, batch))


def mixed(prefix_len, bidir_start, window_len, batch: int | None = None) -> AttentionPolicy:
    """Causal up to ``bidir_start``, then queries that see the whole valid window."""
    batch = jnp.shape(prefix_len)[0] if batch is None else batch
    return AttentionPolicy(_rows(prefix_len, batch), _rows(bidir_start, batch), _rows(window_len, batch))


def quadratic(prefix_len, block: int, batch: int | None = None) -> AttentionPolicy:
    """The B x (B+1) quadratic self-speculation layout after a cached prefix."""
    batch = jnp.shape(prefix_len)[0] if batch is None else batch
    q = block * (block + 1)
    return AttentionPolicy(_rows(prefix_len, batch), _rows(q, batch), _rows(q, batch), "quadratic", block)


def block_diff(seq_len: int, block: int, batch: int, offset=0) -> AttentionPolicy:
    """Training mask over the doubled sequence ``[x_t | x_0]`` of length ``2 * seq_len``.

    ``offset`` (int or int32 ``[B]``, traced): where each row's block 0 starts (0: blocks counted
    from position 0; the answer's start: blocks aligned with inference)."""
    return AttentionPolicy(_rows(0, batch), _rows(offset, batch), _rows(2 * seq_len, batch), "block_diff", block)


class RowPolicy(NamedTuple):
    """One row's policy: the same fields as :class:`AttentionPolicy`, as scalars.

    What the per-row mask code (the dense builder under vmap, the Pallas kernel body) reads.
    """

    prefix_len: Any
    bidir_start: Any
    window_len: Any
    layout: str = "window"
    block: int = 0


def row_view(policy: AttentionPolicy, prefix_len, bidir_start, window_len) -> RowPolicy:
    """The static structure of ``policy`` with one row's traced fields."""
    return RowPolicy(prefix_len, bidir_start, window_len, policy.layout, policy.block)


def window_visibility(policy, q_idx, k_idx):
    """Whether window query ``q_idx`` may see window key ``k_idx`` (broadcasting int arrays).

    ``policy`` is a :class:`RowPolicy` (scalar fields, see :func:`row_view`) or a policy whose
    fields already broadcast against the indices.
    Shared by the XLA mask builder and the Pallas kernel so the two cannot drift.
    """
    if policy.layout == "window":
        return (k_idx <= q_idx) | ((q_idx >= policy.bidir_start) & (k_idx < policy.window_len))
    if policy.layout == "quadratic":
        width = policy.block + 1
        q_row, q_slot = q_idx // width, q_idx % width
        k_row, k_slot = k_idx // width, k_idx % width
        head = (k_slot == 0) & (k_row <= q_row)
        own_row = (q_slot > 0) & (k_row == q_row)
        return head | own_row
    # block_diff: [x_t | x_0], each half seq_len = window_len // 2 long.
    half = policy.window_len // 2
    q_clean, k_clean = q_idx >= half, k_idx >= half
    q_pos, k_pos = jnp.where(q_clean, q_idx - half, q_idx), jnp.where(k_clean, k_idx - half, k_idx)
    off = policy.bidir_start  # the row's block offset (see the module docstring)
    q_blk, k_blk = (q_pos - off) // policy.block, (k_pos - off) // policy.block
    noisy_noisy = ~q_clean & ~k_clean & (q_blk == k_blk)
    noisy_clean = ~q_clean & k_clean & (k_blk < q_blk)
    clean_clean = q_clean & k_clean & (k_pos <= q_pos)
    return noisy_noisy | noisy_clean | clean_clean


def visibility(policy, q_idx, k_slot):
    """Whether window query ``q_idx`` may see cache slot ``k_slot`` (per-row scalar fields)."""
    in_prefix = k_slot < policy.prefix_len
    k_win = k_slot - policy.prefix_len
    in_window = (k_win >= 0) & (k_win < policy.window_len)
    return in_prefix | (in_window & window_visibility(policy, q_idx, k_win))


def build_mask(policy: AttentionPolicy, num_queries: int, num_keys: int) -> Bool[Array, "B Q T"]:
    """Dense boolean mask ``[B, Q, T]`` over the cache slots ``[0, T)``."""
    q = jnp.arange(num_queries, dtype=jnp.int32)[:, None]
    k = jnp.arange(num_keys, dtype=jnp.int32)[None, :]

    def one_row(prefix_len, bidir_start, window_len):
        return visibility(row_view(policy, prefix_len, bidir_start, window_len), q, k)

    return jax.vmap(one_row)(policy.prefix_len, policy.bidir_start, policy.window_len)
