"""Batched, jitted evaluation: ``evaluate(model, tasks, modes, batch_size) -> EvalResults``.

Prompts are grouped by the width bucket ``generate`` pads them to, and each group goes
through ``generate(..., batch_size=batch_size)``: ``batch_size`` slots, a slot taking the next
waiting prompt as soon as its row ends (the decode engine's refill), in calls of at most
:data:`PROMPTS_PER_SLOT` x ``batch_size`` prompts (a signal stops the run between calls). A
call's prompt count is static, so the last call of a bucket is padded with copies of its last
prompt up to a multiple of ``batch_size`` (dropped); each (bucket, count) shape compiles once
and every knob that ``generate`` traces is reused. With ``warmup`` the first call of each shape
is run once untimed, so tokens/s measure decoding, not XLA.

Metrics per task and mode (plus task ``all``): accuracy (and ``similarity``, partial credit, see
:func:`~nemodiff_jax.eval.scorers.similarity`), mean forward passes (NFE, counted as
``generate`` documents), TPF = generated tokens / NFE summed over rows, the mean acceptance
length of the speculative modes, tokens/s and wall time (each row is charged an equal share
of its batch's decode time).
"""

from __future__ import annotations

import dataclasses
import time
from collections import defaultdict
from typing import Any, Sequence

import numpy as np

from .. import guard
from ..decode.generate import MODES, generate, prompt_bucket
from . import scorers
from .codec import Codec
from .compiles import CompileCounter
from .datasets import Example, load_tasks
from .progress import progress_bar

COMMON = ("max_new_tokens", "temperature", "top_k", "top_p", "seed", "max_thinking_tokens", "end_think_token_id")
# Which evaluate() knobs reach which mode; ``draft_threshold`` is linear_spec's ``threshold``.
ROUTES: dict[str, tuple[str, ...]] = {
    "ar": COMMON,
    "diffusion": COMMON + ("block_length", "threshold", "policy", "policy_params", "lora"),
    "linear_spec": COMMON + ("block_length", "draft_threshold", "lora"),
    "quadratic_spec": ("max_new_tokens", "seed", "max_thinking_tokens", "end_think_token_id", "block_length"),
}
TIME_FIELDS = ("tokens_per_s", "wall_time", "compile_time")


def parse_mode(spec: str) -> tuple[str, dict[str, Any]]:
    """``"diffusion:threshold=0.7,block_length=16"`` -> (``diffusion``, knob overrides)."""
    mode, _, rest = spec.partition(":")
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r} in {spec!r}; expected one of {MODES}")
    knobs = {}
    for item in filter(None, rest.split(",")):
        key, eq, val = item.partition("=")
        if not eq:
            raise ValueError(f"mode option {item!r} in {spec!r} is not key=value")
        key = key.strip()
        if key not in ROUTES[mode]:
            raise ValueError(f"mode option {key!r} in {spec!r} is not a knob of {mode}; "
                             f"{mode} accepts {', '.join(ROUTES[mode])}")
        knobs[key] = _coerce(val.strip())
    return mode, knobs


def _coerce(val: str):
    low = val.lower()
    if low in ("none", "null"):
        return None
    if low in ("true", "on", "yes"):
        return True
    if low in ("false", "off", "no"):
        return False
    for cast in (int, float):
        try:
            return cast(val)
        except ValueError:
            pass
    return val


