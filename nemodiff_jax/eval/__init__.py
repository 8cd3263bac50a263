"""Evaluation and analysis: batched jitted evaluation, sampler sweeps, the speed-of-light oracle.

* :func:`evaluate` (:mod:`.runner`): accuracy, NFE, TPF, acceptance length, tokens/s per task and mode.
* :func:`run_sweep` (:mod:`.sweep`): policy x threshold x block x temperature x LoRA grid, Pareto front, plot.
* :func:`sol_oracle` / :func:`oracle_report` (:mod:`.oracle`): the speed-of-light TPF (docs/ALGORITHMS.md, "Speed of light").
* :mod:`.datasets` (synthetic suite, JSONL), :mod:`.scorers` (exact, last number, boxed), :mod:`.cli`.
* :class:`NemodiffLM` (:mod:`.lm_eval_model`): the lm-evaluation-harness model ``nemodiff``;
  :func:`read_harness` (:mod:`.harness`) reads the harness's output into :class:`EvalResults`.

Submodules load lazily so ``import nemodiff_jax.eval`` stays cheap.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "evaluate": "runner",
    "EvalResults": "runner",
    "run_sweep": "sweep",
    "SweepGrid": "sweep",
    "SweepResult": "sweep",
    "pareto_front": "report",
    "sol_oracle": "oracle",
    "oracle_report": "oracle_report",
    "load_tasks": "datasets",
    "Example": "datasets",
    "random_model": "models",
    "load_model": "models",
    "embedded_or_random": "models",
    "CompileCounter": "compiles",
    "read_harness": "harness",
    "plot_eval": "plot",
    "NemodiffLM": "lm_eval_model",  # needs lm-eval (pip install -e ".[lm-eval]")
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
