"""The joint-objective training loop: jitted step, orbax checkpoints with exact resume,
a rich progress bar and a JSONL metrics log.

Resumable state = ``{params, opt_state, step, rng}``. Batches are a pure function of
``(data seed, step)`` (:mod:`.data`) and the step's noise key is ``fold_in(rng, step)``, so a
run restored from step k replays exactly what an uninterrupted run does after step k.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from .. import guard
from ..model.config import NLDConfig, check_fields
from ..model.forward import count_params, init_params
from .data import BatchSource, DataConfig, prefetch
from .objective import ObjectiveConfig, joint_loss
from .optim import OptimConfig, lr_schedule, make_optimizer


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    model: NLDConfig
    objective: ObjectiveConfig = ObjectiveConfig()
    optim: OptimConfig = OptimConfig()
    data: DataConfig = DataConfig()
    batch_size: int = 16
    seq_len: int = 80
    steps: int = 1000
    seed: int = 0
    out_dir: str = "runs/train"
    init_from: str | None = None  # a model directory (nemodiff_jax.load) to fine-tune
    ckpt_every: int = 100
    max_to_keep: int = 2
    log_every: int = 10
    progress: bool = True

    def __post_init__(self):
        for name in ("batch_size", "steps", "ckpt_every", "max_to_keep", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"train config field {name} must be >= 1, got {getattr(self, name)}")
        if self.seq_len < 2:
            raise ValueError(f"train config field seq_len must be >= 2, got {self.seq_len}")


def _state_template(tc: TrainConfig, params, opt):
    return {
        "params": params,
        "opt_state": opt.init(params),
        "step": jnp.zeros((), jnp.int32),
        "rng": jax.random.key_data(jax.random.key(tc.seed)),
    }


def initial_state(tc: TrainConfig, opt) -> dict:
    """Fresh state: random init, or the parameters of ``init_from`` (fine-tuning)."""
    if tc.init_from:
        from ..io.checkpoint import load

        m = load(tc.init_from, dtype=tc.model.dtype)
        params = m.params
        if tc.model.lora_rank == 0 and "lora_a" in params["layers"]["self_attn"]:
            # config.json carries no LoRA (the adapter does), so the checkpoint template
            # (init_params) has none: drop the loaded adapter (the joint objective never runs
            # it; it would only decay under AdamW). Draft-LoRA training adds a fresh one.
            sa = {k: v for k, v in params["layers"]["self_attn"].items() if k not in ("lora_a", "lora_b")}
            params = {**params, "layers": {**params["layers"], "self_attn": sa}}
    else:
        params = init_params(tc.model, tc.seed)
    return _state_template(tc, params, opt)


def step_key(tc: TrainConfig) -> TrainConfig:
    """The part of a config that fixes the compiled step (not paths or logging)."""
    return dataclasses.replace(tc, out_dir="", init_from=None, ckpt_every=1, log_every=1, progress=False,
                               data=DataConfig(), seed=0)


@functools.lru_cache(maxsize=8)
def make_train_step(tc: TrainConfig):
    """``(state, ids, loss_mask) -> (state, metrics)``, jitted (cached per config so repeated runs
    in one process compile once); the noise key is ``fold_in(rng, step)``."""
    cfg, obj = tc.model, tc.objective
    opt = make_optimizer(tc.optim, tc.steps)

    def step_fn(state, ids, loss_mask):
        key = jax.random.fold_in(jax.random.wrap_key_data(state["rng"]), state["step"])
        grad_fn = jax.value_and_grad(lambda p: joint_loss(p, cfg, obj, ids, loss_mask, key), has_aux=True)
        (_, metrics), grads = grad_fn(state["params"])
        updates, opt_state = opt.update(grads, state["opt_state"], state["params"])
        params = optax.apply_updates(state["params"], updates)
        metrics["grad_norm"] = optax.global_norm(grads)
        new = {"params": params, "opt_state": opt_state, "step": state["step"] + 1, "rng": state["rng"]}
        return new, metrics

    return jax.jit(step_fn, donate_argnums=(0,))


def checkpoint_manager(tc: TrainConfig):
    import orbax.checkpoint as ocp

    opts = ocp.CheckpointManagerOptions(max_to_keep=tc.max_to_keep, create=True)
    return ocp.CheckpointManager(Path(tc.out_dir).resolve() / "ckpt", options=opts)


def restore_or_init(tc: TrainConfig, opt, mngr) -> dict:
    """The latest checkpoint of ``out_dir`` if there is one, else a fresh state."""
    import orbax.checkpoint as ocp

    latest = mngr.latest_step()
    if latest is None:
        return initial_state(tc, opt)
    abstract = jax.eval_shape(lambda: _state_template(tc, init_params(tc.model, 0), opt))
    return mngr.restore(latest, args=ocp.args.StandardRestore(abstract))


class _Progress:
    """A rich progress bar (loss, tokens/s, ETA) or nothing."""

    def __init__(self, enabled: bool, total: int, start: int):
        self.bar = None
        if not enabled:
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.bar = Progress(
            TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]:.4f}  {task.fields[tps]:.0f} tok/s  eta"), TimeRemainingColumn(),
        )
        self.task = self.bar.add_task("train", total=total, completed=start, loss=float("nan"), tps=0.0)
        self.bar.start()

    def update(self, step: int, loss: float, tps: float):
        if self.bar is not None:
            self.bar.update(self.task, completed=step, loss=loss, tps=tps)

    def close(self):
        if self.bar is not None:
            self.bar.stop()


def train(tc: TrainConfig, stop_after: int | None = None, source: BatchSource | None = None) -> dict:
    """Run (or resume) training to ``tc.steps``; ``stop_after`` simulates an interruption.

    Returns the final state. Checkpoints go to ``out_dir/ckpt`` every ``ckpt_every`` steps and
    at the end; metrics to ``out_dir/metrics.jsonl``.
    """
    import orbax.checkpoint as ocp

    out = guard.writable_dir(tc.out_dir, "out_dir")
    _clean_orbax_tmp(out / "ckpt")
    guard.atomic_write_text(out / "train_config.json", json.dumps(config_to_dict(tc), indent=2))
    opt = make_optimizer(tc.optim, tc.steps)
    sched = lr_schedule(tc.optim, tc.steps)
    mngr = checkpoint_manager(tc)
    state = restore_or_init(tc, opt, mngr)
    start = int(state["step"])
    end = tc.steps if stop_after is None else min(tc.steps, stop_after)
    source = source or BatchSource(tc.data, tc.batch_size, tc.seq_len, tc.seed)
    step_fn = make_train_step(step_key(tc))
    log = open(out / "metrics.jsonl", "a")
    if start == 0:
        log.write(json.dumps({"event": "start", "params": count_params(state["params"])}) + "\n")
    bar = _Progress(tc.progress, tc.steps, start)
    t0, tokens, last = time.time(), 0, time.time()
    saved = start
    try:
        with guard.deferred():
            for step, batch in prefetch(source, range(start, end)):
                state, metrics = step_fn(state, jnp.asarray(batch["ids"]), jnp.asarray(batch["loss_mask"]))
                tokens += batch["ids"].size
                done = step + 1
                if done % tc.log_every == 0 or done == end:
                    m = {k: float(v) for k, v in metrics.items()}
                    now = time.time()
                    tps = tokens / max(now - t0, 1e-9)
                    rec = {"step": done, **m, "lr": float(sched(step)), "tokens_per_s": tps, "elapsed_s": now - t0,
                           "step_s": (now - last) / tc.log_every}
                    last = now
                    log.write(json.dumps(rec) + "\n")
                    log.flush()
                    bar.update(done, m["loss"], tps)
                if done % tc.ckpt_every == 0 or done == end or guard.requested():
                    mngr.save(done, args=ocp.args.StandardSave(state))
                    saved = done
                if guard.requested():  # the finished steps are checkpointed: stop here
                    mngr.wait_until_finished()
                    log.write(json.dumps({"event": "interrupted", "step": saved}) + "\n")
                    guard.check(f"{out / 'ckpt'} (step {saved}; rerun to resume)")
        mngr.wait_until_finished()
    finally:
        bar.close()
        log.close()
        mngr.close()
    return state


def _clean_orbax_tmp(ckpt_dir: Path) -> None:
    """Unfinished orbax saves of an earlier, killed run (``N.orbax-checkpoint-tmp-*``)."""
    import shutil

    if ckpt_dir.is_dir():
        for p in ckpt_dir.glob("*.orbax-checkpoint-tmp*"):
            shutil.rmtree(p, ignore_errors=True)


# ---- JSON configs ---------------------------------------------------------------------------

_SECTIONS = {"objective": ObjectiveConfig, "optim": OptimConfig, "data": DataConfig}


def _fields_of(cls, sec: Any, where: str) -> dict[str, Any]:
    """A JSON object whose keys are fields of ``cls`` (one ValueError naming an unknown key)."""
    if not isinstance(sec, dict):
        raise ValueError(f"train config section {where!r} must be an object, got {type(sec).__name__}")
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(sec) - set(names))
    if unknown:
        raise ValueError(f"unknown key {unknown[0]!r} in train config section {where!r}; expected one of {names}")
    return dict(sec)


def _build(cls, kw: dict, where: str):
    """``cls(**kw)`` after checking every given field's type (a ValueError naming the field)."""
    check_fields(cls, where, kw)
    return cls(**kw)


