"""Infilling: fill masks placed between a prefix and a suffix (docs/ALGORITHMS.md, "Infilling and revision").

NLD's bidirectional window makes fill-in-the-middle native. Per row:

1. the prefix goes through the chunked causal prefill into the static cache (not counted in NFE);
2. the window ``[M x n, suffix]`` sits right after it (positions ``prefix_len ...``) and is
   denoised under one bidirectional forward per step over ``cache[:prefix_len] ++ window``:
   the masks see the prefix and the whole window, the suffix included; the cache length never
   moves (the window's K/V are rewritten each step);
3. candidates are the greedy tokens (mask excluded) at T = 0, else a sample at T; the unmask
   policy (:mod:`nemodiff_jax.decode.unmask`) picks which masked positions to commit; committed
   tokens are final. A row stops when it has no mask left.

The same loop serves :mod:`.revise`: there the window is the text after the first remasked
position, with masks wherever the text is to be rewritten (the masks need not be contiguous).

The model was trained on windows of ONE block (``config.block_size``): a window
(masks + suffix) longer than that is allowed, but it is outside what training saw.

Shapes: rows are right-padded twice, the prefix to ``[B, P]`` (``prefix_len`` hides the padding
from the cache) and the window to ``[B, W]`` (``window_len`` hides it from the attention), so rows
of one batch may each have their own prefix, length and suffix, and each row gets the tokens it
gets alone. Static: the config, the policy name and the two padded widths. Traced per row:
threshold, temperature, top-k, top-p, gamma, the quota ``steps``, LoRA and the row keys, so
changing them never recompiles.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct
from jaxtyping import Array, Bool, Int

from . import sampling, unmask
from ..model import masks, sharding
from ..model.cache import KVCache
from ..model.config import NLDConfig
from ..model.forward import Model, forward
from .common import choose, positions_from, prefill
from .knobs import Knobs

BUCKET = 16


@struct.dataclass
class Fill:
    """The denoise carry: the window, each position's commit pass (0 = given, -1 = masked),
    the per-row step count (= NFE) and the row keys."""

    x: Int[Array, "B W"]
    passes: Int[Array, "B W"]
    steps: Int[Array, "B"]
    key: Any


def _masked(x, window_len, mask_id: int) -> Bool[Array, "B W"]:
    col = jnp.arange(x.shape[1], dtype=jnp.int32)[None, :]
    return (x == mask_id) & (col < window_len[:, None])


@functools.partial(jax.jit, static_argnames=("cfg", "policy"))
def denoise(params, cfg: NLDConfig, prefix: Int[Array, "B P"], prefix_len: Int[Array, "B"], window: Int[Array, "B W"],
            window_len: Int[Array, "B"], *, keys, knobs: Knobs, steps: Int[Array, "B"], policy: str) -> dict:
    """Denoise every mask of ``window`` (right after each row's cached prefix) to the end.

    ``steps``: the step budget the quota policies split each row's masks over (a row commits
    ``n_masked // steps`` tokens per step, the remainder first; ``steps = n_masked`` is one per
    step). Returns ``{"window", "commit_pass", "nfe"}``: the filled window, the 1-based pass that
    committed each position (0 for given tokens, -1 past ``window_len``), forwards per row.
    """
    b, p = prefix.shape
    w = window.shape[1]
    m = cfg.mask_token_id
    cache = KVCache.for_params(params, cfg, b, p + w, jnp.dtype(cfg.dtype))
    _, cache = prefill(params, cfg, prefix, prefix_len, cache)
    masked0 = _masked(window, window_len, m)
    n_masked0 = jnp.sum(masked0, axis=1).astype(jnp.int32)
    col = jnp.arange(w, dtype=jnp.int32)[None, :]
    passes0 = jnp.where(masked0, -1, jnp.where(col < window_len[:, None], 0, -1))
    pos = positions_from(prefix_len, w)
    attn = masks.bidirectional(prefix_len, w, b, window_len)
    pick = jax.vmap(unmask.get(policy))

    def body(s: Fill) -> Fill:
        masked = _masked(s.x, window_len, m)
        live = jnp.any(masked, axis=1)
        logits, _ = forward(params, cfg, s.x, pos, attn, cache, knobs.lora)
        k_cand, k_pol = sampling.split_rows(sampling.fold_rows(s.key, s.steps), 2)
        cand = choose(logits, k_cand, knobs, m)
        # unmask.quota_at with a traced per-row step budget
        budget = jnp.maximum(steps, 1)
        quota = n_masked0 // budget + (s.steps < n_masked0 % budget).astype(jnp.int32)
        fill = pick(logits, cand, masked, k_pol, unmask.UnmaskParams(knobs.threshold, knobs.gamma, quota))
        nxt = s.steps + live.astype(jnp.int32)
        return Fill(x=jnp.where(fill, cand, s.x), passes=jnp.where(fill, nxt[:, None], s.passes), steps=nxt,
                    key=s.key)

    def more(s: Fill):
        # Every step commits at least one mask of every live row: at most W steps.
        return jnp.any(_masked(s.x, window_len, m)) & (jnp.max(s.steps) < w)

    s = jax.lax.while_loop(more, body, Fill(window, passes0, jnp.zeros((b,), jnp.int32), keys))
    return {"window": s.x, "commit_pass": s.passes, "nfe": s.steps}


@functools.partial(jax.jit, static_argnames=("cfg", "policy"))
def _denoise_flat(params, cfg, args: tuple, *, policy):
    """:func:`denoise` over ``(prefix, prefix_len, window, window_len, keys, knob leaves, steps)``:
    the knobs as a tuple of arrays, so ``lower()`` can rebuild its placeholders (the
    runtime-checked :class:`Knobs` rejects them) and compile ahead of time."""
    prefix, prefix_len, window, window_len, keys, knob_leaves, steps = args
    knobs = jax.tree.unflatten(jax.tree.structure(Knobs.make(1)), knob_leaves)
    return denoise(params, cfg, prefix, prefix_len, window, window_len, keys=keys, knobs=knobs, steps=steps,
                   policy=policy)


# --------------------------------------------------------------------------- host side


@dataclasses.dataclass
class InfillResult:
    """Per row: the filled tokens (``length`` of them), their text, the forwards spent (NFE:
    denoise steps; the prefill is not counted), the 1-based pass that committed each filled
    token, and the whole canvas ``prefix + filled + suffix`` as ids. ``compile_time`` /
    ``wall_time``: seconds spent compiling (0 when the program was cached) and decoding."""

    tokens: list[list[int]]
    nfe: list[int]
    commit_pass: list[list[int]]
    canvas: list[list[int]]
    prefix_len: list[int]
    wall_time: float
    compile_time: float
    texts: list[str] | None = None


def as_ids(model: Model, x, what: str, *, bos: bool) -> list[int]:
    """A string (encoded; BOS prepended when ``bos``, as every prompt is) or a list of ids."""
    if isinstance(x, str):
        if model.tokenizer is None:
            raise ValueError(f"{what}: strings need a model with a tokenizer (model.tokenizer is None)")
        return model.tokenizer.encode_prompt(x) if bos else model.tokenizer.encode(x)
    if isinstance(x, (np.ndarray, jax.Array)):
        x = np.asarray(x).tolist()
    if not isinstance(x, Sequence):
        raise ValueError(f"{what}: expected a string or a list of token ids, got {type(x).__name__}")
    bad = [t for t in x if isinstance(t, bool) or not isinstance(t, (int, np.integer))]
    if bad:
        raise ValueError(f"{what}: token ids must be integers, got {bad[0]!r}")
    ids = [int(t) for t in x]
    out = [t for t in ids if not 0 <= t < model.config.vocab_size]
    if out:
        raise ValueError(f"{what}: token ids {out[:5]} outside the vocabulary [0, {model.config.vocab_size})")
    return ids


def rows_of(x, n: int | None, what: str) -> list:
    """A batch: one string / id list for a single row, or a list of them."""
    if isinstance(x, str) or (isinstance(x, Sequence) and x and all(isinstance(t, (int, np.integer)) for t in x)):
        x = [x]
    elif isinstance(x, Sequence) and len(x) == 0 and n is not None:  # [] = no suffix for every row
        x = [[]]
    if not isinstance(x, Sequence) or isinstance(x, str) or len(x) == 0:
        raise ValueError(f"{what}: expected a string, a list of ids, or a non-empty list of either")
    x = list(x)
    if n is not None and len(x) == 1 and n > 1:
        x = x * n
    if n is not None and len(x) != n:
        raise ValueError(f"{what}: got {len(x)} rows for {n} prefixes; give one per prefix or one for all")
    return x


def knobs_for(n: int, *, threshold, temperature, top_k, top_p, gamma, lora: float) -> Knobs:
    """Validated per-row knobs (scalars or one per row)."""
    from .generate import _not_number, _per_row, check_sampling

    per = {k: _per_row(k, v, n) for k, v in
           dict(threshold=threshold, temperature=temperature, top_k=top_k, top_p=top_p, gamma=gamma).items()}
    for t in per["threshold"]:
        if t is not None and (_not_number(t) or not 0.0 <= float(t) <= 1.0):
            raise ValueError(f"threshold must lie in [0, 1] or be None, got {t!r}")
    if len({t is None for t in per["threshold"]}) > 1:
        raise ValueError("threshold: None (the quota schedule) cannot be mixed with per-row values")
    check_sampling(per)
    for g in per["gamma"]:
        if _not_number(g) or not np.isfinite(g):
            raise ValueError(f"gamma must be a finite number, got {g!r}")
    return Knobs.make(n, temperature=np.asarray(per["temperature"], np.float32),
                      top_k=np.asarray(per["top_k"], np.int32), top_p=np.asarray(per["top_p"], np.float32),
                      threshold=np.asarray([0.0 if t is None else t for t in per["threshold"]], np.float32),
                      gamma=np.asarray(per["gamma"], np.float32), lora=lora)


def policy_name(policy: str, threshold) -> str:
    unmask.get(policy)
    first = threshold[0] if isinstance(threshold, (list, tuple, np.ndarray)) and len(threshold) else threshold
    return "quota" if policy == "threshold" and first is None else policy


def bucket(n: int) -> int:
    return max(BUCKET, -(-n // BUCKET) * BUCKET)


def padded(rows: list[list[int]], width: int, pad: int) -> np.ndarray:
    arr = np.full((len(rows), width), pad, np.int32)
    for i, r in enumerate(rows):
        arr[i, : len(r)] = r
    return arr


def row_keys(seed, n: int):
    from .generate import _keys

    key = _keys(seed, n)
    return sampling.row_keys(key, n) if key.shape == () else key


def run_denoise(model: Model, prefixes: list[list[int]], windows: list[list[int]], *, knobs: Knobs, steps, seed,
                policy: str) -> tuple[dict, float, float]:
    """Pad, place and run :func:`denoise`; returns its numpy output, compile and decode seconds.

    The program is compiled ahead of time (``lower().compile()``, cached per shape) so the
    decode time never includes compilation."""
    cfg = model.config
    if any(len(p) == 0 for p in prefixes):
        raise ValueError("every prefix must hold at least one token (a string prefix gets BOS)")
    longest = max(len(p) + len(w) for p, w in zip(prefixes, windows))
    if longest > cfg.max_position_embeddings:
        raise ValueError(f"prefix + window ({longest} tokens) exceeds max_position_embeddings "
                         f"({cfg.max_position_embeddings})")
    pw, ww = bucket(max(len(p) for p in prefixes)), bucket(max(len(w) for w in windows))
    mesh = sharding.mesh_of(model.params)
    args = [jnp.asarray(padded(prefixes, pw, cfg.pad_token_id)), jnp.asarray([len(p) for p in prefixes], jnp.int32),
            jnp.asarray(padded(windows, ww, cfg.pad_token_id)), jnp.asarray([len(w) for w in windows], jnp.int32),
            row_keys(seed, len(prefixes))]
    args = [sharding.place_rows(a, mesh) for a in args]
    steps = jnp.asarray(steps, jnp.int32)
    leaves = tuple(jnp.asarray(x) for x in jax.tree.leaves(knobs))
    args = (*args, leaves, steps)
    compiled, compile_s = _compiled(model.params, cfg, args, policy=policy)
    t0 = time.perf_counter()
    out = jax.block_until_ready(compiled(model.params, args))
    return jax.device_get(out), compile_s, time.perf_counter() - t0


_COMPILED: dict = {}
COMPILES = [0]


def _compiled(params, cfg, args: tuple, *, policy: str):
    """The AOT-compiled :func:`denoise` for these shapes (``COMPILES`` counts the compilations), and the seconds it took (0 if cached)."""
    sig = (cfg, policy, jax.tree.structure((params, args)),
           tuple((a.shape, str(a.dtype)) for a in jax.tree.leaves((params, args))))
    if sig in _COMPILED:
        return _COMPILED[sig], 0.0
    t0 = time.perf_counter()
    fn = _denoise_flat.lower(params, cfg, args, policy=policy).compile()
    if len(_COMPILED) > 32:
        _COMPILED.clear()
    _COMPILED[sig] = fn
    COMPILES[0] += 1
    return fn, time.perf_counter() - t0


@sharding.under_params_mesh
def infill(model: Model, prefixes, suffixes, *, length, threshold=None, steps=None, policy: str = "threshold",
           temperature=0.0, top_k=0, top_p=1.0, gamma=1.0, seed=0, lora: bool | None = None) -> InfillResult:
    """Fill ``length`` masks between each prefix and its suffix.

    ``prefixes`` / ``suffixes``: one string or id list each, or a list of them (a single suffix
    serves every prefix). Strings are encoded with the tokenizer's ``encode_prompt`` (:func:`nemodiff_jax.io.tokenizer.encode_prompt`)
    (a prefix gets BOS, as every prompt does; a suffix is encoded on its own, without BOS).
    ``length``: an int, or one per row (rows are padded; each row gets exactly its own count).
    ``threshold``: confidence threshold of the ``threshold`` policy; None (default) commits by
    the quota schedule: ``steps`` per row (default ``length``, i.e. one token per step, the
    setting the recovery rate in docs/EVAL.md was measured with). ``policy``: any unmask policy
    (:data:`nemodiff_jax.decode.unmask.POLICIES`); ``gamma`` for ``eb``. ``temperature`` /
    ``top_k`` / ``top_p`` / ``seed``: sampling, as in :func:`~nemodiff_jax.generate`. ``lora``:
    the draft LoRA in the bidirectional passes (default: when the model has one).
    Every numeric knob is traced (a scalar or one per row): changing it never recompiles.

    The masks + suffix form one bidirectional window; the model was trained on windows of one
    block (``config.block_size``), so longer windows work but are outside its training.
    """
    pre = rows_of(prefixes, None, "prefixes")
    n = len(pre)
    suf = rows_of(suffixes, n, "suffixes")
    pre = [as_ids(model, p, f"prefixes[{i}]", bos=True) for i, p in enumerate(pre)]
    suf = [as_ids(model, s, f"suffixes[{i}]", bos=False) for i, s in enumerate(suf)]
    lengths = _lengths(length, n)
    m = model.config.mask_token_id
    for i, s in enumerate(suf):
        if m in s or m in pre[i]:
            raise ValueError(f"row {i}: the prefix and suffix must not contain the mask token ({m})")
    lora_on = _lora(model, lora)
    kn = knobs_for(n, threshold=threshold, temperature=temperature, top_k=top_k, top_p=top_p, gamma=gamma,
                   lora=1.0 if lora_on else 0.0)
    st = _steps(steps, lengths)
    windows = [[m] * k + s for k, s in zip(lengths, suf)]
    out, compile_s, wall = run_denoise(model, pre, windows, knobs=kn, steps=st, seed=seed,
                                       policy=policy_name(policy, threshold))
    toks = [out["window"][i, : lengths[i]].tolist() for i in range(n)]
    passes = [out["commit_pass"][i, : lengths[i]].tolist() for i in range(n)]
    canvas = [p + t + s for p, t, s in zip(pre, toks, suf)]
    texts = [model.tokenizer.decode(t) for t in toks] if model.tokenizer is not None else None
    return InfillResult(toks, [int(x) for x in out["nfe"]], passes, canvas, [len(p) for p in pre], wall, compile_s,
                        texts)


def _lengths(length, n: int) -> list[int]:
    vals = list(length) if isinstance(length, (list, tuple, np.ndarray)) else [length] * n
    if len(vals) != n:
        raise ValueError(f"length: got {len(vals)} values for {n} rows; give one per row or an int")
    for v in vals:
        if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < 1:
            raise ValueError(f"length must be a positive integer (masks to fill), got {v!r}")
    return [int(v) for v in vals]


def _steps(steps, counts: list[int]) -> np.ndarray:
    """The quota step budget per row (default: one token per step)."""
    if steps is None:
        return np.asarray(counts, np.int32)
    vals = list(steps) if isinstance(steps, (list, tuple, np.ndarray)) else [steps] * len(counts)
    if len(vals) != len(counts):
        raise ValueError(f"steps: got {len(vals)} values for {len(counts)} rows")
    for v in vals:
        if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < 1:
            raise ValueError(f"steps must be a positive integer, got {v!r}")
    return np.asarray(vals, np.int32)


def _lora(model: Model, lora) -> bool:
    if lora is None:
        return model.has_lora
    if lora and not model.has_lora:
        raise ValueError("lora=True but the model has no draft LoRA (config.lora_rank == 0)")
    return bool(lora)
