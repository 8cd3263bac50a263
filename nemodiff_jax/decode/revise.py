"""Revision: remask parts of a finished text and denoise them again (docs/ALGORITHMS.md, "Infilling and revision").

Per row, the positions to rewrite are either given (``spans``) or found: the tokens whose
confidence under ONE bidirectional pass over the whole text (the probability the model gives
the token that is there, at its own position) falls below ``remask_below``. Then, with ``c`` the
first remasked position, ``text[:c]`` is prefilled into the cache (causal) and ``text[c:]``, with
masks at the remasked positions, is denoised by :func:`nemodiff_jax.decode.infill.denoise`: the
same loop, policies and traced knobs as infilling; the masks see everything around them.

Caveat on ``remask_below``: the diffusion loss only ever scores masked positions, so the model's
output at an unmasked position is a by-product, not a trained estimate; it does flag tokens
that disagree with their context, but treat it as a heuristic.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int

from ..model import masks, sharding
from ..model.config import NLDConfig
from ..model.forward import Model, forward
from .infill import _lora, as_ids, bucket, knobs_for, padded, policy_name, run_denoise


@dataclasses.dataclass
class ReviseResult:
    """Per row: the revised ids, the remasked positions, what changed there as
    ``(position, old id, new id)``, NFE (denoise steps; prefill and the scoring pass not counted),
    the commit pass of each remasked position, the scoring pass's confidence of every input token
    (``remask_below`` only), and the revised text."""

    tokens: list[list[int]]
    remasked: list[list[int]]
    changed: list[list[tuple[int, int, int]]]
    nfe: list[int]
    commit_pass: list[list[int]]
    confidence: list[list[float]] | None
    wall_time: float
    compile_time: float
    texts: list[str] | None = None


@functools.partial(jax.jit, static_argnames=("cfg",))
def token_confidence(params, cfg: NLDConfig, ids: Int[Array, "B L"], length: Int[Array, "B"],
                     lora) -> Float[Array, "B L"]:
    """Softmax probability of each present token at its own position under one bidirectional
    pass over the row's ``length`` tokens (no cache)."""
    b, w = ids.shape
    pos = jnp.broadcast_to(jnp.arange(w, dtype=jnp.int32), (b, w))
    policy = masks.bidirectional(jnp.zeros((b,), jnp.int32), w, b, length)
    logits, _ = forward(params, cfg, ids, pos, policy, None, lora)
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    return jnp.exp(jnp.take_along_axis(logp, ids[..., None], axis=-1)[..., 0])


def _rows(model: Model, ids) -> list[list[int]]:
    if isinstance(ids, (np.ndarray, jax.Array)):
        ids = np.asarray(ids).tolist()
    if isinstance(ids, str) or (isinstance(ids, list) and ids and all(isinstance(t, (int, np.integer)) for t in ids)):
        ids = [ids]
    if not isinstance(ids, (list, tuple)) or not ids:
        raise ValueError("ids: expected a string, a list of token ids, or a non-empty list of either")
    rows = [as_ids(model, r, f"ids[{i}]", bos=True) for i, r in enumerate(ids)]
    if any(len(r) < 2 for r in rows):
        raise ValueError("ids: every row needs at least two tokens (one kept as the prefix)")
    return rows


def _spans(spans, rows: list[list[int]], keep: list[int]) -> list[list[int]]:
    """Remasked positions per row from ``[(start, end), ...]`` (end exclusive), one list for
    every row or one list per row."""
    if not isinstance(spans, (list, tuple)):
        raise ValueError(f"spans: expected a list of (start, end) pairs, got {type(spans).__name__}")
    per_row = len(spans) > 0 and all(isinstance(s, (list, tuple)) and (len(s) == 0 or isinstance(s[0], (list, tuple)))
                                     for s in spans)
    lists = list(spans) if per_row else [spans] * len(rows)
    if len(lists) != len(rows):
        raise ValueError(f"spans: got {len(lists)} span lists for {len(rows)} rows")
    out = []
    for i, (row, sp) in enumerate(zip(rows, lists)):
        pos = set()
        for s in sp:
            if (len(s) != 2 or not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in s)
                    or not keep[i] <= s[0] < s[1] <= len(row)):
                raise ValueError(f"spans: row {i}: span {tuple(s)!r} must be (start, end) integers with "
                                 f"{keep[i]} <= start < end <= {len(row)} (the first {keep[i]} tokens are kept)")
            pos.update(range(int(s[0]), int(s[1])))
        out.append(sorted(pos))
    return out


