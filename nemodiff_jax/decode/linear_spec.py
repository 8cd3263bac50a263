"""Linear self-speculation (docs/ALGORITHMS.md, "Linear self-speculation") as one jitted ``lax.while_loop`` over cycles.

One checkpoint drafts and verifies: per cycle the block ``[seed, M x (B-1)]`` is drafted by
bidirectional peek passes over the cached prefix with the draft LoRA on, then the filled
block goes through one causal pass with the LoRA off (the unmodified AR model) that writes
its K/V; the drafted tokens that the verifier agrees with are kept, plus one AR token, and
the cache length is cropped back to ``L0 + a``. Every emitted token is an AR choice given the
true prefix, so the output is the AR output (greedy at T = 0; AR-distributed at T > 0).

Per-row state makes it batched (the HF code is batch 1): each row has its own cache length,
seed, acceptance and stop; a finished row keeps flowing through the same shapes but stops
changing and stops counting NFE.

Acceptance (static ``acceptance``; both are the greedy rule at T = 0):

* ``"match"`` (HF): verifier tokens ``ar_j`` are sampled independently from the AR
  distribution ``p_j``; ``a = 1 +`` the run of ``ar_j == block[j+1]``; emit ``ar_0..ar_{a-1}``.
* ``"speculative"`` (Leviathan et al. / Chen et al.): drafted token ``d = block[j+1]`` came
  from the draft distribution ``q_{j+1}``; accept it with probability ``min(1, p_j(d) /
  q_{j+1}(d))``; on the first rejection emit a sample of ``norm(max(0, p_j - q_{j+1}))``; if all
  ``B - 1`` are accepted emit a bonus sample of ``p_{B-1}``. Exactly AR-distributed when the
  draft is one pass (``threshold == 0``: every draft token is an independent sample of its
  recorded ``q``). With ``threshold > 0`` the draft is committed over several passes chosen by
  confidence, so the true proposal law is not the recorded ``q``: the output is then only
  approximately AR-distributed ("match" stays exact for any draft).

NFE (docs/ALGORITHMS.md, "Linear self-speculation"): the prefill counts 1 and carries the first
cycle's first draft pass (:func:`start`); each later draft pass and each verify pass counts 1.
``threshold == 0`` gives 2 NFE per cycle; ``threshold > 0`` gives 1 verify + >= 1 draft passes.

Deviation from HF in the first draft: it runs in the prefill's forward, before the seed is known, on
``[M, M x (B-1)]`` instead of ``[seed, M x (B-1)]``. The verify pass decides every emitted token,
so the output is unchanged; one forward per call is saved.

Deviations from the HF ``linear_spec_generate`` (documented, deliberate):

* the mask token is never drafted nor emitted (excluded from argmaxes and distributions);
* output is cut at ``max_new_tokens`` (HF can return up to B-1 extra tokens of the last cycle);
* thinking budget: the end-think token is placed exactly at generated index
  ``max_thinking_tokens`` (the cycle's emitted tokens are cut there, the forced token becomes
  the seed and is emitted), which is the AR rule of docs/ALGORITHMS.md, "AR decoding". HF forces the *next* seed
  after a cycle that passed the budget and never writes it to its output;
* confidence for ``threshold > 0`` at T > 0 is the draft probability ``q`` of the sampled token
  (HF: ``softmax(logits / T)``, the same without top-k / top-p).

Engine layout: a round is ONE forward per row, and each row is in its own phase: a draft pass
(bidirectional over ``cache[:L0] ++ block``, LoRA on) or the verify pass (causal over the
filled block, LoRA off, writes its K/V). The phase, the attention policy and the LoRA switch
are per-row traced values, so the model appears once in the compiled round, and rows of a
batch (or slots) never wait for each other. At ``threshold == 0`` the draft fills the whole
block in one pass, so a cycle is exactly two rounds.

Greedy path: when every row has T == 0 (``lax.cond`` at run time), a round takes argmaxes
only: the verifier's argmaxes are the emitted tokens and ``a - 1`` is the run of drafted tokens
equal to them. No softmax, no noise, no ``[B, block, V]`` distribution is built or kept. The
sampled path keeps the draft distributions ``q`` and draws the acceptance uniforms.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int

from ..model import masks
from . import sampling
from ..model.forward import forward
from ..model.cache import KVCache
from .common import choose, positions_from, prefill_with_window, row_probs, select_keys
from .knobs import Knobs, LoopSpec, cache_needed
from .rows import (Rows, accept_cap, commit, crop, finish, force_think, fresh, record_cycle, spec_stats,
                   stop_nonfinite)


def linear_cache_len(prompt_width: int, out_len: int, block_length: int) -> int:
    """Cache slots linear speculation needs (:func:`~.knobs.cache_needed`)."""
    return cache_needed("linear_spec", prompt_width, out_len, block_length)


def gumbel(keys, shape) -> Float[Array, "..."]:
    """Standard Gumbel noise ``-log(-log(u))``, ``[B, *shape]`` from row keys."""
    return -jnp.log(-jnp.log(sampling.row_uniform(keys, tuple(shape))))


def sample(dist: Float[Array, "... V"], noise: Float[Array, "... V"]) -> Int[Array, "..."]:
    """A sample of ``dist`` by Gumbel-max; exact for a one-hot (a T = 0 row)."""
    return jnp.argmax(jnp.log(dist) + noise, axis=-1).astype(jnp.int32)


def _accept(p, q, block, rand, acceptance: str):
    """The verifier's emitted tokens ``e[B, B_blk]`` (only ``e[:, :a]`` count) and ``n_acc = a - 1``.

    ``rand[B, B_blk, V + 1]`` uniforms: ``[..., :V]`` become Gumbel noise for the AR /
    residual / bonus samples, ``[..., V]`` the accept tests.
    """
    bk = block.shape[1]
    drafted = block[:, 1:]
    g, u = -jnp.log(-jnp.log(rand[..., :-1])), rand[:, :-1, -1]
    if acceptance == "match":
        ar = sample(p, g)  # independent AR samples
        ok = ar[:, :-1] == drafted
        return ar, jnp.sum(jnp.cumprod(ok.astype(jnp.int32), axis=1), axis=1)
    p_d = jnp.take_along_axis(p[:, :-1], drafted[..., None], axis=-1)[..., 0]
    q_d = jnp.take_along_axis(q[:, 1:], drafted[..., None], axis=-1)[..., 0]
    ok = u * q_d < p_d  # u < p/q without dividing (q_d > 0 for a drawn token)
    n_acc = jnp.sum(jnp.cumprod(ok.astype(jnp.int32), axis=1), axis=1)
    resid = jnp.maximum(p[:, :-1] - q[:, 1:], 0.0)
    resid = jnp.where(jnp.sum(resid, axis=-1, keepdims=True) > 0, resid, p[:, :-1])
    fallback = jnp.concatenate([resid, p[:, -1:]], axis=1)  # residual per position, bonus last
    fix = sample(fallback, g)
    shifted = jnp.concatenate([drafted, block[:, :1]], axis=1)  # block[j+1] for j < B-1
    col = jnp.arange(bk, dtype=jnp.int32)[None, :]
    return jnp.where(col < n_acc[:, None], shifted, fix), n_acc


def _draft_commit(tok, conf, block, drafting, kn: Knobs, mask_id: int):
    """Which masks a draft pass fills: all at threshold 0, else the confident ones and the best."""
    is_mask = block == mask_id
    conf = jnp.where(is_mask, conf, -jnp.inf)
    col = jnp.arange(block.shape[1], dtype=jnp.int32)[None, :]
    best = col == jnp.argmax(conf, axis=1)[:, None]
    thr = kn.threshold[:, None]
    return is_mask & drafting[:, None] & ((thr <= 0) | (conf >= thr) | best)


def _new_block(seed, bk: int, mask_id: int):
    col = jnp.arange(bk, dtype=jnp.int32)[None, :]
    return jnp.where(col == 0, seed[:, None], mask_id)


def _draft_greedy(logits, block, drafting, kn: Knobs, mask_id: int):
    """A greedy draft pass: the filled block and the argmaxes (the verifier's tokens on a verify pass)."""
    tok = sampling.greedy(logits, mask_id)
    conf = jax.lax.cond(jnp.any(drafting & (kn.threshold > 0)), sampling.confidence,
                        lambda lg, t: jnp.zeros(t.shape, jnp.float32), logits, tok)
    return jnp.where(_draft_commit(tok, conf, block, drafting, kn, mask_id), tok, block), tok


def _draft_sampled(logits, block, drafting, kn: Knobs, noise_keys, q, mask_id: int):
    """A sampled draft pass: the filled block, the draft distributions ``q`` with the committed
    positions' distributions recorded, and this pass's distributions."""
    dist = row_probs(logits, kn, mask_id)
    tok = sample(dist, gumbel(noise_keys, dist.shape[1:]))
    d_tok = jnp.take_along_axis(dist, tok[..., None], axis=-1)[..., 0]
    conf = jnp.where(kn.temperature[:, None] > 0, d_tok, sampling.confidence(logits, tok))
    commit_ = _draft_commit(tok, conf, block, drafting, kn, mask_id)
    return jnp.where(commit_, tok, block), jnp.where(commit_[..., None], dist, q), dist


def start(params, cfg, prompt, prompt_len, keys, kn: Knobs, *, spec: LoopSpec) -> Rows:
    """The prefill and the first draft pass in ONE forward (NFE 1), the first seed emitted at once.

    The prompt (causal, LoRA off: the AR model's K/V) and ``block_length`` masks after it
    (bidirectional, LoRA per ``kn.lora``) share one window (:func:`~.common.prefill_with_window`).
    The seed is the AR token at the prompt's end; the masks after it were drafted without it,
    which changes only the proposal of the first cycle (the verify pass decides what is emitted,
    so the output is the AR output; with ``"speculative"`` acceptance the recorded ``q`` is that
    proposal's, so sampling stays exact). One forward fewer per call than prefill + draft.
    """
    b, bk, v, m = prompt.shape[0], spec.block_length, cfg.vocab_size, cfg.mask_token_id
    cache = KVCache.for_params(params, cfg, b, spec.cache_len, jnp.dtype(cfg.dtype))
    last, mask_logits, cache = prefill_with_window(params, cfg, prompt, prompt_len, cache,
                                                   jnp.full((b, bk), m, jnp.int32), lora=kn.lora)
    key, sub = sampling.split_rows(keys)
    seed = choose(last, sub, kn, m)
    seed = jnp.where(kn.thinking & (kn.budget == 0), kn.end_think, seed)  # generated index 0
    key, cycle_key = sampling.split_rows(key)
    block = _new_block(seed, bk, m)
    r = stop_nonfinite(fresh(b, spec.out_len, cfg.pad_token_id, key, cache, {}, nfe=1), last, mask_logits)
    r, _ = commit(r, seed[:, None], jnp.ones((b,), jnp.int32), (kn.limit > 0) & ~r.done, kn, eos=cfg.eos_token_id, mark=r.nfe)
    done = r.done | (kn.limit <= 0)
    drafting = ~done & jnp.any(block == m, axis=1)
    q0 = jnp.zeros((b, bk, v), jnp.float32)
    block, q = jax.lax.cond(
        kn.all_greedy,
        lambda lg: (_draft_greedy(lg, block, drafting, kn, m)[0], q0),
        lambda lg: _draft_sampled(lg, block, drafting, kn, sampling.fold_rows(cycle_key, 0), q0, m)[:2],
        mask_logits,
    )
    extra = {
        "block": block,
        "verify": ~jnp.any(block == m, axis=1),
        "q": q,
        "cycle_key": cycle_key,
        "pass_i": drafting.astype(jnp.int32),
        "draft_passes": drafting.astype(jnp.int32),
        **spec_stats(b, spec.out_len, bk),
    }
    return r.replace(done=done, extra=extra)


def step(params, cfg, r: Rows, kn: Knobs, *, spec: LoopSpec) -> Rows:
    """One forward per row: a draft pass or the verify pass (then accept, commit, crop).

    The verify pass always runs the whole block. Narrower passes for a block whose answer ends
    early were tried under ``lax.switch``: XLA then copies the KV cache into and out of the
    branch every round (docs/DESIGN.md, "State machines"), which at real sizes costs far more
    than the rows it saves."""
    bk, b, m = spec.block_length, r.n_out.shape[0], cfg.mask_token_id
    x = r.extra
    live, verify, block = ~r.done, x["verify"], x["block"]
    drafting, verifying = live & ~verify, live & verify
    length = r.cache.length
    policy = masks.mixed(length, jnp.where(verify, bk, 0), bk, b)
    logits, cache = forward(params, cfg, block, positions_from(length, bk), policy, r.cache,
                            jnp.where(verify, 0.0, kn.lora))
    r = stop_nonfinite(r, logits)
    live = ~r.done
    drafting, verifying = live & ~verify, live & verify

    def greedy(logits):
        filled, tok = _draft_greedy(logits, block, drafting, kn, m)
        n_acc = jnp.sum(jnp.cumprod((tok[:, :-1] == block[:, 1:]).astype(jnp.int32), axis=1), axis=1)
        return filled, x["q"], tok, n_acc

    def sampled(logits):
        noise = sampling.fold_rows(x["cycle_key"], x["pass_i"])
        filled, q, dist = _draft_sampled(logits, block, drafting, kn, noise, x["q"], m)
        rand = sampling.row_uniform(sampling.fold_rows(x["cycle_key"], bk + 1), (bk, cfg.vocab_size + 1))
        e, n_acc = _accept(dist, q, block, rand, spec.acceptance)
        return filled, q, e, n_acc

    filled, q, e, n_acc = jax.lax.cond(kn.all_greedy, greedy, sampled, logits)
    # The seed (block[0], generated index n_out - 1) was emitted last cycle: drafts past the first
    # drafted EOS or the limit are not counted as accepted (e[:, :a] and the output are unchanged).
    n_acc = jnp.minimum(n_acc, accept_cap(block, r.n_out - 1, kn.limit, cfg.eos_token_id))
    nfe = r.nfe + live.astype(jnp.int32)

    # Verify rows: thinking budget, commit, crop to L0 + a, the next seed.
    e, a_t = force_think(e, n_acc + 1, r.n_out, r.think_done, kn)
    r, _ = commit(r, e, a_t, verifying, kn, eos=cfg.eos_token_id, mark=nfe)
    cache = crop(cache, verifying & ~r.done, a_t)
    seed = jnp.take_along_axis(e, (a_t - 1)[:, None], axis=1)[:, 0]
    key, cycle_key = sampling.split_rows(r.key)
    v = verifying[:, None]
    nxt = jnp.where(v, _new_block(seed, bk, m), filled)
    extra = {
        **record_cycle(x, n_acc, verifying),
        "block": nxt,
        "verify": jnp.where(live, ~jnp.any(nxt == m, axis=1), verify),
        "q": q,
        "cycle_key": select_keys(verifying, cycle_key, x["cycle_key"]),
        "pass_i": jnp.where(verifying, 0, x["pass_i"] + drafting.astype(jnp.int32)),
        "draft_passes": x["draft_passes"] + drafting.astype(jnp.int32),
    }
    return r.replace(nfe=nfe, cache=cache, extra=extra, key=select_keys(verifying, key, r.key))


def result(r: Rows, kn: Knobs, *, spec: LoopSpec, pad: int) -> dict:
    out = finish(r, pad, kn.limit)
    x = r.extra
    stats = {k: x[k] for k in ("acceptance_lengths", "cycles", "draft_passes", "position_trials", "position_accepts")}
    stats["commit_pass"], stats["nonfinite"] = out["commit_pass"], out["nonfinite"]
    return {"tokens": out["tokens"], "num_tokens": out["num_tokens"], "nfe": out["nfe"], "stats": stats}
