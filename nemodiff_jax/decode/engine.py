"""The decode engine: one loop for every mode, S slots with refill, and resumable rounds.

Each mode (:mod:`.ar`, :mod:`.diffusion`, :mod:`.linear_spec`, :mod:`.quadratic_spec`)
contributes three functions over the shared :class:`~.rows.Rows`:

* ``start(params, cfg, prompt, prompt_len, keys, knobs, *, spec)``: its start forward;
* ``step(params, cfg, rows, knobs, *, spec)``: one round, i.e. ONE forward per row (an AR
  step, a denoise or commit pass, a draft or verify pass, a quadratic cycle);
* ``result(rows, knobs, *, spec, pad)``: per-row tokens, counts, NFE and statistics.

The engine owns the rest (gemma's ``SamplerLoop`` and levanter's generation loop are the
models): the prompts wait in a device-side queue ``[Q, P]``; the first S take the slots with one
batched start; after every round, rows that finished are harvested into ``[Q, ...]`` results
(in input order) and, while prompts remain, free slots take the next ones: groups of
``refill_batch`` in one batched start when that many slots are free at once, the rest with a
batch-1 start, each written into its row of the state. Rows are independent, so every row gets the tokens
it gets alone, and finished rows stop costing forwards as soon as a prompt waits.

:func:`decode` runs it all in one jitted ``lax.while_loop`` (the default for batch work).
:func:`init` / :func:`advance` / :func:`peek` split it so a caller can return to the host
every K rounds (streaming); ``advance`` donates its state, so the cache is updated in place.
"""

from __future__ import annotations

import functools
from types import ModuleType
from typing import Any

import jax
import jax.numpy as jnp
from flax import struct
from jaxtyping import Array, ArrayLike, Int

from ..model.config import NLDConfig
from . import ar, diffusion, linear_spec, quadratic_spec
from .common import DecodeOutput
from .knobs import Knobs, LoopSpec
from .rows import Rows, put

MODULES: dict[str, ModuleType] = {
    "ar": ar, "diffusion": diffusion, "linear_spec": linear_spec, "quadratic_spec": quadratic_spec,
}


@struct.dataclass
class Engine:
    """The loop carry: the slots' rows, which prompt sits in each slot (-1 none), the queue
    head, the round counter and the harvested per-prompt results ``[Q, ...]``."""

    rows: Rows
    slot: Int[Array, "S"]
    next: Int[Array, ""]
    rounds: Int[Array, ""]
    out: dict


@struct.dataclass
class Queue:
    """The prompts and their per-prompt keys and knobs, ``[Q, ...]`` each (host numpy arrays
    or device arrays: ``generate`` hands numpy to the jit, one transfer per leaf, no eager ops)."""

    prompt: Int[ArrayLike, "Q P"]
    prompt_len: Int[ArrayLike, "Q"]
    keys: Any  # typed row keys [Q], or int [Q, 2] seeds: see row_keys
    knobs: Knobs


def row_keys(keys) -> jax.Array:
    """Typed row keys from ``keys``: returned as is, or built from int ``[Q, 2]`` rows
    ``(seed, i)``: ``fold_in(key(seed), i)``, or ``key(seed)`` alone where ``i < 0``. Built inside
    the jit so a call costs no host-side key dispatches."""
    if jnp.issubdtype(keys.dtype, jax.dtypes.prng_key):
        return keys

    def one(row):
        base = jax.random.key(row[0].astype(jnp.uint32))
        folded = jax.random.fold_in(base, jnp.maximum(row[1], 0).astype(jnp.uint32))
        return jax.random.wrap_key_data(jnp.where(row[1] >= 0, jax.random.key_data(folded),
                                                  jax.random.key_data(base)))

    return jax.vmap(one)(keys)


def _mode(spec: LoopSpec) -> ModuleType:
    return MODULES[spec.mode]


def _slot_knobs(q: Queue, slot) -> Knobs:
    return q.knobs.take(jnp.maximum(slot, 0))


