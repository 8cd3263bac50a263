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

import jax.numpy as jnp

from ..model import masks
from . import sampling
from ..model.forward import forward
from ..model.cache import KVCache
from .common import prefill_with_window
from .knobs import Knobs, LoopSpec
from .rows import Rows, accept_cap, commit, crop, finish, fresh, record_cycle, spec_stats, stop_nonfinite


def quadratic_cache_len(prompt_width: int, out_len: int, block_length: int) -> int:
    """Cache slots needed: a cycle at L0 <= P + N - 1 writes B(B+1) slots after L0."""
    return prompt_width + out_len - 1 + block_length * (block_length + 1)


def start(params, cfg, prompt, prompt_len, keys, kn: Knobs, *, spec: LoopSpec) -> Rows:
    """The bootstrap forward (NFE 1): prompt causal, each row's B masks bidirectional after it."""
    b = prompt.shape[0]
    bk, m = spec.block_length, cfg.mask_token_id
    # [prompt, M x B] under the mixed mask: the prompt's last chunk and the masks in one forward.
    cache = KVCache.for_params(params, cfg, b, spec.cache_len, jnp.dtype(cfg.dtype))
    masks_win = jnp.full((b, bk), m, jnp.int32)
    last, mask_logits, cache = prefill_with_window(params, cfg, prompt, prompt_len, cache, masks_win)
    # d_0 from the last prompt slot (AR); d_j from mask j at prompt_len + j (no shift).
    draft = sampling.greedy(jnp.concatenate([last[:, None], mask_logits[:, 1:]], axis=1), m)
    draft = draft.at[:, 0].set(jnp.where(kn.thinking & (kn.budget == 0), kn.end_think, draft[:, 0]))
    r = fresh(b, spec.out_len, cfg.pad_token_id, keys, cache, {"draft": draft, **spec_stats(b, spec.out_len, bk)},
              nfe=1)
    return stop_nonfinite(r.replace(done=kn.limit <= 0), last, mask_logits)


def layout(draft, length, mask_token_id: int):
    """Tokens and true positions of the B x (B+1) layout: slot (i, s) holds d_i (s = 0) or M,
    at position ``L0 + i + s``."""
    bk = draft.shape[1]
    slot = jnp.arange(bk * (bk + 1), dtype=jnp.int32)
    row, s = slot // (bk + 1), slot % (bk + 1)
    tokens = jnp.where((s == 0)[None, :], jnp.take(draft, row, axis=1), mask_token_id)
    return tokens, length[:, None] + (row + s)[None, :]


def step(params, cfg, r: Rows, kn: Knobs, *, spec: LoopSpec) -> Rows:
    """One quadratic forward: verify the draft, commit, and take the next draft."""
    bk, b, w = spec.block_length, r.n_out.shape[0], spec.block_length + 1
    live, d = ~r.done, r.extra["draft"]
    length = r.cache.length
    tokens, positions = layout(d, length, cfg.mask_token_id)
    logits, cache = forward(params, cfg, tokens, positions, masks.quadratic(length, bk, b), r.cache, 0.0)
    logits = logits.reshape(b, bk, w, logits.shape[-1])
    r = stop_nonfinite(r, logits)
    live = ~r.done
    ar = logits[:, :, 0]
    mix = jnp.clip(kn.ar_mix, 0.0, 1.0)[:, None, None]
    head = jnp.where(kn.ar_mix[:, None, None] >= 0, mix * ar + (1.0 - mix) * logits[:, :, 1], ar)
    logits = logits.at[:, :, 0].set(head).at[:, :, 1].set(head)
    pred = sampling.greedy(logits, cfg.mask_token_id)  # [B, K, K+1]

    ok = pred[:, :-1, 0] == d[:, 1:]
    n_acc = jnp.sum(jnp.cumprod(ok.astype(jnp.int32), axis=1), axis=1)
    # d_0 lands at generated index n_out: drafts past d's first EOS or the limit are not counted
    # (every row that reaches them is done this cycle, so the commit and the output are unchanged).
    n_acc = jnp.minimum(n_acc, accept_cap(d, r.n_out, kn.limit, cfg.eos_token_id))
    a = n_acc + 1
    col = jnp.arange(bk, dtype=jnp.int32)[None, :]

    # Thinking budget: generated index `budget` (offset k from this cycle's d_0) must hold
    # end-think. Commit d_0..d_{k-1} and make end-think the next d_0 (always accepted).
    k = kn.budget - r.n_out
    natural = jnp.any((d == kn.end_think[:, None]) & (col < k[:, None]), axis=1)
    force = kn.thinking & ~r.think_done & (k >= 1) & (k <= a) & ~natural
    a_t = jnp.where(force, k, a)
    nxt = jnp.take_along_axis(pred[:, :, 1:], (a_t - 1)[:, None, None], axis=1)[:, 0]  # [B, K]
    realigned = jnp.concatenate([kn.end_think[:, None], nxt[:, 1:]], axis=1)
    nxt = jnp.where(force[:, None], realigned, nxt)

    nfe = r.nfe + live.astype(jnp.int32)
    r, _ = commit(r, d, a_t, live, kn, eos=cfg.eos_token_id, mark=nfe)
    # Keep the row heads' causal K/V at L0..L0+B-1, then crop to the committed length.
    cache = crop(cache.keep_strided(length, bk, w), live & ~r.done, a_t)
    extra = {**record_cycle(r.extra, n_acc, live), "draft": jnp.where(live[:, None], nxt, d)}
    return r.replace(nfe=nfe, cache=cache, extra=extra)


def result(r: Rows, kn: Knobs, *, spec: LoopSpec, pad: int) -> dict:
    out = finish(r, pad, kn.limit)
    x = r.extra
    stats = {k: x[k] for k in ("acceptance_lengths", "cycles", "position_trials", "position_accepts")}
    stats["commit_pass"], stats["nonfinite"] = out["commit_pass"], out["nonfinite"]
    return {"tokens": out["tokens"], "num_tokens": out["num_tokens"], "nfe": out["nfe"], "stats": stats}
