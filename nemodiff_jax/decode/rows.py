"""The row state every mode shares, and the commit step they all end a round with.

A row is one prompt in one slot: its output buffer, how much of it is final (``n_out``), its
stop flags, its NFE count, its own random key and its cache row; ``extra`` holds what only its
mode needs (the draft block, the acceptance statistics, ...), every leaf with the row axis
first. Rows never look at each other: a row's tokens depend only on its prompt, its key and its
knobs, which is what makes slots with refill (and batches) give the tokens of a row run alone.

:func:`commit` is the one commit step (thinking budget is the caller's, then EOS cut, output
write, NFE stamp, done flags); :func:`crop` moves the cache length of the rows that go on.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
from flax import struct
from jaxtyping import Array, ArrayLike, Bool, Int

from ..model.cache import KVCache
from .knobs import Knobs


@struct.dataclass
class Rows:
    tokens: Int[Array, "B N"]
    commit_pass: Int[Array, "B N"]
    n_out: Int[Array, "B"]
    done: Bool[Array, "B"]
    think_done: Bool[Array, "B"]
    nfe: Int[Array, "B"]
    nonfinite: Bool[Array, "B"]  # the row stopped because its logits were NaN/Inf (see stop_nonfinite)
    key: Any  # one PRNG key per row
    cache: Any  # KVCache; None while a cond carries the rows without it
    extra: Any  # dict of per-mode arrays, row axis first


def fresh(b: int, out_len: int, pad: int, key, cache: KVCache, extra: dict, *, nfe=0) -> Rows:
    """Rows with nothing emitted yet."""
    return Rows(
        tokens=jnp.full((b, out_len), pad, jnp.int32),
        commit_pass=jnp.full((b, out_len), -1, jnp.int32),
        n_out=jnp.zeros((b,), jnp.int32),
        done=jnp.zeros((b,), bool),
        think_done=jnp.zeros((b,), bool),
        nfe=jnp.broadcast_to(jnp.asarray(nfe, jnp.int32), (b,)),
        nonfinite=jnp.zeros((b,), bool),
        key=key,
        cache=cache,
        extra=extra,
    )


def put(big: Rows, small: Rows, slot, src: int = 0) -> Rows:
    """``big`` with row ``slot`` replaced by row ``src`` (static) of ``small`` (cache batch axis is 1)."""

    def row(b, s):
        return jax.lax.dynamic_update_index_in_dim(b, s[src].astype(b.dtype), slot, 0)

    cache = big.cache.map_stacks(lambda b, s: jax.lax.dynamic_update_index_in_dim(b, s[:, src], slot, 1), small.cache)
    cache = cache.replace(length=row(big.cache.length, small.cache.length))
    rest = jax.tree.map(row, big.replace(cache=None), small.replace(cache=None))
    return rest.replace(cache=cache)


def stop_nonfinite(r: Rows, *logits) -> Rows:
    """Rows still going whose ``logits`` (``[B, ...]`` each) hold a NaN or Inf are done and
    flagged: they emit nothing from these logits on (a silent stream of token 0 otherwise).
    Each mode calls it on its logits before it chooses tokens from them."""
    finite = [jnp.all(jnp.isfinite(lg.reshape(lg.shape[0], -1)), axis=1) for lg in logits]
    bad = ~r.done & ~functools.reduce(jnp.logical_and, finite)
    return r.replace(nonfinite=r.nonfinite | bad, done=r.done | bad)


def first_index(flags: Bool[Array, "B W"]) -> Int[Array, "B"]:
    """Index of the first True per row, W when there is none."""
    w = flags.shape[1]
    idx = jnp.arange(w, dtype=jnp.int32)[None, :]
    return jnp.min(jnp.where(flags, idx, w), axis=1).astype(jnp.int32)


def write_span(buf: Int[Array, "B N"], start: Int[Array, "B"], values: Int[Array, "B W"], count) -> Int[Array, "B N"]:
    """``buf[b, start[b] + j] = values[b, j]`` for ``j < count[b]`` (positions past N dropped).

    A select over the buffer rather than a scatter: with a small W and N this is what XLA on
    CPU runs fastest, and it never aliases trouble with the loop carry.
    """
    n, w = buf.shape[1], values.shape[1]
    j = jnp.arange(n, dtype=jnp.int32)[None, :] - start[:, None]
    valid = (j >= 0) & (j < count[:, None])
    vals = jnp.take_along_axis(values, jnp.clip(j, 0, w - 1), axis=1)
    return jnp.where(valid, vals.astype(buf.dtype), buf)


def force_think(e: Int[Array, "B W"], a: Int[Array, "B"], n_out, think_done, kn: Knobs):
    """The AR thinking rule on a span: generated index ``budget`` holds end-think.

    ``e[:, :a]`` are the tokens a round would emit from generated index ``n_out`` on. Where the
    budget index falls among them and end-think was not emitted before it, the span is cut
    right after the forced end-think. Returns (e, a)."""
    col = jnp.arange(e.shape[1], dtype=jnp.int32)[None, :]
    k = kn.budget - n_out  # offset of the budget index in this span
    natural = jnp.any((e == kn.end_think[:, None]) & (col < k[:, None]), axis=1)
    force = kn.thinking & ~think_done & (k >= 0) & (k < a) & ~natural
    e = jnp.where(force[:, None] & (col == k[:, None]), kn.end_think[:, None], e)
    return e, jnp.where(force, k + 1, a)


def commit(r: Rows, e: Int[Array, "B W"], a: Int[Array, "B"], live: Bool[Array, "B"], kn: Knobs, *, eos: int,
           mark) -> tuple[Rows, Int[Array, "B"]]:
    """Emit ``e[:, :a]`` for live rows: cut after the first EOS, write tokens and their NFE stamp
    ``mark`` (``[B]``, or one per token ``[B, W]``), count, set done (EOS or the limit) and think_done. Returns (rows, emitted count)."""
    col = jnp.arange(e.shape[1], dtype=jnp.int32)[None, :]
    eos_at = first_index((e == eos) & (col < a[:, None]))
    hit_eos = eos_at < a
    a_out = jnp.where(live, jnp.where(hit_eos, eos_at + 1, a), 0)
    n_out = r.n_out + a_out
    think = kn.thinking & jnp.any((e == kn.end_think[:, None]) & (col < a_out[:, None]), axis=1)
    return r.replace(
        tokens=write_span(r.tokens, r.n_out, e, a_out),
        commit_pass=write_span(r.commit_pass, r.n_out, jnp.broadcast_to(mark[:, None] if mark.ndim == 1 else mark,
                                                                        e.shape), a_out),
        n_out=n_out,
        done=r.done | (live & (hit_eos | (n_out >= kn.limit))),
        think_done=r.think_done | (live & think),
    ), a_out


def crop(cache: KVCache, live: Bool[Array, "B"], advance: Int[ArrayLike, "*B"]) -> KVCache:
    """Advance the length of the rows that go on by ``advance``; the others keep theirs so
    their (ignored) later windows stay inside the cache."""
    return cache.with_length(jnp.where(live, cache.length + advance, cache.length))


def finish(r: Rows, pad: int, limit) -> dict:
    """The per-row result: tokens cut at ``n_out`` and at ``limit`` (a speculative cycle can emit
    past it; pad after), their count, NFE, commit_pass."""
    num = jnp.minimum(jnp.minimum(r.n_out, limit), r.tokens.shape[1])
    valid = jnp.arange(r.tokens.shape[1], dtype=jnp.int32)[None, :] < num[:, None]
    return {
        "tokens": jnp.where(valid, r.tokens, pad),
        "num_tokens": num,
        "nfe": r.nfe,
        "commit_pass": jnp.where(valid, r.commit_pass, -1),
        "nonfinite": r.nonfinite,
    }


# --- statistics of the speculative modes ----------------------------------------------------


def spec_stats(b: int, out_len: int, block_length: int) -> dict:
    z = jnp.zeros
    return {
        "acceptance_lengths": z((b, out_len), jnp.int32),
        "cycles": z((b,), jnp.int32),
        "position_trials": z((b, block_length), jnp.int32),
        "position_accepts": z((b, block_length), jnp.int32),
    }


def accept_cap(span: Int[Array, "B W"], first_out, limit, eos: int) -> Int[Array, "B"]:
    """The most drafted tokens ``span[:, 1:]`` a cycle can accept and still emit: up to the
    first EOS of ``span`` and the tokens left under ``limit``, where ``span[:, 0]`` lands at
    generated index ``first_out``. The commit cuts the rest, so counting them would only say
    how far a draft past the answer's end happened to agree."""
    reach = jnp.minimum(first_index(span == eos), span.shape[1] - 1)
    return jnp.maximum(jnp.minimum(reach, limit - first_out - 1), 0)


