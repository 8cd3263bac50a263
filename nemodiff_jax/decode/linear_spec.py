"""Linear self-speculation (NLD_SPEC 3.3) as one jitted ``lax.while_loop`` over cycles.

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

NFE (NLD_SPEC 3.3): the causal prefill counts 1; each draft pass and each verify pass counts 1.
``threshold == 0`` gives 2 NFE per cycle; ``threshold > 0`` gives 1 verify + >= 1 draft passes.

Deviations from the HF ``linear_spec_generate`` (documented, deliberate):

* the mask token is never drafted nor emitted (excluded from argmaxes and distributions);
* output is cut at ``max_new_tokens`` (HF can return up to B-1 extra tokens of the last cycle);
* thinking budget: the end-think token is placed exactly at generated index
  ``max_thinking_tokens`` (the cycle's emitted tokens are cut there, the forced token becomes
  the seed and is emitted), which is the AR rule of NLD_SPEC 3.1. HF forces the *next* seed
  after a cycle that passed the budget and never writes it to its output;
* confidence for ``threshold > 0`` at T > 0 is the draft probability ``q`` of the sampled token
  (HF: ``softmax(logits / T)``, the same without top-k / top-p).
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
from .common import DecodeOutput, positions_from, prefill

ACCEPTANCE = ("speculative", "match")


def linear_cache_len(prompt_width: int, out_len: int, block_length: int) -> int:
    """Cache slots linear speculation needs: the last cycle's block ends at P + N + B - 2."""
    return prompt_width + out_len + block_length - 2


# ---------------------------------------------------------------------------------------
# Small row-wise helpers shared with quadratic speculation.


def first_index(flags: Bool[Array, "B W"]) -> Int[Array, "B"]:
    """Index of the first True per row, W when there is none."""
    w = flags.shape[1]
    idx = jnp.arange(w, dtype=jnp.int32)[None, :]
    return jnp.min(jnp.where(flags, idx, w), axis=1).astype(jnp.int32)


def write_span(buf: Int[Array, "B N"], start: Int[Array, "B"], values: Int[Array, "B W"], count) -> Int[Array, "B N"]:
    """``buf[b, start[b] + j] = values[b, j]`` for ``j < count[b]`` (positions past N dropped)."""
    n, w = buf.shape[1], values.shape[1]
    j = jnp.arange(n, dtype=jnp.int32)[None, :] - start[:, None]
    valid = (j >= 0) & (j < count[:, None])
    vals = jnp.take_along_axis(values, jnp.clip(j, 0, w - 1), axis=1)
    return jnp.where(valid, vals.astype(buf.dtype), buf)


def position_stats(n_acc: Int[Array, "B"], live: Bool[Array, "B"], width: int):
    """Per-position (trials, accepts) increments of one cycle, column 0 = the always-kept seed.

    Drafted position j >= 1 is tried when positions 1..j-1 were accepted (n_acc >= j-1) and
    accepted when n_acc >= j. So ``sum(accepts) / cycles`` is the mean acceptance length.
    """
    j = jnp.arange(width, dtype=jnp.int32)[None, :]
    trials = (n_acc[:, None] >= j - 1) & live[:, None]
    accepts = (n_acc[:, None] >= j) & live[:, None]
    return trials.astype(jnp.int32), accepts.astype(jnp.int32)


def uniform(keys, shape) -> Float[Array, "..."]:
    """Uniforms in (0, 1) of shape ``[B, *shape]`` from row keys: safe to turn into Gumbel noise."""
    return sampling.row_uniform(keys, tuple(shape))


def gumbel(keys, shape) -> Float[Array, "..."]:
    """Standard Gumbel noise ``-log(-log(u))``, ``[B, *shape]`` from row keys."""
    return -jnp.log(-jnp.log(uniform(keys, shape)))


def sample(dist: Float[Array, "... V"], noise: Float[Array, "... V"]) -> Int[Array, "..."]:
    """A sample of ``dist`` by Gumbel-max; exact for a one-hot (the greedy T = 0 case).

    Sampling from the distributions themselves (``sampling.probs``) rather than calling
    ``sampling.choose`` keeps one top-k / top-p filter per forward in the compiled graph.
    """
    return jnp.argmax(jnp.log(dist) + noise, axis=-1).astype(jnp.int32)


@struct.dataclass
class Knobs:
    """The traced knobs of a decode (changing any of them never recompiles)."""

    limit: Int[Array, ""]
    temperature: Float[Array, ""]
    top_k: Int[Array, ""]
    top_p: Float[Array, ""]
    threshold: Float[Array, ""]
    lora: Float[Array, ""]
    budget: Int[Array, ""]
    end_think: Int[Array, ""]

    @property
    def thinking(self):
        return (self.budget >= 0) & (self.end_think >= 0)


