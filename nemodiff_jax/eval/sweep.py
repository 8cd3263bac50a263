"""Sampler ablation: a grid over unmasking policy x threshold x block length x temperature x LoRA
for block diffusion, giving the accuracy-vs-TPF table and its Pareto front.

What compiles: the decode engine (``generate``) is keyed by the policy, the block length and the shapes;
threshold, gamma, temperature and LoRA are traced. So each (policy, block length) group
compiles once and its other rows reuse the program; every row records the compilations it
caused (``compiles``), which shows it. With ``fuse`` (default), the threshold (or ``eb``'s gamma)
values of a group go in ONE call: the prompts are repeated once per value and each row
carries its own threshold (the decoder broadcasts a per-row threshold array). Wall time of
a fused call is charged to its values in proportion to their rows, so compare tokens/s of
fused rows with care (the loop runs until the slowest row ends); TPF and accuracy are exact.
"""

from __future__ import annotations

import dataclasses
import itertools
import time
from typing import Any, Sequence

import numpy as np

from .. import guard
from ..decode.generate import out_bucket, prompt_bucket
from . import scorers
from .codec import Codec
from .compiles import CompileCounter
from .datasets import Example, load_tasks
from .progress import progress_bar
from .report import pareto_front
from .runner import aggregate, evaluate

THRESHOLD_POLICIES = ("threshold",)
GAMMA_POLICIES = ("eb",)


@dataclasses.dataclass(frozen=True)
class SweepGrid:
    """The swept values. ``thresholds`` apply to ``threshold``, ``gammas`` to ``eb``; other policies
    (quota, margin, entropy, leftmost, random) commit the quota schedule (docs/ALGORITHMS.md, "Unmasking policies")."""

    policies: tuple[str, ...] = ("threshold", "quota")
    thresholds: tuple[float, ...] = (0.5, 0.7, 0.9)
    block_lengths: tuple[int, ...] = (8,)
    temperatures: tuple[float, ...] = (0.0,)
    loras: tuple[bool, ...] = (False,)
    gammas: tuple[float, ...] = (0.5, 1.0, 2.0)

    def groups(self):
        """(policy, block, temperature, lora, values) with ``values`` the traced per-row knob list."""
        for policy, bl, temp, lora in itertools.product(self.policies, self.block_lengths, self.temperatures, self.loras):
            if policy in THRESHOLD_POLICIES:
                values = [("threshold", float(t)) for t in self.thresholds]
            elif policy in GAMMA_POLICIES:
                values = [("gamma", float(g)) for g in self.gammas]
            else:
                values = [(None, None)]
            yield policy, int(bl), float(temp), bool(lora), values

    def size(self) -> int:
        return sum(len(g[-1]) for g in self.groups())


@dataclasses.dataclass
class SweepResult:
    """``rows``: one dict per configuration (schema: :data:`ROW_FIELDS`)."""

    config: dict[str, Any]
    rows: list[dict[str, Any]]

    def table(self) -> str:
        from .report import format_table

        cols = ["kind", "policy", "threshold", "gamma", "block_length", "temperature", "lora", "accuracy", "similarity", "tpf",
                "nfe_mean", "tokens_per_s", "compiles", "fused", "pareto"]
        return format_table(self.rows, cols)

    def pareto(self) -> list[dict[str, Any]]:
        return [r for r in self.rows if r["pareto"]]

    def write(self, out_dir, plot: bool = True, y: str = "auto") -> dict[str, str]:
        from .report import write_csv, write_json

        from pathlib import Path

        out = Path(out_dir)
        paths = {
            "json": str(write_json(dict(config=self.config, rows=self.rows), out / "sweep.json")),
            "csv": str(write_csv(self.rows, out / "sweep.csv", ROW_FIELDS)),
        }
        if plot:
            from .plot import plot_sweep

            paths.update(plot_sweep(self.rows, out / "sweep", title=self.config.get("title"), y=y))
        return paths


ROW_FIELDS = (
    "kind", "mode", "policy", "threshold", "gamma", "block_length", "temperature", "lora",
    "n", "accuracy", "similarity", "tpf", "nfe_mean", "tokens_mean", "tpf_row_mean", "acceptance_length",
    "tokens_per_s", "wall_time", "compiles", "fused", "pareto", "partial",
)


def _diffusion_rows(model, rows: list[list[int]], *, policy, block_length, max_new_tokens, temperature, lora,
                    thresholds: np.ndarray, gammas: np.ndarray, seed: int):
    """One ``generate`` call whose prompts each carry their own threshold and gamma (per-row
    knobs of the engine: one compiled program for the whole grid)."""
    from ..decode.generate import generate

    res = generate(model, rows, mode="diffusion", policy=policy, block_length=block_length,
                   max_new_tokens=max_new_tokens, temperature=temperature, lora=bool(lora),
                   threshold=[float(t) for t in thresholds], policy_params={"gamma": [float(g) for g in gammas]},
                   seed=seed)
    return res.tokens, res.nfe, res.wall_time


