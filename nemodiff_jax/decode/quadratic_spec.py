"""Quadratic self-speculation (docs/ALGORITHMS.md, "Quadratic self-speculation", the DEV ``self_spec_generate``), batched.

One forward per cycle verifies the current draft and drafts every possible next block at once:
the B x (B+1) layout (:func:`masks.quadratic`) puts row i = ``[d_i, M x B]`` at positions
``L0+i .. L0+i+B``; the row heads form the causal chain over ``d_0..d_i`` (AR verification,
their K/V are exact causal K/V) and the masks of row i draft the block that follows if
``d_0..d_i`` are accepted. Accept ``a`` tokens, take row ``a-1``'s slots ``1..B`` as the next
draft, keep the row heads' K/V (``cache.keep_strided``) and crop to ``L0 + a``.

Greedy only (the DEV code has no sampling path: temperature cannot change an argmax). With
``ar_mix_weight < 0`` (DEV ``None``) slot ``(i, 1)`` is overwritten by the AR slot ``(i, 0)``, so
the output is the greedy AR output; with ``w`` in [0, 1] both slots become
``w * AR + (1 - w) * diffusion`` (raw logits) and the output is no longer AR-equivalent.

Bootstrap (NFE 1, it includes the prompt): ``[prompt, M x B]`` under the "default" mask, one
forward for the whole batch: each row's B masks sit right after its own prompt (true positions
``prompt_len .. prompt_len + B - 1``), ``masks.mixed`` with per-row ``bidir_start = prompt_len``
and ``window_len = prompt_len + B`` keeps the prompt causal, lets the masks see the prompt and
all B masks, and hides the right padding. The cache is cropped to ``prompt_len``. Draft:
``d_0`` = AR argmax of the last prompt slot, ``d_j`` = diffusion argmax of mask j (j >= 1).

NFE per row = 1 (bootstrap) + the cycles that row ran; a finished row stops counting. Positions
(RoPE and the Llama-4 query scale) are the true position ids ``L0 + i + s`` (docs/ALGORITHMS.md, "Quadratic self-speculation").

Deviations from DEV, deliberate: the mask token is never drafted (excluded from argmaxes);
batch > 1 with per-row L0; no ``max_new_tokens % B`` or ``steps`` requirement; output is cut at
``max_new_tokens`` even when an EOS is in the last cycle (DEV can return up to B-1 more); the
thinking budget puts end-think exactly at generated index ``max_thinking_tokens`` (commit is
cut there and end-think becomes the next ``d_0``, the rest of the draft realigned from row
``a-1``'s slots ``2..B``), which is the AR rule, where DEV inserts it after a cycle that passed
the budget and shifts the old draft right by one.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import struct
from jaxtyping import Array, Bool, Float, Int

from ..model import masks
from . import sampling
from ..model.forward import forward
from ..model.cache import KVCache
from ..model.config import NLDConfig
from .common import DecodeOutput, prefill_with_window
from .linear_spec import finish, first_index, position_stats, write_span


def quadratic_cache_len(prompt_width: int, out_len: int, block_length: int) -> int:
    """Cache slots needed: a cycle at L0 <= P + N - 1 writes B(B+1) slots after L0."""
    return prompt_width + out_len - 1 + block_length * (block_length + 1)


@struct.dataclass
class QuadKnobs:
    limit: Int[Array, ""]
    budget: Int[Array, ""]
    end_think: Int[Array, ""]
    ar_mix: Float[Array, ""]

    @property
    def thinking(self):
        return (self.budget >= 0) & (self.end_think >= 0)


@struct.dataclass
class QuadState:
    """Loop carry. Invariant: ``cache.length == prompt_len + n_out``; ``draft[:, 0]`` sits at
    generated index ``n_out`` and is always accepted by the next cycle."""

    step: Int[Array, ""]
    tokens: Int[Array, "B N"]
    commit_pass: Int[Array, "B N"]
    n_out: Int[Array, "B"]
    draft: Int[Array, "B K"]
    cache: KVCache
    done: Bool[Array, "B"]
    think_done: Bool[Array, "B"]
    nfe: Int[Array, "B"]
    cycles: Int[Array, "B"]
    acceptance_lengths: Int[Array, "B C"]
    position_trials: Int[Array, "B K"]
    position_accepts: Int[Array, "B K"]


def make_quad_knobs(max_new_tokens, max_thinking_tokens, end_think_id, ar_mix_weight, out_len) -> QuadKnobs:
    return QuadKnobs(
        limit=jnp.clip(jnp.asarray(max_new_tokens, jnp.int32), 0, out_len),
        budget=jnp.asarray(max_thinking_tokens, jnp.int32),
        end_think=jnp.asarray(end_think_id, jnp.int32),
        ar_mix=jnp.asarray(ar_mix_weight, jnp.float32),
    )


def quadratic_start(
    params, cfg: NLDConfig, prompt: Int[Array, "B P"], prompt_len: Int[Array, "B"], kn: QuadKnobs,
    *, block_length: int, out_len: int, cache_len: int,
) -> QuadState:
    """The bootstrap forward (NFE 1): prompt causal, each row's B masks bidirectional after it."""
    b = prompt.shape[0]
    bk, m = block_length, cfg.mask_token_id
    # [prompt, M x B] under the mixed mask, as a chunked causal prefill + one window forward.
    cache = KVCache.init(cfg, b, cache_len, jnp.dtype(cfg.dtype))
    masks_win = jnp.full((b, bk), m, jnp.int32)
    last, mask_logits, cache = prefill_with_window(params, cfg, prompt, prompt_len, cache, masks_win, 0.0)
    # d_0 from the last prompt slot (AR); d_j from mask j at prompt_len + j (no shift).
    draft = sampling.greedy(jnp.concatenate([last[:, None], mask_logits[:, 1:]], axis=1), m)
    draft = draft.at[:, 0].set(jnp.where(kn.thinking & (kn.budget == 0), kn.end_think, draft[:, 0]))
    return QuadState(
        step=jnp.int32(0),
        tokens=jnp.full((b, out_len), cfg.pad_token_id, jnp.int32),
        commit_pass=jnp.full((b, out_len), -1, jnp.int32),
        n_out=jnp.zeros((b,), jnp.int32),
        draft=draft,
        cache=cache,
        done=jnp.broadcast_to(kn.limit <= 0, (b,)),
        think_done=jnp.zeros((b,), bool),
        nfe=jnp.ones((b,), jnp.int32),
        cycles=jnp.zeros((b,), jnp.int32),
        acceptance_lengths=jnp.zeros((b, out_len), jnp.int32),
        position_trials=jnp.zeros((b, bk), jnp.int32),
        position_accepts=jnp.zeros((b, bk), jnp.int32),
    )