def init(params, cfg: NLDConfig, q: Queue, *, spec: LoopSpec) -> Engine:
    """The first ``spec.slots`` prompts started in one batch; empty result buffers."""
    mod, s = _mode(spec), spec.slots
    first = jax.tree.map(lambda x: x[:s], q)
    rows = mod.start(params, cfg, first.prompt, first.prompt_len, first.keys, first.knobs, spec=spec)
    res = jax.eval_shape(lambda r: mod.result(r, first.knobs, spec=spec, pad=cfg.pad_token_id), rows)
    n = q.prompt.shape[0]
    out = jax.tree.map(lambda a: jnp.zeros((n,) + a.shape[1:], a.dtype), res)
    return Engine(rows=rows, slot=jnp.arange(s, dtype=jnp.int32), next=jnp.int32(s), rounds=jnp.int32(0), out=out)


def _harvest(cfg, e: Engine, q: Queue, spec: LoopSpec) -> Engine:
    """Copy the results of the rows that just finished to their prompts' places; free the slots.

    The ``cond`` sees the rows without their cache: a branch operand is not copied then."""
    mod = _mode(spec)
    ready = e.rows.done & (e.slot >= 0)

    def copy(args):
        rows, out, slot = args
        res = mod.result(rows, _slot_knobs(q, slot), spec=spec, pad=cfg.pad_token_id)
        dest = jnp.where(ready, slot, q.prompt.shape[0])  # out of range: dropped
        out = jax.tree.map(lambda o, r: o.at[dest].set(r, mode="drop"), out, res)
        return out, jnp.where(ready, -1, slot)

    out, slot = jax.lax.cond(jnp.any(ready), copy, lambda a: (a[1], a[2]),
                             (e.rows.replace(cache=None), e.out, e.slot))
    return e.replace(out=out, slot=slot)


def _refill(params, cfg, e: Engine, q: Queue, spec: LoopSpec) -> Engine:
    """While slots are free and prompts wait: start the next prompts into the free slots.

    Groups of ``spec.refill_batch`` start together in one batched forward while that many slots
    are free and that many prompts wait (rows of one round often end together); the rest start
    one at a time. A start's rows are independent, so the group changes no row's tokens."""
    mod, n = _mode(spec), q.prompt.shape[0]

    def start_group(g: int):
        def body(e: Engine) -> Engine:
            free = jnp.argsort(e.slot >= 0, stable=True)[:g]  # the first g free slots
            j = e.next
            rows = jax.tree.map(lambda x: jax.lax.dynamic_slice_in_dim(x, j, g, 0), q)
            small = mod.start(params, cfg, rows.prompt, rows.prompt_len, rows.keys, rows.knobs, spec=spec)
            big = e.rows
            for k in range(g):
                big = put(big, small, free[k], src=k)
            slot = e.slot.at[free].set(j + jnp.arange(g, dtype=jnp.int32))
            return e.replace(rows=big, slot=slot, next=j + g)

        return body

    def room(g: int):
        return lambda e: (jnp.sum(e.slot < 0) >= g) & (e.next + g <= n)

    g = min(spec.refill_batch, spec.slots, n - spec.slots)
    if g > 1:  # static
        e = jax.lax.while_loop(room(g), start_group(g), e)
    return jax.lax.while_loop(room(1), start_group(1), e)


def _round(params, cfg, e: Engine, q: Queue, spec: LoopSpec) -> Engine:
    rows = _mode(spec).step(params, cfg, e.rows, _slot_knobs(q, e.slot), spec=spec)
    e = _harvest(cfg, e.replace(rows=rows, rounds=e.rounds + 1), q, spec)
    if q.prompt.shape[0] > spec.slots:  # static: refill code only where prompts can wait
        e = _refill(params, cfg, e, q, spec)
    return e


def _busy(e: Engine, q: Queue):
    return jnp.any(e.slot >= 0) | (e.next < q.prompt.shape[0])


def _advance(params, cfg, e: Engine, q: Queue, max_rounds, spec: LoopSpec) -> Engine:
    # Harvest first: rows can be finished right at their start (limit 0, a first-token EOS).
    e = _harvest(cfg, e, q, spec)
    stop = e.rounds + max_rounds
    return jax.lax.while_loop(
        lambda e: _busy(e, q) & (e.rounds < stop), lambda e: _round(params, cfg, e, q, spec), e
    )


