"""Block diffusion decoding (docs/ALGORITHMS.md, "Block diffusion decoding") as nested jitted ``lax.while_loop``\\ s.

Per row: causal prefill (not counted); seed = choice from the last prompt logits. Blocks of
the static ``block_length`` start at each row's prompt end. For each block:

1. the block is ``[seed, M, ..., M]`` (thinking budget: the end-think token is injected at
   its generated index if the row has not emitted it yet);
2. denoise loop, at most ``block_length`` steps, while the row has masks left and no EOS
   with no mask to its left: one bidirectional peek forward over ``cache[:length] ++ block``
   (cache length untouched); candidates = greedy (mask excluded) at T = 0 else a sample at
   T (Gumbel-max; top-k / top-p too); confidence = raw softmax at the candidate; the unmask
   policy (:mod:`nemodiff_jax.decode.unmask`) picks which masked positions to commit; committed
   tokens are final;
3. one causal commit forward over the finished block writes its K/V, advances the cache
   length by ``block_length`` and gives the next seed from its last logits.

A row whose block holds an EOS (no mask to its left), or that reached ``max_new_tokens``, is
done: it flows on through the same shapes but stops changing and stops counting.
NFE per row = its denoise steps + one commit pass per block it decoded (the commit of its
final block included, as in the HF code); the prefill is not counted.

Stats (all computed inside the jitted call, ``-1`` / ``0`` where not applicable):

* ``commit_pass`` int32[B, N]: the 1-based NFE index of the forward that produced each
  generated token; 0 = the first seed (from the uncounted prefill); an injected end-think
  token gets the index of the pass before its block; -1 past the end of the row.
* ``tokens_per_pass`` int32[B, P]: the histogram of ``commit_pass`` (index = pass, 0 = the
  prefill), i.e. how many tokens each forward committed (P = 1 + the static NFE bound).
* ``block_steps`` int32[B, N // block_length]: denoising steps spent on each block.

Engine layout: the denoise loop and the commit pass are flattened into rounds of ONE forward
per row; each row is in its own phase (denoise: bidirectional peek with the LoRA; commit:
causal, no LoRA, writes the block's K/V). So rows of a batch or of slots never wait for the
slowest row's block, and a streaming caller sees each row's current canvas between rounds.
The row key is folded with the row's own NFE for the denoise draws and split once per commit,
so a row's draws do not depend on the other rows.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Int

from ..model import masks
from . import sampling, unmask
from ..model.forward import forward
from .common import choose, positions_from, prefilled, select_keys
from .knobs import Knobs, LoopSpec
from .rows import Rows, commit, crop, finish, fresh, stop_nonfinite


def eos_stop(x: Int[Array, "B L"], eos: int, mask_id: int) -> Bool[Array, "B"]:
    """Rows whose block has an EOS with no mask to its left (the early exit of docs/ALGORITHMS.md, "Block diffusion decoding")."""
    length = x.shape[1]
    idx = jnp.arange(length, dtype=jnp.int32)[None, :]
    first_eos = jnp.min(jnp.where(x == eos, idx, length), axis=1)
    first_mask = jnp.min(jnp.where(x == mask_id, idx, length), axis=1)
    return first_eos < first_mask


def _block(cfg, seed, n_out, nfe, think_done, kn: Knobs, bl: int) -> dict:
    """``[seed, M, ..., M]`` at generated index ``n_out``, end-think injected at its budget index
    if still owed; per-token pass stamps; whether it needs denoising at all."""
    m = cfg.mask_token_id
    offs = jnp.arange(bl, dtype=jnp.int32)[None, :]
    x = jnp.where(offs == 0, seed[:, None], m)
    at = jnp.maximum(kn.budget, n_out) - n_out
    inject = kn.thinking & ~think_done & (at < bl)
    x = jnp.where(inject[:, None] & (offs == at[:, None]), kn.end_think[:, None], x)
    return {
        "x": x,
        "passes": jnp.where(x == m, -1, nfe[:, None]),
        "n_masked0": jnp.sum(x == m, axis=1).astype(jnp.int32),
        "steps": jnp.zeros_like(n_out),
        "commit": ~(jnp.any(x == m, axis=1) & ~eos_stop(x, cfg.eos_token_id, m)),
    }


def start(params, cfg, prompt, prompt_len, keys, kn: Knobs, *, spec: LoopSpec) -> Rows:
    """Causal prefill (not counted); the seed from the last prompt logits; block 0 set up."""
    b, bl = prompt.shape[0], spec.block_length
    kn = kn.replace(limit=(kn.limit // bl) * bl)
    logits, cache = prefilled(params, cfg, prompt, prompt_len, spec.cache_len)
    key, sub = sampling.split_rows(keys)
    seed = choose(logits, sub, kn, cfg.mask_token_id)
    zero = jnp.zeros((b,), jnp.int32)
    extra = {**_block(cfg, seed, zero, zero, jnp.zeros((b,), bool), kn, bl), "block": zero,
             "block_steps": jnp.zeros((b, spec.out_len // bl), jnp.int32)}
    r = fresh(b, spec.out_len, cfg.pad_token_id, key, cache, extra)
    return stop_nonfinite(r.replace(done=kn.limit <= 0), logits)


def step(params, cfg, r: Rows, kn: Knobs, *, spec: LoopSpec) -> Rows:
    """One forward per row: a denoise step, or the commit pass of a finished block."""
    bl, b, m, eos = spec.block_length, r.n_out.shape[0], cfg.mask_token_id, cfg.eos_token_id
    kn = kn.replace(limit=(kn.limit // bl) * bl)
    x = r.extra
    live, committing_ph = ~r.done, x["commit"]
    denoising, committing = live & ~committing_ph, live & committing_ph
    length = r.cache.length
    policy = masks.mixed(length, jnp.where(committing_ph, bl, 0), bl, b)
    logits, cache = forward(params, cfg, x["x"], positions_from(length, bl), policy, r.cache,
                            jnp.where(committing_ph, 0.0, kn.lora))
    r = stop_nonfinite(r, logits)
    live = ~r.done
    denoising, committing = live & ~committing_ph, live & committing_ph
    nfe = r.nfe + live.astype(jnp.int32)

    # Denoise rows: candidates, the unmask policy's commits.
    k_cand, k_pol = sampling.split_rows(sampling.fold_rows(r.key, r.nfe), 2)
    cand = choose(logits, k_cand, kn, m)
    masked = (x["x"] == m) & denoising[:, None]
    quota = unmask.quota_at(x["n_masked0"], bl, x["steps"])
    fill = jax.vmap(unmask.get(spec.policy))(logits, cand, masked, k_pol,
                                            unmask.UnmaskParams(kn.threshold, kn.gamma, quota))
    blk = jnp.where(fill, cand, x["x"])
    passes = jnp.where(fill, nfe[:, None], x["passes"])
    steps = x["steps"] + denoising.astype(jnp.int32)
    more = jnp.any(blk == m, axis=1) & ~eos_stop(blk, eos, m) & (steps < bl)

    # Commit rows: emit the block, advance the cache, the next seed and block.
    key, sub = sampling.split_rows(r.key)
    seed = choose(logits[:, -1], sub, kn, m)
    r2, _ = commit(r, x["x"], jnp.full((b,), bl, jnp.int32), committing, kn, eos=eos, mark=x["passes"])
    think = committing & kn.thinking & jnp.any(x["x"] == kn.end_think[:, None], axis=1)
    r2 = r2.replace(think_done=r2.think_done | think)
    nxt = _block(cfg, seed, r2.n_out, nfe, r2.think_done, kn, bl)
    col = jnp.arange(x["block_steps"].shape[1], dtype=jnp.int32)[None, :]
    c1 = committing[:, None]
    extra = {
        "x": jnp.where(c1, nxt["x"], blk),
        "passes": jnp.where(c1, nxt["passes"], passes),
        "n_masked0": jnp.where(committing, nxt["n_masked0"], x["n_masked0"]),
        "steps": jnp.where(committing, 0, steps),
        "commit": jnp.where(committing, nxt["commit"], jnp.where(denoising, ~more, committing_ph)),
        "block": x["block"] + committing.astype(jnp.int32),
        "block_steps": jnp.where(c1 & (col == x["block"][:, None]), x["steps"][:, None], x["block_steps"]),
    }
    return r2.replace(nfe=nfe, cache=crop(cache, committing, bl), extra=extra,
                      key=select_keys(committing, key, r.key))


def result(r: Rows, kn: Knobs, *, spec: LoopSpec, pad: int) -> dict:
    out = finish(r, pad, kn.limit)
    b, bl = r.n_out.shape[0], spec.block_length
    max_passes = (spec.out_len // bl) * (bl + 1)
    cp = out["commit_pass"]
    valid = cp >= 0
    hist = jnp.zeros((b, max_passes + 1), jnp.int32)
    hist = hist.at[jnp.arange(b)[:, None], jnp.maximum(cp, 0)].add(valid.astype(jnp.int32))
    stats = {"commit_pass": cp, "tokens_per_pass": hist, "block_steps": r.extra["block_steps"],
             "nonfinite": out["nonfinite"]}
    return {"tokens": out["tokens"], "num_tokens": out["num_tokens"], "nfe": out["nfe"], "stats": stats}
