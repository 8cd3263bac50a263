"""Speed-of-light (SOL) oracle for block diffusion (docs/ALGORITHMS.md, "Speed of light"): how many tokens per forward
could ANY unmasking sampler reach while reproducing the slow serial output exactly?

Definitions (greedy decoding, T = 0, causal context as in docs/ALGORITHMS.md, "Block diffusion decoding"):

* **Serial reference.** Block diffusion that commits, per denoise forward, the single most
  confident masked position (quota 1; ties to the left): the ``quota`` policy with
  ``steps = block_length``. Its output, cut after the first EOS, is the **target**. Per block
  it spends one denoise forward per mask (fewer if an EOS with no mask to its left ends the
  block early) plus one causal commit forward.
* **Canvas.** Within a block, a state is the set S of committed masked positions; the canvas
  holds the target token at S (and at the seed), the mask token elsewhere. Because every
  committed token equals the target, the canvas, hence the model's predictions, depend on S
  only. One denoise forward at S yields the greedy prediction ``argmax_p(S)`` of each masked p.
* **Valid step.** From S, a non-empty set C of masked positions may be committed together iff
  ``argmax_p(S) == target[p]`` for every p in C. A **schedule** is a sequence of valid steps
  from the empty state to a state holding every masked position up to the block's first
  target EOS. Positions after that EOS are cut from the output; a schedule may commit them
  only with the serial reference's token there (so the serial schedule is one of them).
* **SOL.** The fewest denoise forwards over all schedules, per block; SOL TPF = target tokens /
  (sum of per-block forwards + one commit forward per block), counted like
  ``decode.diffusion`` counts NFE. The serial schedule is always valid, so SOL >= serial TPF.

Search: breadth-first over states, one batched jitted forward per level (all canvases of a
level in fixed-size row chunks, so one compile serves the whole search). ``exact``: every
non-empty subset of the matching positions is a successor; the first level holding a state
whose matches cover all remaining positions is optimal. ``beam``: successors are the
confidence-ordered prefixes of the matching set ("dynamic compaction"); the ``beam`` states
with the most commits are kept, plus the serial trajectory's state, so the search never does
worse than serial; the result is an achievable schedule, i.e. a lower bound on SOL TPF.
``budget`` caps canvases evaluated per block; past it the best schedule found so far (at
worst the serial one) is reported with ``exact = False``. Greedy maximal commitment (commit
every match) is the beam's first candidate but can dead-end, which is why the search keeps more.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int

from ..model import masks
from ..decode import sampling
from ..model.forward import forward
from ..model.cache import KVCache
from ..model.config import NLDConfig
from ..decode.common import pad_prompts, positions_from, prefill

Predict = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]


@functools.partial(jax.jit, static_argnames=("cfg",))
def canvas_predictions(
    params, cfg: NLDConfig, cache: KVCache, canvases: Int[Array, "N L"], lora=0.0
) -> tuple[Int[Array, "N L"], Float[Array, "N L"]]:
    """Greedy token (mask excluded) and its raw-softmax confidence at every canvas position, for
    N canvases of one block denoised over the same one-row cached prefix (a peek: no write)."""
    n, bl = canvases.shape
    length = jnp.broadcast_to(cache.length[:1], (n,))
    rows = cache.map_stacks(lambda x: jnp.broadcast_to(x[:, :1], (x.shape[0], n) + x.shape[2:])).replace(length=length)
    logits, _ = forward(params, cfg, canvases, positions_from(length, bl), masks.bidirectional(length, bl, n), rows, lora)
    cand = sampling.greedy(logits, cfg.mask_token_id)
    return cand, sampling.confidence(logits, cand)


@functools.partial(jax.jit, static_argnames=("cfg",))
def _commit(params, cfg: NLDConfig, cache: KVCache, block: Int[Array, "1 L"]):
    length, bl = cache.length, block.shape[1]
    logits, cache = forward(params, cfg, block, positions_from(length, bl), masks.causal(length, bl, 1), cache, 0.0)
    return sampling.greedy(logits[:, -1], cfg.mask_token_id)[0], cache.with_length(length + bl)


@functools.partial(jax.jit, static_argnames=("cfg", "cache_len"))
def _prefill(params, cfg: NLDConfig, prompt, prompt_len, *, cache_len: int):
    cache = KVCache.for_params(params, cfg, 1, cache_len, jnp.dtype(cfg.dtype))
    logits, cache = prefill(params, cfg, prompt, prompt_len, cache)
    return sampling.greedy(logits, cfg.mask_token_id)[0], cache


def chunked(predict_rows: Predict, chunk: int) -> Predict:
    """Evaluate any number of canvases in fixed ``chunk``-row calls (one compiled shape)."""

    def run(canvases: np.ndarray):
        outs_c, outs_p = [], []
        for i in range(0, len(canvases), chunk):
            part = canvases[i : i + chunk]
            padded = np.concatenate([part, np.repeat(part[-1:], chunk - len(part), axis=0)])
            c, p = predict_rows(padded)
            outs_c.append(np.asarray(c)[: len(part)])
            outs_p.append(np.asarray(p)[: len(part)])
        return np.concatenate(outs_c), np.concatenate(outs_p)

    return run


# --------------------------------------------------------------------------------- block level


@dataclasses.dataclass
class BlockSearch:
    """Best schedule found for one block. ``schedule[i]`` = positions committed at forward i+1."""

    steps: int
    schedule: list[list[int]]
    forwards: int
    exact: bool
    serial_steps: int = 0
    target: list[int] | None = None  # the serial reference's final block canvas (set by sol_oracle)


def serial_block(predict: Predict, canvas0: np.ndarray, mask_id: int, eos_id: int) -> tuple[np.ndarray, list[int]]:
    """Run the serial reference on one block: (final canvas, positions in commit order)."""
    x = canvas0.copy()
    order: list[int] = []
    while (x == mask_id).any() and not _eos_stop(x, mask_id, eos_id):
        cand, conf = predict(x[None])
        masked = x == mask_id
        score = np.where(masked, conf[0], -np.inf)
        p = int(np.flatnonzero(score == score.max())[0])  # most confident, ties to the left
        x[p] = cand[0, p]
        order.append(p)
    return x, order


def _eos_stop(x: np.ndarray, mask_id: int, eos_id: int) -> bool:
    eos = np.flatnonzero(x == eos_id)
    msk = np.flatnonzero(x == mask_id)
    return bool(eos.size > 0 and (msk.size == 0 or eos[0] < msk[0]))


def commit_positions(canvas0: np.ndarray, target: np.ndarray, mask_id: int, eos_id: int) -> tuple[list[int], list[int]]:
    """``(free, goal)``: the masked positions the serial reference filled, which a schedule may
    commit (with the serial's token), and those up to the target's first EOS, which it must.
    Positions after the EOS are cut from the output; allowing them keeps the serial schedule
    itself inside the searched family."""
    eos = np.flatnonzero(target == eos_id)
    last = int(eos[0]) if eos.size else len(target) - 1
    free = [int(p) for p in np.flatnonzero((canvas0 == mask_id) & (target != mask_id))]
    return free, [p for p in free if p <= last]


def _canvas(canvas0, target, free, state: int) -> np.ndarray:
    x = canvas0.copy()
    for i, p in enumerate(free):
        if state >> i & 1:
            x[p] = target[p]
    return x


def _ones(x: int) -> int:
    return bin(x).count("1")


def search_block(
    predict: Predict,
    canvas0: np.ndarray,
    target: np.ndarray,
    mask_id: int,
    eos_id: int,
    serial_order: Sequence[int],
    *,
    mode: str = "auto",
    beam: int = 7,
    budget: int = 2048,
) -> BlockSearch:
    """Fewest denoise forwards reproducing ``target`` from ``canvas0`` (module docstring).

    ``mode``: ``exact`` (all subsets), ``beam``, or ``auto`` (exact when 2^free <= budget).
    ``serial_order`` is the serial reference's commit order: its length is the fallback step
    count and its prefixes are kept in the beam.
    """
    free, goal = commit_positions(canvas0, target, mask_id, eos_id)
    serial = [[int(p)] for p in serial_order]
    if not goal:
        return BlockSearch(0, [], 0, True, len(serial_order))
    if mode == "auto":
        mode = "exact" if 2 ** len(free) <= budget else "beam"
    if mode not in ("exact", "beam"):
        raise ValueError(f"unknown oracle search mode {mode!r}; expected exact, beam or auto")
    index = {p: i for i, p in enumerate(free)}
    goal_bits = sum(1 << index[p] for p in goal)
    serial_states, s = [0], 0  # the serial trajectory, kept in the beam
    for p in serial_order:
        s |= 1 << index[p]
        serial_states.append(s)
    best = len(serial_order)
    parents: dict[int, tuple[int, int] | None] = {0: None}
    level, scores = [0], {0: 0.0}
    forwards, depth = 0, 0
    while level and depth + 1 < best:
        if forwards + len(level) > budget:
            return BlockSearch(best, serial, forwards, False, best)
        cand, conf = predict(np.stack([_canvas(canvas0, target, free, st) for st in level]))
        forwards += len(level)
        nxt: dict[int, float] = {}
        via: dict[int, tuple[int, int]] = {}
        for row, st in enumerate(level):
            ok = [i for i, p in enumerate(free) if not st >> i & 1 and cand[row, p] == target[p]]
            bits = sum(1 << i for i in ok)
            need = goal_bits & ~st
            if not need & ~bits:  # every goal position left matches now: done at this depth
                return BlockSearch(depth + 1, _schedule(parents, st, need, free), forwards, mode == "exact", best)
            for sub, gain in _successors(bits, ok, conf[row], free, mode):
                s2 = st | sub
                if s2 not in parents and s2 not in nxt:
                    via[s2] = (st, sub)
                    nxt[s2] = scores[st] + gain
        if mode == "beam" and len(nxt) > beam:
            keep = sorted(nxt, key=lambda s2: (-_ones(s2 & goal_bits), -_ones(s2), -nxt[s2], s2))[:beam]
            if depth + 1 < len(serial_states) and serial_states[depth + 1] in nxt:
                keep = list(dict.fromkeys(keep + [serial_states[depth + 1]]))
            nxt = {s2: nxt[s2] for s2 in keep}
        parents.update({s2: via[s2] for s2 in nxt})  # only states that stay: pruned ones may come back later
        level = sorted(nxt)
        scores.update(nxt)
        depth += 1
    return BlockSearch(best, serial, forwards, mode == "exact", best)


def _successors(bits: int, ok: list[int], conf: np.ndarray, free: list[int], mode: str):
    """Non-empty subsets of the matching positions ``bits`` (exact) or their confidence-ordered prefixes."""
    if mode == "exact":
        sub = bits
        while sub:
            yield sub, float(sum(conf[free[i]] for i in range(len(free)) if sub >> i & 1))
            sub = (sub - 1) & bits
        return
    ranked = sorted(ok, key=lambda i: (-conf[free[i]], free[i]))
    sub, gain = 0, 0.0
    for i in ranked:
        sub |= 1 << i
        gain += float(conf[free[i]])
        yield sub, gain


def _schedule(parents, state: int, last: int, free: list[int]) -> list[list[int]]:
    steps = [last]
    while parents[state] is not None:
        state, sub = parents[state]
        steps.append(sub)
    return [[p for i, p in enumerate(free) if sub >> i & 1] for sub in reversed(steps)]


# -------------------------------------------------------------------------------- prompt level


@dataclasses.dataclass
class OracleResult:
    """One prompt: the serial target and the SOL schedule, with NFE counted as in docs/ALGORITHMS.md, "Block diffusion decoding".

    ``commit_step`` / ``serial_commit_step``: the 1-based NFE index of the forward that committed
    each target token (0 = the first seed, which comes from the uncounted prefill).
    """

    tokens: list[int]
    serial_nfe: int
    oracle_nfe: int
    blocks: list[BlockSearch]
    serial_commit_step: list[int]
    commit_step: list[int]

    @property
    def num_tokens(self) -> int:
        return len(self.tokens)

    @property
    def serial_tpf(self) -> float:
        return self.num_tokens / max(self.serial_nfe, 1)

    @property
    def oracle_tpf(self) -> float:
        return self.num_tokens / max(self.oracle_nfe, 1)

    @property
    def exact(self) -> bool:
        return all(b.exact for b in self.blocks)

    @property
    def forwards(self) -> int:
        return sum(b.forwards for b in self.blocks)


def check_oracle_args(block_length, thresholds=(), beam=None, budget: int = 2048) -> None:
    """One ValueError for the oracle knobs that mean nothing (block 0, beam 0, a negative budget)."""
    def whole(v):
        return isinstance(v, (int, np.integer)) and not isinstance(v, bool)

    if not whole(block_length) or block_length < 1:
        raise ValueError(f"block length must be an integer >= 1, got {block_length!r}")
    if beam is not None and (not whole(beam) or beam < 1):
        raise ValueError(f"beam must be an integer >= 1, got {beam!r}")
    if not whole(budget) or budget < 1:
        raise ValueError(f"budget must be an integer >= 1 (canvas forwards per block), got {budget!r}")
    for t in thresholds:
        if not 0.0 <= float(t) <= 1.0:
            raise ValueError(f"thresholds must be in [0, 1], got {t!r}")


def sol_oracle(
    model,
    prompt_ids: Sequence[int],
    *,
    block_length: int = 8,
    max_new_tokens: int = 64,
    mode: str = "auto",
    beam: int | None = None,
    budget: int = 2048,
    chunk: int | None = None,
    lora: bool = False,
) -> OracleResult:
    """The SOL oracle for one prompt (module docstring). Host loop, jitted forwards.

    ``mode``/``beam``/``budget`` (canvas forwards per block) steer :func:`search_block`; the beam
    defaults to ``max(7, block_length - 1)`` (narrow beams miss schedules at block 32);
    ``chunk`` is the row count of every canvas forward (default ``beam + 1``: a beam level is
    one call); ``lora``: the draft LoRA in the denoise passes (off by default, as in the
    reference diffusion decoder). The thinking budget is not modelled.
    """
    check_oracle_args(block_length, (), beam, budget)
    cfg, params = model.config, model.params
    mask_id, eos_id = cfg.mask_token_id, cfg.eos_token_id
    bl = block_length
    beam = max(7, bl - 1) if beam is None else beam
    chunk = beam + 1 if chunk is None else chunk
    n_blocks = max(max_new_tokens // bl, 1)
    prompt, plen = pad_prompts([list(prompt_ids)], cfg.pad_token_id)
    cache_len = max(prompt.shape[1], len(prompt_ids) + n_blocks * bl)
    cache_len = -(-cache_len // 64) * 64
    seed, cache = _prefill(params, cfg, prompt, plen, cache_len=cache_len)
    seed = int(seed)
    lora_arr = jnp.float32(1.0 if lora else 0.0)

    out: list[int] = []
    blocks: list[BlockSearch] = []
    serial_nfe = oracle_nfe = 0
    serial_step: list[int] = []
    oracle_step: list[int] = []
    seed_pass = (0, 0)
    for _ in range(n_blocks):
        cache_now = cache
        predict = chunked(lambda c, cache_now=cache_now: canvas_predictions(params, cfg, cache_now, jnp.asarray(c), lora_arr), chunk)
        canvas0 = np.full((bl,), mask_id, np.int64)
        canvas0[0] = seed
        target, order = serial_block(predict, canvas0, mask_id, eos_id)
        res = search_block(predict, canvas0, target, mask_id, eos_id, order, mode=mode, beam=beam, budget=budget)
        res.target = [int(t) for t in target]
        blocks.append(res)
        s_step = _step_index(order, bl, seed_pass[0], serial_nfe)
        o_step = _step_index([p for step in res.schedule for p in step], bl, seed_pass[1], oracle_nfe, res.schedule)
        serial_nfe += len(order) + 1
        oracle_nfe += res.steps + 1
        eos = np.flatnonzero(target == eos_id)
        keep = int(eos[0]) + 1 if eos.size else bl
        out.extend(int(t) for t in target[:keep])
        serial_step.extend(s_step[:keep])
        oracle_step.extend(o_step[:keep])
        if eos.size:
            break
        seed_arr, cache = _commit(params, cfg, cache, jnp.asarray(target[None], jnp.int32))
        seed = int(seed_arr)
        seed_pass = (serial_nfe, oracle_nfe)
    return OracleResult(out, serial_nfe, oracle_nfe, blocks, serial_step, oracle_step)


def _step_index(order, bl, seed_pass, nfe0, schedule=None) -> list[int]:
    """Per block position: the global NFE index that committed it (seed at ``seed_pass``)."""
    idx = [-1] * bl
    idx[0] = seed_pass
    steps = schedule if schedule is not None else [[p] for p in order]
    for i, group in enumerate(steps):
        for p in group:
            idx[p] = nfe0 + i + 1
    return idx