@functools.partial(jax.jit, static_argnames=("cfg", "spec"))
def decode(params, cfg: NLDConfig, q: Queue, *, spec: LoopSpec) -> DecodeOutput:
    """Every prompt of the queue through ``spec.slots`` slots, on device, to the end."""
    q = q.replace(keys=row_keys(q.keys))
    e = init(params, cfg, q, spec=spec)
    e = _advance(params, cfg, e, q, jnp.int32(2**30), spec)
    return DecodeOutput(tokens=e.out["tokens"], num_tokens=e.out["num_tokens"], nfe=e.out["nfe"],
                        stats=e.out["stats"])


@functools.partial(jax.jit, static_argnames=("cfg", "spec"))
def start(params, cfg: NLDConfig, q: Queue, *, spec: LoopSpec) -> tuple[Engine, Queue]:
    """The state after the first starts, and the queue with its row keys built (streaming)."""
    q = q.replace(keys=row_keys(q.keys))
    return init(params, cfg, q, spec=spec), q


@functools.partial(jax.jit, static_argnames=("cfg", "spec"), donate_argnames=("e",))
def advance(params, cfg: NLDConfig, e: Engine, q: Queue, max_rounds, *, spec: LoopSpec) -> Engine:
    """At most ``max_rounds`` more rounds (traced: any K, one program); the state is donated."""
    return _advance(params, cfg, e, q, jnp.asarray(max_rounds, jnp.int32), spec)


def busy(e: Engine, q: Queue) -> bool:
    return bool(_busy(e, q))


@functools.partial(jax.jit, static_argnames=("cfg", "spec"))
def peek(cfg: NLDConfig, e: Engine, q: Queue, *, spec: LoopSpec) -> dict:
    """What is decided so far, per prompt: the harvested results, overlaid with the committed
    tokens of the rows still in a slot (and, for diffusion, their current block)."""
    mod = _mode(spec)
    live = mod.result(e.rows, _slot_knobs(q, e.slot), spec=spec, pad=cfg.pad_token_id)
    n = q.prompt.shape[0]
    dest = jnp.where(e.slot >= 0, e.slot, n)
    tokens = e.out["tokens"].at[dest].set(live["tokens"], mode="drop")
    num = e.out["num_tokens"].at[dest].set(live["num_tokens"], mode="drop")
    finished = jnp.zeros((n,), bool).at[jnp.arange(n)].set(True)
    waiting = jnp.arange(n) >= e.next
    finished = finished & ~waiting
    finished = finished.at[dest].set(False, mode="drop")
    view = {"tokens": tokens, "num_tokens": num, "finished": finished}
    if spec.mode == "diffusion":
        canvas = jnp.full((n, spec.block_length), cfg.mask_token_id, jnp.int32)
        view["canvas"] = canvas.at[dest].set(e.rows.extra["x"], mode="drop")
    return view


def run(params, cfg: NLDConfig, prompt, prompt_len, key, *, mode: str, out_len: int, cache_len: int,
        block_length: int = 1, acceptance: str = "speculative", policy: str = "threshold", slots: int | None = None,
        refill_batch: int = 4, **knobs) -> DecodeOutput:
    """:func:`decode` on right-padded arrays, for tests and tools that bypass ``generate``'s host
    checks. ``key``: one key (row i folds in i) or one per row; ``knobs``: :meth:`Knobs.make`'s
    keywords, scalars or per-row."""
    from . import sampling

    b = prompt.shape[0]
    spec = LoopSpec(mode=mode, block_length=block_length, out_len=out_len, cache_len=cache_len,
                    prompt_width=prompt.shape[1], acceptance=acceptance, policy=policy, slots=slots or b,
                    refill_batch=refill_batch)
    q = Queue(prompt=jnp.asarray(prompt, jnp.int32), prompt_len=jnp.asarray(prompt_len, jnp.int32),
              keys=sampling.row_keys(key, b), knobs=Knobs.make(b, **knobs).clipped(out_len))
    return decode(params, cfg, q, spec=spec)