@struct.dataclass
class LinearState:
    """The loop carry. ``n_out`` counts emitted tokens (the seed included: it is emitted when
    chosen). Invariant: ``cache.length == prompt_len + n_out - 1`` (all but the seed cached)."""

    step: Int[Array, ""]
    tokens: Int[Array, "B N"]
    commit_pass: Int[Array, "B N"]
    n_out: Int[Array, "B"]
    seed: Int[Array, "B"]
    cache: KVCache
    done: Bool[Array, "B"]
    think_done: Bool[Array, "B"]
    nfe: Int[Array, "B"]
    draft_passes: Int[Array, "B"]
    cycles: Int[Array, "B"]
    acceptance_lengths: Int[Array, "B C"]
    position_trials: Int[Array, "B K"]
    position_accepts: Int[Array, "B K"]
    key: jax.Array


def make_knobs(max_new_tokens, temperature, top_k, top_p, threshold, lora, max_thinking_tokens, end_think_id, out_len):
    return Knobs(
        limit=jnp.clip(jnp.asarray(max_new_tokens, jnp.int32), 0, out_len),
        temperature=jnp.asarray(temperature, jnp.float32),
        top_k=jnp.asarray(top_k, jnp.int32),
        top_p=jnp.asarray(top_p, jnp.float32),
        threshold=jnp.asarray(threshold, jnp.float32),
        lora=jnp.asarray(lora, jnp.float32),
        budget=jnp.asarray(max_thinking_tokens, jnp.int32),
        end_think=jnp.asarray(end_think_id, jnp.int32),
    )


def linear_start(
    params, cfg: NLDConfig, prompt: Int[Array, "B P"], prompt_len: Int[Array, "B"], key, kn: Knobs,
    *, block_length: int, out_len: int, cache_len: int,
) -> LinearState:
    """Causal prefill with the LoRA off (NFE 1) and the first seed, which is emitted at once."""
    b = prompt.shape[0]
    cache = KVCache.init(cfg, b, cache_len, jnp.dtype(cfg.dtype))
    logits, cache = prefill(params, cfg, prompt, prompt_len, cache, 0.0)
    key, sub = sampling.split_rows(sampling.row_keys(key, b))
    dist = sampling.probs(logits, kn.temperature, kn.top_k, kn.top_p, cfg.mask_token_id)
    seed = sample(dist, gumbel(sub, dist.shape[1:]))
    seed = jnp.where(kn.thinking & (kn.budget == 0), kn.end_think, seed)  # generated index 0
    live = jnp.broadcast_to(kn.limit > 0, (b,))
    n_out = live.astype(jnp.int32)
    tokens = jnp.full((b, out_len), cfg.pad_token_id, jnp.int32)
    tokens = tokens.at[:, 0].set(jnp.where(live, seed, tokens[:, 0]))
    commit_pass = jnp.full((b, out_len), -1, jnp.int32).at[:, 0].set(jnp.where(live, 1, -1))
    return LinearState(
        step=jnp.int32(0),
        tokens=tokens,
        commit_pass=commit_pass,
        n_out=n_out,
        seed=seed,
        cache=cache,
        done=~live | (seed == cfg.eos_token_id) | (n_out >= kn.limit),
        think_done=live & kn.thinking & (seed == kn.end_think),
        nfe=jnp.ones((b,), jnp.int32),
        draft_passes=jnp.zeros((b,), jnp.int32),
        cycles=jnp.zeros((b,), jnp.int32),
        acceptance_lengths=jnp.zeros((b, out_len), jnp.int32),
        position_trials=jnp.zeros((b, block_length), jnp.int32),
        position_accepts=jnp.zeros((b, block_length), jnp.int32),
        key=key,
    )


