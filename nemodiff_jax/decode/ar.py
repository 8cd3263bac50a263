"""Autoregressive decoding (docs/ALGORITHMS.md, "AR decoding") as one jitted ``lax.while_loop``.

Causal prefill of right-padded prompts, then one token per step per row: the token is
chosen from the last logits (greedy at T = 0, else temperature / top-k / top-p sampling),
written to the output, and fed through one causal forward at the row's own position.
A row that emits EOS (or reaches ``max_new_tokens``) is done: it keeps flowing through
the same shapes but its tokens, cache length and NFE stop changing. The loop ends when
every row is done.

NFE counts token-choosing steps, i.e. generated tokens, so the prefill is not counted
and TPF is 1 (docs/ALGORITHMS.md, "AR decoding"). The forward that would follow a row's last token is skipped.

Thinking budget: with ``max_thinking_tokens >= 0`` and ``end_think_id >= 0``, a row that
has not emitted the end-think token by generated index ``max_thinking_tokens`` gets it forced
there (both traced; -1 switches it off).
"""

from __future__ import annotations

import jax.numpy as jnp

from ..model import masks
from . import sampling
from ..model.forward import forward
from .common import choose, positions_from, prefilled
from .knobs import Knobs, LoopSpec
from .rows import Rows, commit, crop, finish, force_think, fresh, stop_nonfinite


def _emit(cfg, r: Rows, logits, kn: Knobs) -> Rows:
    """Choose from ``logits [B, V]``, force end-think at its index, commit one token."""
    r = stop_nonfinite(r, logits)
    key, sub = sampling.split_rows(r.key)
    tok = choose(logits, sub, kn, cfg.mask_token_id)[:, None]
    live = ~r.done
    tok, a = force_think(tok, jnp.ones_like(r.n_out), r.n_out, r.think_done, kn)
    r, _ = commit(r.replace(key=key), tok, a, live, kn, eos=cfg.eos_token_id, mark=r.n_out + 1)
    return r.replace(nfe=r.nfe + live.astype(jnp.int32), extra={"last": jnp.where(live, tok[:, 0], r.extra["last"])})


def start(params, cfg, prompt, prompt_len, keys, kn: Knobs, *, spec: LoopSpec) -> Rows:
    b = prompt.shape[0]
    logits, cache = prefilled(params, cfg, prompt, prompt_len, spec.cache_len)
    r = fresh(b, spec.out_len, cfg.pad_token_id, keys, cache, {"last": jnp.zeros((b,), jnp.int32)})
    r = r.replace(done=kn.limit <= 0)
    return _emit(cfg, r, logits, kn)


def step(params, cfg, r: Rows, kn: Knobs, *, spec: LoopSpec) -> Rows:
    b, length = r.n_out.shape[0], r.cache.length
    logits, cache = forward(
        params, cfg, r.extra["last"][:, None], positions_from(length, 1), masks.causal(length, 1, b), r.cache, 0.0
    )
    live = ~r.done
    return _emit(cfg, r.replace(cache=crop(cache, live, 1)), logits[:, 0], kn)


def result(r: Rows, kn: Knobs, *, spec: LoopSpec, pad: int) -> dict:
    out = finish(r, pad, kn.limit)
    return {"tokens": out.pop("tokens"), "num_tokens": out.pop("num_tokens"), "nfe": out.pop("nfe"), "stats": out}
