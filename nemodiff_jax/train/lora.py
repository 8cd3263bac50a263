"""Draft-LoRA training (docs/ALGORITHMS.md, "Draft LoRA"): freeze the base, train the o_proj LoRA so that
bidirectional drafts match the causal verifier's greedy tokens.

Per training row we pick a draft start ``s`` in the answer (the first answer token with
probability ``first_cycle_prob``, because with one-block answers the first cycle is most of
the speed-up) and build exactly what a linear-speculation cycle sees: the causal prefix
``x_0[:s]`` (LoRA off, so its K/V equal the verifier's cache), then the block
``[x_0[s], M x (B-1)]`` under bidirectional attention with the LoRA on (per-token LoRA gate).
The target at draft position ``s+j`` is the verifier's argmax at ``s+j-1`` (a causal,
LoRA-off pass over ``x_0``). Teacher-forced verifier tokens equal its own greedy rollout only
up to the first place where the verifier disagrees with ``x_0``, so the active positions are
that agreeing prefix plus the first disagreeing position (the spec's "accepted prefix + first
rejected position") and only supervised (answer) tokens. Loss: CE toward those targets
(the spec's L_CE; its LK distribution-matching term is not implemented).
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jaxtyping import Array, Float, Int, PRNGKeyArray

from ..model import masks
from ..model.forward import forward
from ..model.config import NLDConfig
from ..model.layout import stack_layers
from .objective import token_ce

LORA_KEYS = ("lora_a", "lora_b")


@dataclasses.dataclass(frozen=True)
class LoraConfig:
    steps: int = 200
    lr: float = 1e-3
    warmup_steps: int = 10
    batch_size: int = 16
    seq_len: int = 80
    block: int = 32
    first_cycle_prob: float = 0.5
    seed: int = 0
    log_every: int = 10


def split_lora(params) -> tuple[dict, dict]:
    """``(base without LoRA, {"lora_a", "lora_b"})``; the LoRA lives in ``layers/self_attn``."""
    sa = params["layers"]["self_attn"]
    lora = {k: sa[k] for k in LORA_KEYS}
    base = {**params, "layers": {**params["layers"], "self_attn": {k: v for k, v in sa.items() if k not in LORA_KEYS}}}
    return base, lora


def merge_lora(base, lora) -> dict:
    sa = {**base["layers"]["self_attn"], **lora}
    return {**base, "layers": {**base["layers"], "self_attn": sa}}


def ensure_lora(cfg: NLDConfig, params, seed: int = 0) -> dict:
    """Add fresh LoRA tensors (A ~ N(0, 0.02), B = 0: a no-op draft) if ``params`` has none."""
    if "lora_a" in params["layers"]["self_attn"]:
        return params
    k = jax.random.key(seed)
    dt = jnp.dtype(cfg.dtype)
    a = 0.02 * jax.random.normal(k, (cfg.num_layers, cfg.q_width, cfg.lora_rank), dt)
    b = jnp.zeros((cfg.num_layers, cfg.lora_rank, cfg.hidden_size), dt)
    return merge_lora(params, {"lora_a": a, "lora_b": b})


def draft_starts(key: PRNGKeyArray, loss_mask: Int[Array, "B L"], first_cycle_prob: float) -> Int[Array, "B"]:
    """Per row a start inside the supervised span: its first token, or a uniform one."""
    b, length = loss_mask.shape
    on = loss_mask > 0
    first = jnp.argmax(on, axis=1)
    last = length - 1 - jnp.argmax(on[:, ::-1], axis=1)
    k1, k2 = jax.random.split(key)
    uni = first + jnp.floor(jax.random.uniform(k1, (b,)) * (last - first + 1)).astype(jnp.int32)
    return jnp.where(jax.random.uniform(k2, (b,)) < first_cycle_prob, first, jnp.minimum(uni, last)).astype(jnp.int32)


def verifier_argmax(params, cfg: NLDConfig, ids: Int[Array, "B L"]) -> Int[Array, "B L"]:
    """Greedy next-token choice of the causal base model (LoRA off) at every position."""
    b, length = ids.shape
    pos = jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), (b, length))
    logits, _ = forward(params, cfg, ids, pos, masks.causal(jnp.zeros((b,), jnp.int32), length, b), None, jnp.float32(0.0))
    logits = logits.at[..., cfg.mask_token_id].set(-jnp.inf)
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)


def draft_loss(
    lora,
    base,
    cfg: NLDConfig,
    ids: Int[Array, "B L"],
    loss_mask: Int[Array, "B L"],
    starts: Int[Array, "B"],
    verify: Int[Array, "B L"],
    block: int,
) -> tuple[Float[Array, ""], dict]:
    """CE of the one-pass draft toward the verifier's greedy tokens over the active positions."""
    b, length = ids.shape
    idx = jnp.arange(length, dtype=jnp.int32)[None, :]
    s = starts[:, None]
    in_block = (idx > s) & (idx < s + block)
    tokens = jnp.where(in_block, cfg.mask_token_id, ids)
    pos = jnp.broadcast_to(idx, (b, length))
    policy = masks.mixed(jnp.zeros((b,), jnp.int32), starts, jnp.minimum(starts + block, length), b)
    gate = (idx >= s).astype(jnp.float32)[..., None]  # LoRA on for the draft block only
    logits, _ = forward(merge_lora(base, lora), cfg, tokens, pos, policy, None, gate)
    target = jnp.concatenate([verify[:, :1], verify[:, :-1]], axis=1)  # target[j] = verifier argmax at j-1
    agree = (target == ids) | ~in_block
    # active = in block, up to and including the first position where verifier != x_0.
    disagree_before = jnp.cumsum(~agree, axis=1) - (~agree).astype(jnp.int32)
    active = in_block & (disagree_before == 0) & (loss_mask > 0)
    a = active.astype(jnp.float32)
    ce = token_ce(logits, target)
    n = jnp.maximum(jnp.sum(a), 1.0)
    correct = (jnp.argmax(logits.at[..., cfg.mask_token_id].set(-jnp.inf), -1) == target)
    # expected acceptance proxy: run of correct drafts from the block start
    scored = in_block & (loss_mask > 0)
    run = jnp.cumprod(jnp.where(scored, correct, True).astype(jnp.int32), axis=1).astype(bool) & scored
    metrics = {"draft_ce": jnp.sum(a * ce) / n, "draft_acc": jnp.sum(a * correct) / n,
               "accept_run": jnp.mean(jnp.sum(run, axis=1).astype(jnp.float32))}
    return jnp.sum(a * ce) / n, metrics