def _passes(params, cfg, st: LinearState, kn: Knobs, key, bk: int):
    """Draft passes until no live row has masks, then the verify pass; one forward call site.

    Draft pass: bidirectional over ``cache[:L0] ++ block``, LoRA on; fills the masks (all at
    ``threshold == 0``, else those with confidence >= threshold and at least the best one).
    Verify pass: causal over the filled block, LoRA off; writes the block's K/V. Both are the
    same forward with a traced policy (``bidir_start`` 0 or B) and LoRA switch, so the model
    appears once in the compiled cycle. Draft passes write non-causal K/V at ``[L0, L0 + B)``
    but leave the length alone; the verify pass overwrites exactly those slots before anything
    reads them, so threading the cache through (no discarded copy) is safe.

    Returns (block, q, p, cache, draft passes per row): ``q[b, j]`` is the distribution the
    draft token at j was drawn from (its committing pass), ``p`` the verifier distributions.
    """
    b, m, v = st.seed.shape[0], cfg.mask_token_id, cfg.vocab_size
    length = st.cache.length
    pos = positions_from(length, bk)
    live = ~st.done
    col = jnp.arange(bk, dtype=jnp.int32)[None, :]

    def cond(c):
        return ~c[-1]

    def body(c):
        block, q, p, cache, passes, i, _ = c
        is_mask = block == m
        rows = live & jnp.any(is_mask, axis=1)
        verify = ~jnp.any(rows)  # every live row has a full block
        policy = masks.mixed(length, jnp.where(verify, bk, 0), bk, b)
        logits, cache = forward(params, cfg, block, pos, policy, cache, jnp.where(verify, 0.0, kn.lora))
        dist = sampling.probs(logits, kn.temperature, kn.top_k, kn.top_p, m)
        tok = sample(dist, gumbel(sampling.fold_rows(key, i), dist.shape[1:]))
        d_tok = jnp.take_along_axis(dist, tok[..., None], axis=-1)[..., 0]
        conf = jnp.where(kn.temperature > 0, d_tok, sampling.confidence(logits, tok))
        conf = jnp.where(is_mask, conf, -jnp.inf)
        best = col == jnp.argmax(conf, axis=1)[:, None]
        commit = is_mask & rows[:, None] & ((kn.threshold <= 0) | (conf >= kn.threshold) | best)
        block = jnp.where(commit, tok, block)
        q = jnp.where(commit[..., None], dist, q)
        p = jnp.where(verify, dist, p)
        # i < B bounds the loop even for rows that could never fill (each pass fills >= 1).
        return block, q, p, cache, passes + rows.astype(jnp.int32), i + 1, verify | (i >= bk)

    block = jnp.full((b, bk), m, jnp.int32).at[:, 0].set(st.seed)
    zeros = jnp.zeros((b, bk, v), jnp.float32)
    init = (block, zeros, zeros, st.cache, jnp.zeros((b,), jnp.int32), jnp.int32(0), jnp.bool_(False))
    block, q, p, cache, passes, _, _ = jax.lax.while_loop(cond, body, init)
    return block, q, p, cache, passes