def run_sweep(
    model,
    tasks: Sequence[Example] | str | Sequence[str] = "synthetic",
    grid: SweepGrid = SweepGrid(),
    *,
    batch_size: int = 8,
    max_new_tokens: int = 64,
    n: int = 4,
    seed: int = 0,
    baselines: Sequence[str] = ("ar",),
    fuse: bool = True,
    warmup: bool = True,
    oracle: bool = False,
    oracle_kwargs: dict | None = None,
    progress: bool = True,
    out_dir=None,
    title: str | None = None,
) -> SweepResult:
    """Run the grid on diffusion (plus ``baselines`` modes once each, via :func:`evaluate`).

    ``oracle``: also compute the speed-of-light TPF of each block length (its accuracy is the
    serial reference's, the output it reproduces); oracle rows are never on the Pareto front.
    """
    check_grid(grid, batch_size, max_new_tokens)
    examples = list(tasks) if not isinstance(tasks, str) and tasks and isinstance(tasks[0], Example) else load_tasks(tasks, n=n)
    if any(grid.loras) and not model.has_lora:
        raise ValueError("the grid asks for lora=True but the model has no draft LoRA")
    codec = Codec.for_model(model)
    ids = [list(ex.prompt_ids) if ex.prompt_ids is not None else codec.encode(ex.prompt) for ex in examples]
    order = sorted(range(len(ids)), key=lambda i: (prompt_bucket(len(ids[i])), len(ids[i]), i))
    batches = [order[s : s + batch_size] for s in range(0, len(order), batch_size)]
    rows_out: list[dict[str, Any]] = []
    compiled: set[tuple] = set()
    config = dict(
        model=getattr(model, "path", None), grid=dataclasses.asdict(grid), batch_size=batch_size,
        max_new_tokens=max_new_tokens, n_examples=len(examples), tasks=sorted({e.task for e in examples}),
        baselines=list(baselines), fuse=fuse, oracle=oracle, title=title, partial=False,
    )
    current: list = []  # the group in flight: rows of its finished batches, kept on an interrupt
    try:
        with guard.deferred():
            _grid_rows(model, grid, examples, ids, codec, batches, batch_size, max_new_tokens, seed, fuse, warmup,
                       progress, compiled, rows_out, current)
            for spec in baselines:
                rows_out.append(_baseline_row(model, examples, spec, batch_size, max_new_tokens, seed, warmup))
                guard.check()
            if oracle:
                rows_out.extend(_oracle_rows(model, examples, ids, sorted(set(grid.block_lengths)), max_new_tokens,
                                             oracle_kwargs or {}))
    except guard.Interrupted as e:
        rows_out.extend(current)
        e.result = _finish_sweep({**config, "partial": True}, rows_out)
        if out_dir is not None:
            e.result.write(out_dir, plot=False)
            e.partial = str(out_dir)
        raise
    result = _finish_sweep(config, rows_out)
    if out_dir is not None:
        result.write(out_dir)
    return result


def check_grid(grid: SweepGrid, batch_size: int, max_new_tokens: int) -> None:
    """The knobs ``generate`` would reject are rejected here too, before any row runs."""
    def bad(name, values, ok, want):
        for v in values:
            if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)) or not ok(v):
                raise ValueError(f"{name} must be {want}, got {v!r}")

    bad("thresholds", grid.thresholds, lambda v: 0.0 <= v <= 1.0, "in [0, 1]")
    bad("temperatures", grid.temperatures, lambda v: 0.0 <= v < float("inf"), "finite numbers >= 0")
    bad("gammas", grid.gammas, lambda v: np.isfinite(v), "finite numbers")
    bad("block lengths", grid.block_lengths, lambda v: v >= 1 and float(v).is_integer(), "integers >= 1")
    if not grid.policies or not grid.block_lengths or not grid.temperatures or not grid.loras:
        raise ValueError("the sweep grid is empty: give at least one policy, block length, temperature and lora")
    from ..decode import unmask

    for policy in grid.policies:
        unmask.get(policy)
    bad("batch size", [batch_size], lambda v: v >= 1 and float(v).is_integer(), "an integer >= 1")
    bad("max new tokens", [max_new_tokens], lambda v: v >= 1 and float(v).is_integer(), "an integer >= 1")


def _finish_sweep(config: dict, rows_out: list[dict]) -> "SweepResult":
    ranked = [r for r in rows_out if r["kind"] != "oracle"]
    flags = pareto_front([(r["accuracy"], r["tpf"]) for r in ranked])
    for r, f in zip(ranked, flags):
        r["pareto"] = f
    for r in rows_out:
        r.setdefault("pareto", False)
        r.setdefault("partial", False)
    return SweepResult(config, rows_out)