def config_from_dict(d: dict[str, Any]) -> TrainConfig:
    """A TrainConfig from a JSON dict; ``model`` is a preset name plus field overrides, or a
    full field dict, or absent when ``init_from`` names a checkpoint (its config is used).
    Unknown keys and values of the wrong type raise one ValueError naming the field."""
    if not isinstance(d, dict):
        raise ValueError(f"a train config must be a JSON object, got {type(d).__name__}")
    d = dict(d)
    model = d.pop("model", {}) or {}
    if isinstance(model, str):
        model = {"preset": model}
    model = dict(_fields_of(NLDConfig, {k: v for k, v in model.items() if k != "preset"}, "model"),
                 **({"preset": model["preset"]} if "preset" in model else {}))
    check_fields(NLDConfig, "config", model)
    if d.get("init_from"):
        cfg = NLDConfig.from_hf(_resolve_dir(d["init_from"]))
        cfg = cfg.replace(**{k: v for k, v in model.items() if k != "preset"})
    elif "preset" in model:
        cfg = NLDConfig.preset(model.pop("preset")).replace(**model)
    else:
        cfg = NLDConfig(**model)
    kw: dict[str, Any] = {"model": cfg}
    for name, cls in _SECTIONS.items():
        sec = _fields_of(cls, d.pop(name, {}) or {}, name)
        if name == "data" and isinstance(sec.get("tasks"), list):
            sec["tasks"] = tuple(sec["tasks"])
        kw[name] = _build(cls, sec, f"train config section {name!r}:")
    if "block_size" not in (d.get("objective") or {}):
        kw["objective"] = dataclasses.replace(kw["objective"], block_size=cfg.block_size)
    unknown = set(d) - {f.name for f in dataclasses.fields(TrainConfig)}
    if unknown:
        raise ValueError(f"unknown training config fields: {sorted(unknown)}")
    kw.update(d)
    return _build(TrainConfig, kw, "train config")


def _resolve_dir(path: str) -> Path:
    from ..io.checkpoint import resolve

    return resolve(path)


def config_to_dict(tc: TrainConfig) -> dict[str, Any]:
    d = dataclasses.asdict(tc)
    if d["data"].get("tasks") is not None:
        d["data"]["tasks"] = list(d["data"]["tasks"])
    return d


def load_config(path: str | Path) -> TrainConfig:
    return config_from_dict(json.loads(Path(path).read_text()))


def params_numpy(state: dict) -> Any:
    return jax.tree.map(np.asarray, state["params"])