def _accept(p, q, block, rand, acceptance: str):
    """The verifier's emitted tokens ``e[B, B_blk]`` (only ``e[:, :a]`` count) and ``n_acc = a - 1``.

    ``rand[B, B_blk, V + 1]`` uniforms: ``[..., :V]`` become Gumbel noise for the AR /
    residual / bonus samples, ``[..., V]`` the accept tests (one random draw per cycle keeps
    the compiled graph small).
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


def linear_cycle(
    params, cfg: NLDConfig, st: LinearState, kn: Knobs, *, block_length: int, acceptance: str
) -> LinearState:
    """One draft-verify-accept cycle for every live row."""
    bk, b = block_length, st.seed.shape[0]
    live = ~st.done
    length = st.cache.length
    key, sub = sampling.split_rows(st.key)
    block, q, p, cache, passes = _passes(params, cfg, st, kn, sub, bk)
    rand = uniform(sampling.fold_rows(sub, bk + 1), (bk, cfg.vocab_size + 1))
    e, n_acc = _accept(p, q, block, rand, acceptance)
    a = n_acc + 1
    col = jnp.arange(bk, dtype=jnp.int32)[None, :]

    # Thinking budget: the token at generated index `budget` must be end-think (AR rule).
    k = kn.budget - st.n_out  # its offset among this cycle's emitted tokens
    natural = jnp.any((e == kn.end_think) & (col < k[:, None]), axis=1)
    force = kn.thinking & ~st.think_done & (k >= 0) & (k < a) & ~natural
    a_t = jnp.where(force, k + 1, a)
    e = jnp.where(force[:, None] & (col == k[:, None]), kn.end_think, e)

    eos_at = first_index((e == cfg.eos_token_id) & (col < a_t[:, None]))
    hit_eos = eos_at < a_t
    a_out = jnp.where(hit_eos, eos_at + 1, a_t)
    a_out = jnp.where(live, a_out, 0)

    nfe = st.nfe + jnp.where(live, passes + 1, 0)
    tokens = write_span(st.tokens, st.n_out, e, a_out)
    commit_pass = write_span(st.commit_pass, st.n_out, jnp.broadcast_to(nfe[:, None], e.shape), a_out)
    n_out = st.n_out + a_out
    done = st.done | (live & (hit_eos | (n_out >= kn.limit)))
    # Crop to L0 + a (seed + accepted drafts). Finished rows keep L0 so their (ignored) later
    # windows stay inside the cache.
    cache = cache.with_length(jnp.where(live & ~done, length + a_t, length))
    seed = jnp.where(live, jnp.take_along_axis(e, (a_t - 1)[:, None], axis=1)[:, 0], st.seed)
    think_done = st.think_done | (live & jnp.any((e == kn.end_think) & (col < a_out[:, None]), axis=1))

    trials, accepts = position_stats(n_acc, live, bk)
    cyc = jnp.arange(st.acceptance_lengths.shape[1], dtype=jnp.int32)[None, :]
    acc_lens = jnp.where(live[:, None] & (cyc == st.cycles[:, None]), a[:, None], st.acceptance_lengths)
    return st.replace(
        step=st.step + 1,
        tokens=tokens,
        commit_pass=commit_pass,
        n_out=n_out,
        seed=seed,
        cache=cache,
        done=done,
        think_done=think_done,
        nfe=nfe,
        draft_passes=st.draft_passes + jnp.where(live, passes, 0),
        cycles=st.cycles + live.astype(jnp.int32),
        acceptance_lengths=acc_lens,
        position_trials=st.position_trials + trials,
        position_accepts=st.position_accepts + accepts,
        key=key,
    )


def finish(st, limit, pad: int) -> tuple[Int[Array, "B N"], Int[Array, "B"], Int[Array, "B N"]]:
    """Tokens cut at ``limit`` (pad after), their count, and commit_pass (-1 past the end)."""
    num = jnp.minimum(st.n_out, limit)
    valid = jnp.arange(st.tokens.shape[1], dtype=jnp.int32)[None, :] < num[:, None]
    return jnp.where(valid, st.tokens, pad), num, jnp.where(valid, st.commit_pass, -1)


@functools.partial(jax.jit, static_argnames=("cfg", "block_length", "out_len", "cache_len", "acceptance"))
def linear_spec_decode(
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
    *,
    block_length: int,
    out_len: int,
    cache_len: int,
    acceptance: str = "speculative",
) -> DecodeOutput:
    """Linear self-speculative decode of ``[B, P]`` right-padded prompts (NLD_SPEC 3.3).

    Traced: ``max_new_tokens`` (clipped to out_len), ``temperature``, ``top_k`` (<= 0 off),
    ``top_p`` (>= 1 off), ``threshold`` (0 = one draft pass), ``lora`` (1.0 = draft LoRA on in
    the draft passes), ``max_thinking_tokens`` / ``end_think_id`` (-1 = off). Static: the block
    length, the output buffer ``out_len``, ``cache_len`` (>= :func:`linear_cache_len`) and the
    ``acceptance`` rule. Pass float knobs as floats so weak types do not change between calls.

    stats (int32): ``acceptance_lengths`` [B, out_len] (a of each cycle in order, 0 unused),
    ``cycles`` [B], ``draft_passes`` [B], ``position_trials`` / ``position_accepts``
    [B, block_length] (column j >= 1: times drafted position j was verified / accepted;
    column 0: the seed, always kept, = cycles), ``commit_pass`` [B, out_len] (1-based NFE index
    of the pass that emitted each token: 1 = the prefill, else the cycle's verify pass; -1 past
    the end).
    """
    if prompt.ndim != 2:
        raise ValueError(f"prompt must be [batch, length], got shape {prompt.shape}")
    if block_length < 1 or out_len < 1:
        raise ValueError(f"block_length and out_len must be >= 1, got {block_length}, {out_len}")
    if acceptance not in ACCEPTANCE:
        raise ValueError(f"acceptance must be one of {ACCEPTANCE}, got {acceptance!r}")
    need = linear_cache_len(prompt.shape[1], out_len, block_length)
    if cache_len < need:
        raise ValueError(f"cache_len {cache_len} too small: linear speculation needs P + N + B - 2 = {need}")
    prompt = jnp.asarray(prompt, jnp.int32)
    prompt_len = jnp.asarray(prompt_len, jnp.int32)
    kn = make_knobs(
        max_new_tokens, temperature, top_k, top_p, threshold, lora, max_thinking_tokens, end_think_id, out_len
    )
    st = linear_start(
        params, cfg, prompt, prompt_len, key, kn, block_length=block_length, out_len=out_len, cache_len=cache_len
    )
    cycle = functools.partial(linear_cycle, params, cfg, kn=kn, block_length=block_length, acceptance=acceptance)
    # Each live cycle emits >= 1 token, so out_len cycles always suffice.
    st = jax.lax.while_loop(lambda s: (s.step < out_len) & jnp.any(~s.done), lambda s: cycle(st=s), st)
    tokens, num, commit_pass = finish(st, kn.limit, cfg.pad_token_id)
    stats = {
        "acceptance_lengths": st.acceptance_lengths,
        "cycles": st.cycles,
        "draft_passes": st.draft_passes,
        "position_trials": st.position_trials,
        "position_accepts": st.position_accepts,
        "commit_pass": commit_pass,
    }
    return DecodeOutput(tokens=tokens, num_tokens=num, nfe=st.nfe, stats=stats)