@sharding.under_params_mesh
def revise(model: Model, ids, *, spans=None, remask_below=None, keep: int | list[int] = 1, threshold=None,
           steps=None, policy: str = "threshold", temperature=0.0, top_k=0, top_p=1.0, gamma=1.0, seed=0,
           lora: bool | None = None) -> ReviseResult:
    """Remask ``spans`` (``[(start, end), ...]``, or one such list per row) or the tokens whose
    bidirectional confidence is below ``remask_below`` (exactly one of the two), then denoise
    them again with the text before the first of them cached.

    ``ids``: a text (encoded with BOS) or ids, or a list of them. ``keep``: leading tokens never
    remasked (default 1: the BOS; pass the prompt length to revise only an answer). The other
    knobs are :func:`~nemodiff_jax.decode.infill.infill`'s (default: the quota schedule, one
    token per step).
    """
    if (spans is None) == (remask_below is None):
        raise ValueError("revise: give exactly one of spans=[(start, end), ...] or remask_below=<confidence>")
    rows = _rows(model, ids)
    n = len(rows)
    keeps = list(keep) if isinstance(keep, (list, tuple)) else [keep] * n
    if len(keeps) != n or any(not isinstance(k, (int, np.integer)) or isinstance(k, bool) or k < 1 for k in keeps):
        raise ValueError(f"keep: expected an int >= 1 (or one per row), got {keep!r}")
    keeps = [int(k) for k in keeps]
    m = model.config.mask_token_id
    if any(m in r for r in rows):
        raise ValueError(f"ids: the text must not contain the mask token ({m}); use nd.infill to fill masks")
    lora_on = _lora(model, lora)
    conf = None
    if spans is not None:
        remasked = _spans(spans, rows, keeps)
    else:
        if isinstance(remask_below, bool) or not isinstance(remask_below, (int, float, np.number)) \
                or not 0.0 <= float(remask_below) <= 1.0:
            raise ValueError(f"remask_below must be a confidence in [0, 1], got {remask_below!r}")
        width = bucket(max(len(r) for r in rows))
        c = token_confidence(model.params, model.config, jnp.asarray(padded(rows, width, model.config.pad_token_id)),
                             jnp.asarray([len(r) for r in rows], jnp.int32), jnp.float32(1.0 if lora_on else 0.0))
        c = np.asarray(c)
        conf = [c[i, : len(r)].astype(float).tolist() for i, r in enumerate(rows)]
        remasked = [[j for j in range(keeps[i], len(r)) if conf[i][j] < remask_below] for i, r in enumerate(rows)]
    cut = [pos[0] if pos else len(r) for pos, r in zip(remasked, rows)]
    prefixes = [r[:c] for r, c in zip(rows, cut)]
    windows = [[m if c + j in set(pos) else t for j, t in enumerate(r[c:])] for r, c, pos in zip(rows, cut, remasked)]
    kn = knobs_for(n, threshold=threshold, temperature=temperature, top_k=top_k, top_p=top_p, gamma=gamma,
                   lora=1.0 if lora_on else 0.0)
    from .infill import _steps

    st = _steps(steps, [max(len(p), 1) for p in remasked])
    out, compile_s, wall = run_denoise(model, prefixes, windows, knobs=kn, steps=st, seed=seed,
                                       policy=policy_name(policy, threshold))
    tokens, changed, passes = [], [], []
    for i, (r, c, pos) in enumerate(zip(rows, cut, remasked)):
        new = r[:c] + out["window"][i, : len(r) - c].tolist()
        tokens.append(new)
        changed.append([(j, r[j], new[j]) for j in pos if new[j] != r[j]])
        passes.append([int(out["commit_pass"][i, j - c]) for j in pos])
    texts = [model.tokenizer.decode(t) for t in tokens] if model.tokenizer is not None else None
    return ReviseResult(tokens, remasked, changed, [int(x) for x in out["nfe"]], passes, conf, wall, compile_s, texts)