def make_lora_step(cfg: NLDConfig, lc: LoraConfig, opt):
    def step(lora, opt_state, base, ids, loss_mask, key):
        starts = draft_starts(key, loss_mask, lc.first_cycle_prob)
        verify = jax.lax.stop_gradient(verifier_argmax(merge_lora(base, lora), cfg, ids))  # LoRA gated off
        (_, m), g = jax.value_and_grad(draft_loss, has_aux=True)(lora, base, cfg, ids, loss_mask, starts, verify, lc.block)
        upd, opt_state = opt.update(g, opt_state, lora)
        return optax.apply_updates(lora, upd), opt_state, m

    return jax.jit(step)


def train_draft_lora(cfg: NLDConfig, params, lc: LoraConfig, source, log_path: str | Path | None = None):
    """Train only the LoRA tensors of ``params`` (either layout; a per-layer tree from ``load`` is
    stacked first); returns the full parameter tree, stacked."""
    from .data import prefetch

    params = ensure_lora(cfg, stack_layers(params), lc.seed)
    base, lora = split_lora(params)
    sched = optax.warmup_cosine_decay_schedule(0.0, lc.lr, max(1, lc.warmup_steps), max(lc.steps, lc.warmup_steps + 1), lc.lr * 0.1)
    opt = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(sched, b1=0.9, b2=0.98, weight_decay=0.0))
    opt_state = opt.init(lora)
    step_fn = make_lora_step(cfg, lc, opt)
    root = jax.random.key(lc.seed)
    log = open(log_path, "a") if log_path else None
    t0 = time.time()
    for step, batch in prefetch(source, range(lc.steps)):
        lora, opt_state, m = step_fn(lora, opt_state, base, jnp.asarray(batch["ids"]), jnp.asarray(batch["loss_mask"]),
                                     jax.random.fold_in(root, step))
        if (step + 1) % lc.log_every == 0 or step + 1 == lc.steps:
            rec = {"step": step + 1, **{k: float(v) for k, v in m.items()}, "elapsed_s": time.time() - t0}
            print(json.dumps(rec), flush=True)
            if log:
                log.write(json.dumps(rec) + "\n")
                log.flush()
    if log:
        log.close()
    return merge_lora(base, lora)


def run_from_dict(raw: dict[str, Any]):
    """CLI entry: ``{"init_from": DIR, "lora": {...LoraConfig}, "lora_rank", "lora_alpha", "data": {...},
    "out_dir"}`` -> (cfg, params, tokenizer_dir)."""
    from ..io.checkpoint import load
    from ..io.checkpoint import resolve
    from .data import BatchSource, DataConfig

    from .. import guard
    from .loop import _build, _fields_of

    unknown = sorted(set(raw) - {"init_from", "dtype", "lora_rank", "lora_alpha", "lora", "data", "out_dir", "progress", "steps"})
    if unknown:
        raise ValueError(f"unknown key {unknown[0]!r} in the draft_lora train config")
    if not raw.get("init_from"):
        raise ValueError("a draft_lora train config needs 'init_from' (the model directory to adapt)")
    lora_kw = _fields_of(LoraConfig, raw.get("lora") or {}, "lora")
    if "steps" in raw:  # `nemodiff train --steps N`
        lora_kw["steps"] = raw["steps"]
    lc = _build(LoraConfig, lora_kw, "train config section 'lora':")
    if lc.steps < 1 or lc.batch_size < 1:
        raise ValueError(f"draft_lora steps and batch_size must be >= 1, got {lc.steps} and {lc.batch_size}")
    data = _fields_of(DataConfig, raw.get("data") or {}, "data")
    if isinstance(data.get("tasks"), list):
        data["tasks"] = tuple(data["tasks"])
    data = _build(DataConfig, data, "train config section 'data':")
    out = guard.writable_dir(raw.get("out_dir", "runs/draft_lora"), "out_dir")
    src_dir = resolve(raw["init_from"])
    model = load(src_dir, dtype=raw.get("dtype", "float32"))
    cfg = model.config
    if cfg.lora_rank == 0:
        cfg = cfg.replace(lora_rank=int(raw.get("lora_rank", 16)), lora_alpha=float(raw.get("lora_alpha", 64.0)))
    source = BatchSource(data, lc.batch_size, lc.seq_len, lc.seed + 7919)
    params = train_draft_lora(cfg, model.params, lc, source, out / "metrics.jsonl")
    return cfg, jax.tree.map(np.asarray, params), src_dir
