"""The joint NLD training objective (docs/ALGORITHMS.md, "Training objective"): L = w_ar * L_AR + w_diff * L_diff.

One forward over the doubled sequence ``[x_t | x_0]`` under the block-diff mask (docs/ALGORITHMS.md, "Training objective")
gives both logit sets: ``logits[:, :L]`` are diffusion logits (position j predicts clean token
j), ``logits[:, L:]`` causal logits (position j predicts token j+1). Both halves are positioned
0..L-1. Losses are summed over the batch and divided once by the global token count
``N_masked + N_AR`` ("global token averaging", docs/ALGORITHMS.md, "Training objective"), so short answers and long
windows weigh per token, not per sequence.

``eligible`` (= the data's ``loss_mask``) marks the supervised tokens: only they are ever
masked and scored by the diffusion loss, and only they are AR targets. For SFT rows it is 1
on the answer only, so prompts are never corrupted and carry no loss; for plain text it is
all ones.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, Int, PRNGKeyArray

from ..model import masks
from ..model.forward import forward
from ..model.config import NLDConfig


@dataclasses.dataclass(frozen=True)
class ObjectiveConfig:
    """Static knobs of the loss (hashable: it is a static jit argument)."""

    ar_weight: float = 1.0
    diff_weight: float = 0.3
    eps: float = 1e-3
    corruption: str = "uniform"  # or "blockwise" (docs/ALGORITHMS.md, "Training objective", position dependent)
    half_life_ratio: float = 0.25
    block_size: int = 32
    # Count training blocks from each row's first supervised token (the answer's start), as
    # inference does from the prompt's end; False counts them from position 0.
    align_blocks: bool = False
    # Diffusion targets past the answer: positions after <eos> up to the end of the answer's
    # last (aligned) block hold <eos> and are masked and scored by the diffusion loss only.
    # Decoding denoises a whole block of masks and cuts at the first <eos>; without this the
    # noisy block saw clean <pad> there, which tells the model where the answer ends.
    eos_fill: bool = False
    # Share of rows whose corruption is one contiguous span of 4..8 answer tokens (never the
    # first), everything else clean: the infilling case, drawn on purpose.
    span_fraction: float = 0.0
    # Span rows start their own block at the span (the other rows keep the answer-aligned
    # offset). That is the infill decode's view: the prefix (prompt and the answer's head) is
    # causal context, the masks and what follows them one bidirectional window.
    span_align: bool = False

    def __post_init__(self):
        if self.corruption not in ("uniform", "blockwise"):
            raise ValueError(f"corruption must be 'uniform' or 'blockwise', got {self.corruption!r}")
        if self.eos_fill and not self.align_blocks:
            raise ValueError("eos_fill needs align_blocks (the fill runs to the end of the answer's aligned block)")
        if not 0.0 <= self.span_fraction <= 1.0:
            raise ValueError(f"span_fraction must be in [0, 1], got {self.span_fraction}")
        if self.span_align and not (self.align_blocks and self.span_fraction > 0):
            raise ValueError("span_align needs align_blocks and span_fraction > 0 (it moves span rows' block offset)")


def corrupt_uniform(
    key: PRNGKeyArray, eligible: Bool[Array, "B L"], eps: float = 1e-3
) -> tuple[Bool[Array, "B L"], Float[Array, "B L"]]:
    """Per sequence t ~ U(0,1), p = (1-eps) t + eps; each eligible token masked i.i.d. with p.

    Returns the mask and the per-token masking probability (for the 1/p weight).
    """
    kt, km = jax.random.split(key)
    b, length = eligible.shape
    t = jax.random.uniform(kt, (b, 1))
    p = (1.0 - eps) * t + eps
    masked = (jax.random.uniform(km, (b, length)) < p) & eligible
    return masked, jnp.broadcast_to(p, (b, length))


def corrupt_blockwise(
    key: PRNGKeyArray,
    eligible: Bool[Array, "B L"],
    block: int,
    eps: float = 1e-3,
    half_life_ratio: float = 0.25,
) -> tuple[Bool[Array, "B L"], Float[Array, "B L"]]:
    """Position-dependent corruption (docs/ALGORITHMS.md, "Training objective" ``corrupt_blockwise``).

    Per block m ~ U(eps, 1); exactly k = round(m * n) of the block's n eligible tokens are
    masked, chosen by Gumbel-top-k with log-weights lambda (1-m) i (i = index in the block,
    lambda = ln 2 / (half_life_ratio * block)), so at low ratios later positions are favoured,
    as in left-to-right decoding. p_mask = m.
    """
    b, length = eligible.shape
    if length % block:
        raise ValueError(f"blockwise corruption needs seq_len ({length}) to be a multiple of block ({block})")
    nb = length // block
    km, kg = jax.random.split(key)
    m = jax.random.uniform(km, (b, nb, 1), minval=eps, maxval=1.0)
    elig = eligible.reshape(b, nb, block)
    n = jnp.sum(elig, axis=-1, keepdims=True)
    k = jnp.round(m * n).astype(jnp.int32)
    lam = math.log(2.0) / (half_life_ratio * block)
    idx = jnp.arange(block, dtype=jnp.float32)
    scores = jax.random.gumbel(kg, (b, nb, block)) + lam * (1.0 - m) * idx
    scores = jnp.where(elig, scores, -jnp.inf)
    rank = jnp.argsort(jnp.argsort(-scores, axis=-1), axis=-1)
    masked = (rank < k) & elig
    p = jnp.broadcast_to(m, (b, nb, block))
    return masked.reshape(b, length), p.reshape(b, length)


def corrupt_span(
    key: PRNGKeyArray, answer: Bool[Array, "B L"], lo: int = 4, hi: int = 8
) -> Bool[Array, "B L"]:
    """One contiguous span of ``lo..hi`` answer tokens per row, never the answer's first token
    (shorter when the answer is); rows with fewer than two answer tokens get none."""
    kl, ks = jax.random.split(key)
    b, length = answer.shape
    n = jnp.sum(answer, axis=1)
    first = jnp.argmax(answer, axis=1)
    span = jnp.minimum(jax.random.randint(kl, (b,), lo, hi + 1), n - 1)
    room = jnp.maximum(n - span, 1)  # start offsets 1 .. n - span inside the answer
    start = first + 1 + jnp.floor(jax.random.uniform(ks, (b,)) * room).astype(jnp.int32)
    start = jnp.minimum(start, first + n - span)
    pos = jnp.arange(length)[None, :]
    return (pos >= start[:, None]) & (pos < (start + span)[:, None]) & answer & (span > 0)[:, None]


def corrupt(key, eligible, obj: ObjectiveConfig):
    if obj.corruption == "blockwise":
        return corrupt_blockwise(key, eligible, obj.block_size, obj.eps, obj.half_life_ratio)
    return corrupt_uniform(key, eligible, obj.eps)


def fill_after_eos(
    ids: Int[Array, "B L"], eligible: Bool[Array, "B L"], block: int, eos_id: int
) -> tuple[Int[Array, "B L"], Bool[Array, "B L"]]:
    """``(ids, fill)``: positions from the answer's end to the end of its last block, counted
    from the answer's start, set to ``eos_id``; ``fill`` marks them. Rows with no supervised
    token, or supervised to the row's end (corpus windows), are unchanged."""
    length = ids.shape[1]
    pos = jnp.arange(length)[None, :]
    start = block_offsets(eligible)[:, None]
    n = jnp.sum(eligible, axis=1, keepdims=True)
    end = start + n
    block_end = start + -(-n // block) * block
    fill = (pos >= end) & (pos < block_end) & (n > 0)
    return jnp.where(fill, eos_id, ids), fill


def doubled_inputs(
    ids: Int[Array, "B L"], masked: Bool[Array, "B L"], mask_id: int
) -> tuple[Int[Array, "B T"], Int[Array, "B T"]]:
    """``[x_t | x_0]`` tokens and their positions ``concat(arange(L), arange(L))``."""
    b, length = ids.shape
    x_t = jnp.where(masked, mask_id, ids)
    pos = jnp.arange(length, dtype=jnp.int32)
    return jnp.concatenate([x_t, ids], axis=1), jnp.broadcast_to(jnp.concatenate([pos, pos]), (b, 2 * length))


def token_ce(logits: Float[Array, "B L V"], targets: Int[Array, "B L"]) -> Float[Array, "B L"]:
    """Per-token cross-entropy in float32."""
    logz = jax.nn.logsumexp(logits, axis=-1)
    picked = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
    return logz - picked


def loss_from_logits(
    logits: Float[Array, "B T V"],
    ids: Int[Array, "B L"],
    eligible: Bool[Array, "B L"],
    masked: Bool[Array, "B L"],
    p_mask: Float[Array, "B L"],
    obj: ObjectiveConfig,
) -> tuple[Float[Array, ""], dict]:
    """Global-token-averaged joint loss from the doubled-sequence logits, plus metrics."""
    length = ids.shape[1]
    diff_logits, ar_logits = logits[:, :length], logits[:, length:]
    m = masked.astype(jnp.float32)
    diff_ce = token_ce(diff_logits, ids)
    diff_sum = jnp.sum(m * diff_ce / p_mask)
    ar_mask = eligible[:, 1:].astype(jnp.float32)
    ar_ce = token_ce(ar_logits[:, :-1], ids[:, 1:])
    ar_sum = jnp.sum(ar_mask * ar_ce)
    n_masked, n_ar = jnp.sum(m), jnp.sum(ar_mask)
    denom = jnp.maximum(n_masked + n_ar, 1.0)
    loss = (obj.ar_weight * ar_sum + obj.diff_weight * diff_sum) / denom
    metrics = {
        "loss": loss,
        "ar_loss": ar_sum / jnp.maximum(n_ar, 1.0),
        "diff_loss": diff_sum / jnp.maximum(n_masked, 1.0),
        "diff_ce": jnp.sum(m * diff_ce) / jnp.maximum(n_masked, 1.0),
        "n_masked": n_masked,
        "n_ar": n_ar,
    }
    return loss, metrics


def block_offsets(eligible: Bool[Array, "B L"]) -> Int[Array, "B"]:
    """Each row's first supervised position (0 for a row with none): the aligned block offset."""
    return jnp.where(jnp.any(eligible, axis=1), jnp.argmax(eligible, axis=1), 0).astype(jnp.int32)


def corruption(
    key: PRNGKeyArray, eligible: Bool[Array, "B L"], diff_eligible: Bool[Array, "B L"], obj: ObjectiveConfig
) -> tuple[Bool[Array, "B L"], Float[Array, "B L"], Int[Array, "B"] | int]:
    """``(masked, p_mask, offset)``: which positions are masked, their masking probability (the
    loss weights them ``1 / p_mask``) and each row's block offset for the training mask.

    A ``span_fraction`` share of rows is one span (:func:`corrupt_span`, weight 1); with
    ``span_align`` those rows' blocks start at the span."""
    b = eligible.shape[0]
    kc = key
    if obj.span_fraction > 0:
        kc, ks, kr = jax.random.split(key, 3)
    masked, p_mask = corrupt(kc, diff_eligible, obj)
    offset = block_offsets(eligible) if obj.align_blocks else 0
    if obj.span_fraction > 0:
        # A span row's masked tokens are not a uniform draw: weight them 1 (p_mask = 1).
        span_row = jax.random.uniform(kr, (b, 1)) < obj.span_fraction
        span = corrupt_span(ks, eligible)
        masked = jnp.where(span_row, span, masked)
        p_mask = jnp.where(span_row, 1.0, p_mask)
        if obj.span_align:
            has_span = span_row[:, 0] & jnp.any(span, axis=1)
            offset = jnp.where(has_span, jnp.argmax(span, axis=1).astype(jnp.int32), offset)
    return masked, p_mask, offset


def joint_loss(
    params,
    cfg: NLDConfig,
    obj: ObjectiveConfig,
    ids: Int[Array, "B L"],
    loss_mask: Int[Array, "B L"],
    key: PRNGKeyArray,
) -> tuple[Float[Array, ""], dict]:
    """Corrupt, run the one doubled forward, and return (loss, metrics)."""
    b, length = ids.shape
    if obj.align_blocks and cfg.attention_impl != "xla":
        # pallas_kernels/block_attention.py plans its block_diff tiles with blocks from position 0.
        raise ValueError("align_blocks needs attention_impl='xla' (the Pallas tile plan assumes block offset 0)")
    eligible = loss_mask.astype(bool)
    diff_eligible = eligible
    if obj.eos_fill:
        ids, fill = fill_after_eos(ids, eligible, obj.block_size, cfg.eos_token_id)
        diff_eligible = eligible | fill
    masked, p_mask, offset = corruption(key, eligible, diff_eligible, obj)
    tokens, positions = doubled_inputs(ids, masked, cfg.mask_token_id)
    policy = masks.block_diff(length, obj.block_size, b, offset=offset)
    logits, _ = forward(params, cfg, tokens, positions, policy, None, jnp.float32(0.0))
    return loss_from_logits(logits, ids, eligible, masked, p_mask, obj)