def record_cycle(x: dict, n_acc: Int[Array, "B"], live: Bool[Array, "B"]) -> dict:
    """Add one verified cycle: its acceptance length ``a = n_acc + 1`` and per-position counts.

    Drafted position j >= 1 is tried when positions 1..j-1 were accepted (n_acc >= j-1) and
    accepted when n_acc >= j; column 0 is the always-kept seed. So ``sum(accepts) / cycles``
    is the mean acceptance length."""
    width = x["position_trials"].shape[1]
    j = jnp.arange(width, dtype=jnp.int32)[None, :]
    trials = ((n_acc[:, None] >= j - 1) & live[:, None]).astype(jnp.int32)
    accepts = ((n_acc[:, None] >= j) & live[:, None]).astype(jnp.int32)
    cyc = jnp.arange(x["acceptance_lengths"].shape[1], dtype=jnp.int32)[None, :]
    acc = jnp.where(live[:, None] & (cyc == x["cycles"][:, None]), (n_acc + 1)[:, None], x["acceptance_lengths"])
    return {
        **x,
        "acceptance_lengths": acc,
        "cycles": x["cycles"] + live.astype(jnp.int32),
        "position_trials": x["position_trials"] + trials,
        "position_accepts": x["position_accepts"] + accepts,
    }