def _baseline_row(model, examples, spec, batch_size, max_new_tokens, seed, warmup) -> dict:
    res = evaluate(model, examples, modes=(spec,), batch_size=batch_size, max_new_tokens=max_new_tokens,
                   seed=seed, warmup=warmup, progress=False)
    m = res.metric(spec)
    mode = spec.partition(":")[0]
    return dict(kind="baseline", mode=spec, policy=mode, threshold=None, gamma=None,
                block_length=None if mode == "ar" else model.config.block_size, temperature=0.0,
                lora=None, **{k: m[k] for k in m if k not in ("mode", "task", "compile_time")},
                compiles=res.compiles[spec], fused=False)


def _grid_rows(model, grid, examples, ids, codec, batches, batch_size, max_new_tokens, seed, fuse, warmup, progress,
               compiled, rows_out, current) -> None:
    """Every grid group; ``current`` holds the rows of the group in flight (finished batches only)."""
    with progress_bar(grid.size() * len(examples), enabled=progress, description="sweep") as bar:
        for policy, bl, temp, lora, values in grid.groups():
            mnt = max(max_new_tokens // bl, 1) * bl
            per_value: list[list[dict]] = [[] for _ in values]
            calls = [[v] for v in range(len(values))] if not fuse else [list(range(len(values)))]
            for call in calls:
                row = _sampler_row(policy, bl, temp, lora, values, per_value, call)
                with CompileCounter() as cc:
                    for batch in batches:
                        rows = [ids[i] for i in batch]
                        rows = rows + [rows[-1]] * (batch_size - len(rows))
                        thr = np.repeat([_value(values[v], "threshold", 0.0) for v in call], batch_size)
                        gam = np.repeat([_value(values[v], "gamma", 1.0) for v in call], batch_size)
                        kw = dict(policy=policy, block_length=bl, max_new_tokens=mnt, temperature=temp, lora=lora,
                                  thresholds=thr, gammas=gam, seed=seed)
                        shape = (policy, bl, len(call) * batch_size, prompt_bucket(max(map(len, rows))))
                        if warmup and shape not in compiled:
                            _diffusion_rows(model, rows * len(call), **kw)
                        compiled.add(shape)
                        toks, nfe, wall = _diffusion_rows(model, rows * len(call), **kw)
                        for k, v in enumerate(call):
                            for r, i in enumerate(batch):
                                ex = examples[i]
                                t = toks[k * batch_size + r]
                                pred = codec.decode(t)
                                ok = bool(scorers.get(ex.scorer)(pred, ex.answer))
                                per_value[v].append(dict(tokens=len(t), nfe=nfe[k * batch_size + r],
                                                         tpf=len(t) / max(nfe[k * batch_size + r], 1), correct=ok,
                                                         similarity=scorers.similarity(pred, ex.answer),
                                                         wall_time=wall / len(call) / len(batch)))
                        bar.advance(len(batch) * len(call), f"{policy} block {bl} T {temp}")
                        current[:] = [row(v, pos, cc.so_far, partial=True) for pos, v in enumerate(call)
                                      if per_value[v]]
                        guard.check()
                current.clear()
                rows_out.extend(row(v, pos, cc.count) for pos, v in enumerate(call))


def _sampler_row(policy, bl, temp, lora, values, per_value, call):
    def row(v, pos, compiles, partial=False):
        name, val = values[v]
        out = dict(kind="sampler", mode="diffusion", policy=policy,
                   threshold=val if name == "threshold" else None, gamma=val if name == "gamma" else None,
                   block_length=bl, temperature=temp, lora=lora, **aggregate(per_value[v]),
                   compiles=compiles if pos == 0 else 0, fused=len(call) > 1)
        if partial:
            out["partial"] = True
        return out

    return row


def _value(v, name: str, default: float) -> float:
    return v[1] if v[0] == name else default


def _oracle_rows(model, examples, ids, block_lengths, max_new_tokens, kwargs) -> list[dict]:
    from .oracle import sol_oracle

    codec = Codec.for_model(model)
    out = []
    for bl in block_lengths:
        mnt = max(max_new_tokens // bl, 1) * bl
        samples = []
        for ex, prompt in zip(examples, ids):
            r = sol_oracle(model, prompt, block_length=bl, max_new_tokens=mnt, **{"lora": False, **kwargs})
            pred = codec.decode(r.tokens)
            ok = bool(scorers.get(ex.scorer)(pred, ex.answer))
            samples.append(dict(tokens=r.num_tokens, nfe=r.oracle_nfe, tpf=r.oracle_tpf, correct=ok,
                                similarity=scorers.similarity(pred, ex.answer), wall_time=0.0))
        agg = aggregate(samples)
        agg.update(tokens_per_s=None, wall_time=None)
        out.append(dict(kind="oracle", mode="diffusion", policy="sol_oracle", threshold=None, gamma=None,
                        block_length=bl, temperature=0.0, lora=False, **agg, compiles=None, fused=False))
    return out