def layout(draft: Int[Array, "B K"], length: Int[Array, "B"], mask_token_id: int):
    """Tokens and true positions of the B x (B+1) layout: slot (i, s) holds d_i (s = 0) or M,
    at position ``L0 + i + s``."""
    bk = draft.shape[1]
    slot = jnp.arange(bk * (bk + 1), dtype=jnp.int32)
    row, s = slot // (bk + 1), slot % (bk + 1)
    tokens = jnp.where((s == 0)[None, :], jnp.take(draft, row, axis=1), mask_token_id)
    return tokens, length[:, None] + (row + s)[None, :]


def quadratic_cycle(params, cfg: NLDConfig, st: QuadState, kn: QuadKnobs, *, block_length: int) -> QuadState:
    """One quadratic forward: verify ``st.draft``, commit, and take the next draft."""
    bk, b, w = block_length, st.draft.shape[0], block_length + 1
    live = ~st.done
    length = st.cache.length
    tokens, positions = layout(st.draft, length, cfg.mask_token_id)
    logits, cache = forward(params, cfg, tokens, positions, masks.quadratic(length, bk, b), st.cache, 0.0)
    logits = logits.reshape(b, bk, w, logits.shape[-1])
    ar = logits[:, :, 0]
    mix = jnp.clip(kn.ar_mix, 0.0, 1.0)
    head = jnp.where(kn.ar_mix >= 0, mix * ar + (1.0 - mix) * logits[:, :, 1], ar)
    logits = logits.at[:, :, 0].set(head).at[:, :, 1].set(head)
    pred = sampling.greedy(logits, cfg.mask_token_id)  # [B, K, K+1]

    d = st.draft
    ok = pred[:, :-1, 0] == d[:, 1:]
    n_acc = jnp.sum(jnp.cumprod(ok.astype(jnp.int32), axis=1), axis=1)
    a = n_acc + 1
    col = jnp.arange(bk, dtype=jnp.int32)[None, :]

    # Thinking budget: generated index `budget` (offset k from this cycle's d_0) must hold
    # end-think. Commit d_0..d_{k-1} and make end-think the next d_0 (always accepted).
    k = kn.budget - st.n_out
    natural = jnp.any((d == kn.end_think) & (col < k[:, None]), axis=1)
    force = kn.thinking & ~st.think_done & (k >= 1) & (k <= a) & ~natural
    a_t = jnp.where(force, k, a)
    nxt = jnp.take_along_axis(pred[:, :, 1:], (a_t - 1)[:, None, None], axis=1)[:, 0]  # [B, K]
    realigned = jnp.concatenate([jnp.broadcast_to(kn.end_think, (b, 1)), nxt[:, 1:]], axis=1)
    nxt = jnp.where(force[:, None], realigned, nxt)

    eos_at = first_index((d == cfg.eos_token_id) & (col < a_t[:, None]))
    hit_eos = eos_at < a_t
    a_out = jnp.where(live, jnp.where(hit_eos, eos_at + 1, a_t), 0)

    nfe = st.nfe + live.astype(jnp.int32)
    out = write_span(st.tokens, st.n_out, d, a_out)
    commit_pass = write_span(st.commit_pass, st.n_out, jnp.broadcast_to(nfe[:, None], d.shape), a_out)
    n_out = st.n_out + a_out
    done = st.done | (live & (hit_eos | (n_out >= kn.limit)))
    # Keep the row heads' causal K/V at L0..L0+B-1, then crop to the committed length.
    # Finished rows keep L0 so their (ignored) later windows stay inside the cache.
    cache = cache.keep_strided(length, bk, w).with_length(jnp.where(live & ~done, length + a_t, length))
    think_done = st.think_done | (live & jnp.any((d == kn.end_think) & (col < a_out[:, None]), axis=1))

    trials, accepts = position_stats(n_acc, live, bk)
    cyc = jnp.arange(st.acceptance_lengths.shape[1], dtype=jnp.int32)[None, :]
    acc_lens = jnp.where(live[:, None] & (cyc == st.cycles[:, None]), a[:, None], st.acceptance_lengths)
    return st.replace(
        step=st.step + 1,
        tokens=out,
        commit_pass=commit_pass,
        n_out=n_out,
        draft=jnp.where(live[:, None], nxt, d),
        cache=cache,
        done=done,
        think_done=think_done,
        nfe=nfe,
        cycles=st.cycles + live.astype(jnp.int32),
        acceptance_lengths=acc_lens,
        position_trials=st.position_trials + trials,
        position_accepts=st.position_accepts + accepts,
    )


