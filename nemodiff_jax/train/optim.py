"""AdamW with warm-up, a decay schedule and global-norm clipping (optax)."""

from __future__ import annotations

import dataclasses

import optax


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    lr: float = 1e-3
    warmup_steps: int = 100
    schedule: str = "cosine"  # "cosine" | "constant" | "wsd" (warm-up, stable, linear decay)
    decay_fraction: float = 0.2  # wsd: last fraction of steps decays linearly
    min_lr_ratio: float = 0.1
    b1: float = 0.9
    b2: float = 0.98
    eps: float = 1e-8
    weight_decay: float = 0.1
    clip_norm: float = 1.0


def lr_schedule(o: OptimConfig, total_steps: int) -> optax.Schedule:
    """Linear warm-up to ``lr`` then the chosen decay to ``min_lr_ratio * lr``."""
    warm = max(1, min(o.warmup_steps, total_steps))
    low = o.lr * o.min_lr_ratio
    if o.schedule == "constant":
        return optax.join_schedules([optax.linear_schedule(0.0, o.lr, warm), optax.constant_schedule(o.lr)], [warm])
    if o.schedule == "cosine":
        return optax.warmup_cosine_decay_schedule(0.0, o.lr, warm, max(total_steps, warm + 1), low)
    if o.schedule == "wsd":
        decay = max(1, int(total_steps * o.decay_fraction))
        stable = max(0, total_steps - warm - decay)
        return optax.join_schedules(
            [
                optax.linear_schedule(0.0, o.lr, warm),
                optax.constant_schedule(o.lr),
                optax.linear_schedule(o.lr, low, decay),
            ],
            [warm, warm + stable],
        )
    raise ValueError(f"schedule must be 'cosine', 'constant' or 'wsd', got {o.schedule!r}")


def make_optimizer(o: OptimConfig, total_steps: int) -> optax.GradientTransformation:
    return optax.chain(
        optax.clip_by_global_norm(o.clip_norm),
        optax.adamw(lr_schedule(o, total_steps), b1=o.b1, b2=o.b2, eps=o.eps, weight_decay=o.weight_decay),
    )