def mode_kwargs(mode: str, knobs: dict[str, Any], block_default: int) -> dict[str, Any]:
    """The ``generate`` keyword arguments ``mode`` takes from ``knobs`` (see :data:`ROUTES`).

    ``max_new_tokens`` is rounded down to a block multiple (at least one block) where the mode
    needs it, as the reference ``evaluate.py`` does (docs/ALGORITHMS.md, "Deviations from the official code"). Diffusion runs without the
    draft LoRA unless ``lora`` says otherwise; linear speculation uses it when the model has one.
    """
    kw = {k: v for k, v in knobs.items() if k in ROUTES[mode] and v is not None}
    if mode == "diffusion":
        kw.setdefault("lora", False)  # the draft LoRA is linear speculation's (docs/ALGORITHMS.md, "Draft LoRA") unless asked for
    if "draft_threshold" in kw:
        kw["threshold"] = kw.pop("draft_threshold")
    if mode in ("diffusion", "quadratic_spec") and "max_new_tokens" in kw:
        bl = kw.get("block_length") or block_default
        kw["max_new_tokens"] = max(kw["max_new_tokens"] // bl, 1) * bl
    return kw


@dataclasses.dataclass
class EvalResults:
    """Per (mode, task) metrics, per example samples, and the settings that produced them."""

    config: dict[str, Any]
    metrics: list[dict[str, Any]]
    samples: list[dict[str, Any]]
    compiles: dict[str, int]

    def metric(self, mode: str, task: str = "all") -> dict[str, Any]:
        for row in self.metrics:
            if row["mode"] == mode and row["task"] == task:
                return row
        raise KeyError((mode, task))

    def table(self) -> str:
        from .report import format_table

        cols = ["mode", "task", "n", "accuracy", "similarity", "nfe_mean", "tpf", "acceptance_length", "tokens_per_s",
                "wall_time"]
        return format_table(self.metrics, cols)

    def write(self, out_dir) -> dict[str, str]:
        from .report import write_eval

        return write_eval(self, out_dir)


PROMPTS_PER_SLOT = 8  # prompts per generate call = this x batch_size (the slots refill in between)


def _batches(codec_ids: list[list[int]], batch_size: int) -> list[list[int]]:
    """Example indices grouped by prompt-width bucket, sorted by length, chunked into calls."""
    by_bucket: dict[int, list[int]] = defaultdict(list)
    for i, ids in enumerate(codec_ids):
        by_bucket[prompt_bucket(len(ids))].append(i)
    out = []
    for bucket in sorted(by_bucket):
        idx = sorted(by_bucket[bucket], key=lambda i: (len(codec_ids[i]), i))
        out.extend(idx[s : s + batch_size] for s in range(0, len(idx), batch_size))
    return out


def _acceptance(stats: dict[str, np.ndarray], row: int) -> float | None:
    acc = stats.get("acceptance_lengths")
    if acc is None:
        return None
    a = np.asarray(acc[row])
    a = a[a > 0]
    return float(a.mean()) if a.size else None


def evaluate(
    model,
    tasks: Sequence[Example] | str | Sequence[str] = "synthetic",
    modes: Sequence[str] = MODES,
    batch_size: int = 8,
    *,
    n: int = 8,
    task_seed: int = 0,
    warmup: bool = True,
    progress: bool = True,
    out_dir=None,
    **knobs,
) -> EvalResults:
    """Evaluate ``model`` on ``tasks`` in each of ``modes`` (see the module docstring).

    ``tasks``: examples, or task specs for :func:`~nemodiff_jax.eval.datasets.load_tasks`
    (``n`` per synthetic task). ``modes``: names, optionally with inline knobs
    (``"diffusion:threshold=0.7"``). ``knobs``: ``generate`` keyword arguments routed per mode
    by :data:`ROUTES` (``threshold``/``policy`` reach diffusion only; ``draft_threshold`` is linear
    speculation's). ``out_dir``: also write JSON and CSV there.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    examples = list(tasks) if _is_examples(tasks) else load_tasks(tasks, n=n, seed=task_seed)
    if not examples:
        raise ValueError("no examples to evaluate")
    codec = Codec.for_model(model)
    ids = [list(ex.prompt_ids) if ex.prompt_ids is not None else codec.encode(ex.prompt) for ex in examples]
    batches = _batches(ids, batch_size * PROMPTS_PER_SLOT)
    parsed = [(spec, *parse_mode(spec)) for spec in modes]
    samples: list[dict[str, Any]] = []
    compiles: dict[str, int] = {}
    compile_time: dict[str, float] = {}
    total = len(parsed) * len(examples)
    config = dict(
        model=getattr(model, "path", None), modes=list(modes), batch_size=batch_size, n_examples=len(examples),
        tasks=sorted({ex.task for ex in examples}), knobs={k: v for k, v in knobs.items()}, warmup=warmup,
    )
    try:
        with guard.deferred(), progress_bar(total, enabled=progress) as bar:
            _run_modes(model, parsed, knobs, batches, ids, examples, codec, batch_size, warmup, bar, samples,
                       compiles, compile_time)
    except guard.Interrupted as e:  # keep the rows finished so far, marked partial
        if out_dir is not None:
            _finish(samples, parsed, compile_time, {**config, "partial": True}, compiles).write(out_dir)
            e.partial = str(out_dir)
        raise
    results = _finish(samples, parsed, compile_time, {**config, "partial": False}, compiles)
    if out_dir is not None:
        results.write(out_dir)
    return results


def _finish(samples, parsed, compile_time, config, compiles) -> EvalResults:
    samples = sorted(samples, key=lambda s: ([p[0] for p in parsed].index(s["mode"]), s["index"]))
    metrics = summarize(samples, [p[0] for p in parsed], compile_time)
    return EvalResults(config, metrics, samples, dict(compiles))


def _run_modes(model, parsed, knobs, batches, ids, examples, codec, batch_size, warmup, bar, samples, compiles,
               compile_time) -> None:
    """Every mode over every batch, appending to ``samples``; a signal stops it between batches."""
    for label, mode, inline in parsed:
        kw = mode_kwargs(mode, {**knobs, **inline}, model.config.block_size)
        seen_shapes: set[tuple[int, int]] = set()
        correct = done = 0
        with CompileCounter() as cc:
            for batch in batches:
                rows = [ids[i] for i in batch]
                rows = rows + [rows[-1]] * (-len(rows) % batch_size)
                shape = (prompt_bucket(max(len(r) for r in rows)), len(rows))
                if warmup and shape not in seen_shapes:
                    t0 = time.perf_counter()
                    generate(model, rows, mode=mode, batch_size=batch_size, **kw)
                    compile_time[label] = compile_time.get(label, 0.0) + time.perf_counter() - t0
                seen_shapes.add(shape)
                res = generate(model, rows, mode=mode, batch_size=batch_size, **kw)
                if res.compile_time:  # no warm-up: the compilation is timed apart from the decode
                    compile_time[label] = compile_time.get(label, 0.0) + res.compile_time
                share = res.wall_time / len(batch)
                for r, i in enumerate(batch):
                    ex = examples[i]
                    pred = codec.decode(res.tokens[r])
                    ok = bool(scorers.get(ex.scorer)(pred, ex.answer))
                    correct += ok
                    done += 1
                    samples.append(
                        dict(
                            mode=label, task=ex.task, index=i, prompt=ex.prompt, answer=ex.answer,
                            prediction=pred, correct=ok, similarity=scorers.similarity(pred, ex.answer),
                            scorer=ex.scorer, tokens=len(res.tokens[r]),
                            nfe=res.nfe[r], tpf=res.tpf[r], acceptance_length=_acceptance(res.stats, r),
                            wall_time=share,
                        )
                    )
                bar.advance(len(batch), f"{label}  acc {correct / max(done, 1):.3f}")
                compiles[label] = cc.so_far
                guard.check()
        compiles[label] = cc.count


def _is_examples(tasks) -> bool:
    return not isinstance(tasks, str) and len(tasks) > 0 and isinstance(next(iter(tasks)), Example)


def summarize(samples: list[dict], modes: Sequence[str], compile_time: dict[str, float] | None = None) -> list[dict]:
    """Aggregate samples into one metrics row per (mode, task) and per (mode, ``all``)."""
    out = []
    for mode in modes:
        rows = [s for s in samples if s["mode"] == mode]
        tasks = sorted({s["task"] for s in rows})
        for task in [*tasks, "all"]:
            group = rows if task == "all" else [s for s in rows if s["task"] == task]
            if group:
                out.append(dict(mode=mode, task=task, **aggregate(group)))
        if compile_time is not None and out and out[-1]["mode"] == mode:
            out[-1]["compile_time"] = compile_time.get(mode, 0.0)
    return out


def aggregate(group: list[dict]) -> dict[str, Any]:
    toks = sum(s["tokens"] for s in group)
    nfe = sum(s["nfe"] for s in group)
    wall = sum(s["wall_time"] for s in group)
    acc = [s["acceptance_length"] for s in group if s.get("acceptance_length") is not None]
    return dict(
        n=len(group),
        accuracy=sum(s["correct"] for s in group) / len(group),
        similarity=float(np.mean([s["similarity"] for s in group])) if "similarity" in group[0] else None,
        nfe_mean=nfe / len(group),
        tokens_mean=toks / len(group),
        tpf=toks / max(nfe, 1),
        tpf_row_mean=float(np.mean([s["tpf"] for s in group])),
        acceptance_length=float(np.mean(acc)) if acc else None,
        tokens_per_s=toks / wall if wall > 0 else None,
        wall_time=wall,
    )
