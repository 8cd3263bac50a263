"""Block diffusion decoding (NLD_SPEC 3.2) as nested jitted ``lax.while_loop``\\ s.

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
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import struct
from jaxtyping import Array, Bool, Int

from ..model import masks
from . import sampling, unmask
from ..model.forward import forward
from ..model.cache import KVCache
from ..model.config import NLDConfig
from .common import DecodeOutput, positions_from, prefill


def eos_stop(x: Int[Array, "B L"], eos: int, mask_id: int) -> Bool[Array, "B"]:
    """Rows whose block has an EOS with no mask to its left (NLD_SPEC 3.2 early exit)."""
    length = x.shape[1]
    idx = jnp.arange(length, dtype=jnp.int32)[None, :]
    first_eos = jnp.min(jnp.where(x == eos, idx, length), axis=1)
    first_mask = jnp.min(jnp.where(x == mask_id, idx, length), axis=1)
    return first_eos < first_mask


@struct.dataclass
class _Outer:
    block: Int[Array, ""]
    tokens: Int[Array, "B N"]
    commit_pass: Int[Array, "B N"]
    block_steps: Int[Array, "B NB"]
    cache: KVCache
    seed: Int[Array, "B"]
    seed_pass: Int[Array, "B"]
    done: Bool[Array, "B"]
    think_done: Bool[Array, "B"]
    nfe: Int[Array, "B"]
    key: jax.Array


@struct.dataclass
class _Inner:
    step: Int[Array, ""]
    x: Int[Array, "B L"]
    passes: Int[Array, "B L"]
    cache: KVCache
    nfe: Int[Array, "B"]
    key: jax.Array


@functools.partial(jax.jit, static_argnames=("cfg", "block_length", "out_len", "cache_len", "policy"))
def diffusion_decode(
    params,
    cfg: NLDConfig,
    prompt: Int[Array, "B P"],
    prompt_len: Int[Array, "B"],
    key,
    max_new_tokens,
    temperature,
    top_k,
    top_p,
    threshold,
    lora,
    max_thinking_tokens,
    end_think_id,
    gamma=1.0,
    *,
    block_length: int,
    out_len: int,
    cache_len: int,
    policy: str = "threshold",
) -> DecodeOutput:
    """Block-diffusion decode of ``[B, P]`` right-padded prompts into ``[B, out_len]``.

    ``out_len`` must be a multiple of ``block_length``; ``max_new_tokens`` (traced) is
    rounded down to a block multiple (callers validate it). ``policy`` names an
    :mod:`~nemodiff_jax.decode.unmask` policy: ``threshold`` uses the traced ``threshold``, the
    ranking policies the NLD_SPEC 3.2 quota schedule, ``eb`` the traced ``gamma``. ``lora``
    (traced, 0 or 1) scales the draft LoRA in the bidirectional denoise passes only; the
    prefill and commit passes are plain causal passes of the base model.
    """
    if out_len % block_length:
        raise ValueError(f"out_len ({out_len}) must be a multiple of block_length ({block_length})")
    policy_fn = unmask.get(policy)
    bl, b = block_length, prompt.shape[0]
    eos, pad, mask_id = cfg.eos_token_id, cfg.pad_token_id, cfg.mask_token_id
    n_blocks = out_len // bl
    max_passes = n_blocks * (bl + 1)
    limit_blocks = jnp.clip(jnp.asarray(max_new_tokens, jnp.int32) // bl, 0, n_blocks)
    lora = jnp.asarray(lora, jnp.float32)
    thr = jnp.asarray(threshold, jnp.float32)
    gam = jnp.asarray(gamma, jnp.float32)
    offs = jnp.arange(bl, dtype=jnp.int32)[None, :]

    cache = KVCache.init(cfg, b, cache_len, jnp.dtype(cfg.dtype))
    logits, cache = prefill(params, cfg, prompt, prompt_len, cache)
    key, sub = sampling.split_rows(sampling.row_keys(key, b))
    seed = sampling.choose(logits, sub, temperature, top_k, top_p, mask_id)

    def denoise(c: _Inner, live: Bool[Array, "B"], n_masked0: Int[Array, "B"]) -> _Inner:
        length = c.cache.length
        logits, cache = forward(
            params, cfg, c.x, positions_from(length, bl), masks.bidirectional(length, bl, b), c.cache, lora
        )
        # Keyed by the row's own pass count: a row's draws do not depend on how many passes
        # the other rows of the batch needed.
        k_cand, k_pol = sampling.split_rows(sampling.fold_rows(c.key, c.nfe), 2)
        cand = sampling.choose(logits, k_cand, temperature, top_k, top_p, mask_id)
        masked = (c.x == mask_id) & live[:, None]
        quota = unmask.quota_at(n_masked0, bl, c.step)
        row_params = unmask.UnmaskParams(jnp.broadcast_to(thr, (b,)), jnp.broadcast_to(gam, (b,)), quota)
        commit = jax.vmap(policy_fn)(logits, cand, masked, k_pol, row_params)
        nfe = c.nfe + live.astype(jnp.int32)
        return c.replace(
            step=c.step + 1,
            x=jnp.where(commit, cand, c.x),
            passes=jnp.where(commit, nfe[:, None], c.passes),
            cache=cache,
            nfe=nfe,
        )

    def block_body(o: _Outer) -> _Outer:
        start = o.block * bl
        live0 = ~o.done
        # 1. [seed, M, ..., M], end-think injected at its budget index if still owed.
        x = jnp.where(offs == 0, o.seed[:, None], mask_id)
        budget = jnp.asarray(max_thinking_tokens, jnp.int32)
        end = jnp.asarray(end_think_id, jnp.int32)
        at = jnp.maximum(budget, start) - start
        inject = (budget >= 0) & (end >= 0) & ~o.think_done & (at < bl)
        x = jnp.where(inject[:, None] & (offs == at), end, x)
        passes = jnp.where(offs == 0, o.seed_pass[:, None], jnp.where(x == mask_id, -1, o.nfe[:, None]))
        n_masked0 = jnp.sum(x == mask_id, axis=1).astype(jnp.int32)

        # 2. Denoise while some live row has masks left and no EOS before them.
        def live_rows(c: _Inner) -> Bool[Array, "B"]:
            return live0 & jnp.any(c.x == mask_id, axis=1) & ~eos_stop(c.x, eos, mask_id) & (c.step < bl)

        inner = _Inner(jnp.int32(0), x, passes, o.cache, o.nfe, o.key)
        inner = jax.lax.while_loop(
            lambda c: jnp.any(live_rows(c)), lambda c: denoise(c, live_rows(c), n_masked0), inner
        )
        x, steps = inner.x, inner.nfe - o.nfe

        # 3. Causal commit pass: writes the block, advances the length, gives the next seed.
        length = inner.cache.length
        logits, cache = forward(
            params, cfg, x, positions_from(length, bl), masks.causal(length, bl, b), inner.cache, 0.0
        )
        cache = cache.with_length(jnp.where(live0, length + bl, length))
        nfe = inner.nfe + live0.astype(jnp.int32)
        key, sub = sampling.split_rows(inner.key)
        seed = sampling.choose(logits[:, -1], sub, temperature, top_k, top_p, mask_id)
        think_done = o.think_done | (live0 & (end >= 0) & jnp.any(x == end, axis=1))
        done = o.done | eos_stop(x, eos, mask_id) | (o.block + 1 >= limit_blocks)

        def put(buf, val):
            old = jax.lax.dynamic_slice_in_dim(buf, start, bl, axis=1)
            return jax.lax.dynamic_update_slice_in_dim(buf, jnp.where(live0[:, None], val, old), start, axis=1)

        return o.replace(
            block=o.block + 1,
            tokens=put(o.tokens, x),
            commit_pass=put(o.commit_pass, inner.passes),
            block_steps=o.block_steps.at[:, o.block].set(jnp.where(live0, steps, 0)),
            cache=cache,
            seed=jnp.where(live0, seed, o.seed),
            seed_pass=jnp.where(live0, nfe, o.seed_pass),
            done=done,
            think_done=think_done,
            nfe=nfe,
            key=key,
        )

    init = _Outer(
        block=jnp.int32(0),
        tokens=jnp.full((b, out_len), pad, jnp.int32),
        commit_pass=jnp.full((b, out_len), -1, jnp.int32),
        block_steps=jnp.zeros((b, n_blocks), jnp.int32),
        cache=cache,
        seed=seed,
        seed_pass=jnp.zeros((b,), jnp.int32),
        done=jnp.broadcast_to(limit_blocks <= 0, (b,)),
        think_done=jnp.zeros((b,), bool),
        nfe=jnp.zeros((b,), jnp.int32),
        key=key,
    )
    o = jax.lax.while_loop(lambda o: (o.block < n_blocks) & jnp.any(~o.done), block_body, init)

    # Cut each row after its first EOS (EOS kept) and after its decoded blocks.
    idx = jnp.arange(out_len, dtype=jnp.int32)[None, :]
    decoded = jnp.minimum(o.block, limit_blocks) * bl
    first_eos = jnp.min(jnp.where(o.tokens == eos, idx, out_len), axis=1)
    num = jnp.minimum(first_eos + 1, decoded).astype(jnp.int32)
    valid = idx < num[:, None]
    commit_pass = jnp.where(valid, o.commit_pass, -1)
    hist = jnp.zeros((b, max_passes + 1), jnp.int32)
    hist = hist.at[jnp.arange(b)[:, None], jnp.maximum(commit_pass, 0)].add(valid.astype(jnp.int32))
    stats = {"commit_pass": commit_pass, "tokens_per_pass": hist, "block_steps": o.block_steps}
    return DecodeOutput(tokens=jnp.where(valid, o.tokens, pad), num_tokens=num, nfe=o.nfe, stats=stats)