@functools.partial(jax.jit, static_argnames=("cfg", "block_length", "out_len", "cache_len"))
def quadratic_spec_decode(
    params,
    cfg: NLDConfig,
    prompt: Int[Array, "B P"],
    prompt_len: Int[Array, "B"],
    key,
    max_new_tokens,
    max_thinking_tokens,
    end_think_id,
    ar_mix_weight=-1.0,
    *,
    block_length: int,
    out_len: int,
    cache_len: int,
) -> DecodeOutput:
    """Quadratic self-speculative greedy decode of ``[B, P]`` right-padded prompts.

    Traced: ``max_new_tokens`` (clipped to out_len), ``max_thinking_tokens`` / ``end_think_id``
    (-1 = off), ``ar_mix_weight`` (< 0 = DEV None, else clipped to [0, 1]). ``key`` is unused
    (greedy) and kept for a uniform signature. Static: block length, ``out_len``, ``cache_len``
    (>= :func:`quadratic_cache_len`).

    stats (int32): ``acceptance_lengths`` [B, out_len] (a of each cycle, 0 unused), ``cycles``
    [B], ``position_trials`` / ``position_accepts`` [B, block_length] (column j >= 1: times
    draft token j was verified / accepted; column 0: d_0, always kept, = cycles),
    ``commit_pass`` [B, out_len] (1-based NFE index of the cycle that committed each token:
    the bootstrap is NFE 1, so the first cycle is 2; -1 past the end).
    """
    del key
    if prompt.ndim != 2:
        raise ValueError(f"prompt must be [batch, length], got shape {prompt.shape}")
    if block_length < 1 or out_len < 1:
        raise ValueError(f"block_length and out_len must be >= 1, got {block_length}, {out_len}")
    need = quadratic_cache_len(prompt.shape[1], out_len, block_length)
    if cache_len < need:
        raise ValueError(f"cache_len {cache_len} too small: quadratic speculation needs P + N - 1 + B(B+1) = {need}")
    prompt = jnp.asarray(prompt, jnp.int32)
    prompt_len = jnp.asarray(prompt_len, jnp.int32)
    kn = make_quad_knobs(max_new_tokens, max_thinking_tokens, end_think_id, ar_mix_weight, out_len)
    st = quadratic_start(
        params, cfg, prompt, prompt_len, kn, block_length=block_length, out_len=out_len, cache_len=cache_len
    )
    cycle = functools.partial(quadratic_cycle, params, cfg, kn=kn, block_length=block_length)
    # Each live cycle commits >= 1 token, so out_len cycles always suffice.
    st = jax.lax.while_loop(lambda s: (s.step < out_len) & jnp.any(~s.done), lambda s: cycle(st=s), st)
    tokens, num, commit_pass = finish(st, kn.limit, cfg.pad_token_id)
    stats = {
        "acceptance_lengths": st.acceptance_lengths,
        "cycles": st.cycles,
        "position_trials": st.position_trials,
        "position_accepts": st.position_accepts,
        "commit_pass": commit_pass,
    }
    return DecodeOutput(tokens=tokens, num_tokens=num, nfe=st.nfe, stats=stats)
