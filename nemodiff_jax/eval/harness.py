"""lm-evaluation-harness output in ``nemodiff eval``'s shape, so one table and plot serve both.

The harness writes, under ``--output_path``, ``results_<stamp>.json`` (per task: every metric
and its stderr, the run's config) and, with ``--log_samples``, ``samples_<task>_<stamp>.jsonl``
(one document per line: ``doc_id``, ``target``, ``resps``, ``filtered_resps`` and the metric
values). Our CLI adds ``nemodiff_telemetry_<stamp>.json`` beside them
(:mod:`nemodiff_jax.eval.lm_eval_model`). :func:`read_harness` turns a run (or several, one per
mode) into an :class:`~nemodiff_jax.eval.runner.EvalResults`: one metrics row per (mode, task)
plus task ``all``, with ``accuracy`` = the task's primary metric (``metric``, or the first the
harness lists), the harness's metrics kept under ``harness``, and NFE, TPF and acceptance
from the telemetry; samples joined to the per-request telemetry by (task, doc_id). Needs no
lm-eval install.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

TELEMETRY_FIELDS = ("nfe_mean", "tokens_mean", "tpf", "acceptance_length", "tokens_per_s", "wall_time")
_NOT_METRICS = ("alias", "name", "sample_len", "samples")


def find_results(paths: Sequence[str | Path]) -> list[Path]:
    """``results_*.json`` files: each path is such a file or a directory searched recursively."""
    found: list[Path] = []
    for p in map(Path, paths):
        if p.is_file():
            found.append(p)
        elif p.is_dir():
            hits = sorted(p.rglob("results_*.json"))
            if not hits:
                raise ValueError(f"no lm-eval results_*.json under {p}")
            found.extend(hits)
        else:
            raise ValueError(f"lm-eval output {p} does not exist")
    return found


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{path} is not readable JSON: {e}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path} is not a JSON object")
    return data


def primary_metric(task_metrics: dict[str, Any], metric: str | None = None) -> tuple[str, float]:
    """(name, value) of the metric to report as accuracy: ``metric`` (``name`` or ``name,filter``)
    or the first numeric, non-stderr entry."""
    for key, value in task_metrics.items():
        if key in _NOT_METRICS or "_stderr" in key or not isinstance(value, (int, float)) or isinstance(value, bool):
            continue
        if metric is None or key == metric or key.split(",")[0] == metric:
            return key, float(value)
    want = f"metric {metric!r}" if metric else "a numeric metric"
    raise ValueError(f"lm-eval results hold no {want} (have: {sorted(task_metrics)})")


def _label(data: dict, telemetry: dict | None) -> str:
    if telemetry and telemetry.get("label"):
        return telemetry["label"]
    cfg = data.get("config", {})
    args = cfg.get("model_args") or ""
    if isinstance(args, dict):
        args = ",".join(f"{k}={v}" for k, v in args.items())
    return f"{cfg.get('model', 'model')}:{args}" if args else str(cfg.get("model", "model"))


def _stamp(results: Path) -> str:
    return results.stem[len("results_"):] if results.stem.startswith("results_") else ""


def _samples(results: Path, task: str) -> list[dict]:
    stamp = _stamp(results)
    path = results.with_name(f"samples_{task}_{stamp}.jsonl")
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _prediction(sample: dict):
    resp = sample.get("filtered_resps", sample.get("resps"))
    while isinstance(resp, list) and len(resp) == 1:
        resp = resp[0]
    return resp


def read_run(results: Path, metric: str | None = None) -> tuple[list[dict], list[dict], dict]:
    """Metrics rows, samples and config of one ``results_*.json`` (see the module docstring)."""
    data = _read_json(results)
    if not isinstance(data.get("results"), dict):
        raise ValueError(f"{results} is not an lm-eval results file (no 'results' object)")
    tel_path = results.with_name(results.name.replace("results_", "nemodiff_telemetry_", 1))
    telemetry = _read_json(tel_path) if tel_path.is_file() and tel_path != results else None
    label = _label(data, telemetry)
    per_task = (telemetry or {}).get("per_task", {})
    per_request = {(r.get("task"), r.get("doc_id")): r for r in (telemetry or {}).get("requests", [])}
    n_samples = data.get("n-samples", {})
    metrics, samples = [], []
    for task, values in data["results"].items():
        if not isinstance(values, dict):
            continue
        try:
            name, value = primary_metric(values, metric)
        except ValueError:
            if metric is None:
                continue  # a group row without metrics of its own
            raise
        n = (n_samples.get(task) or {}).get("effective") or values.get("sample_len")
        tel = per_task.get(task, {})
        metrics.append(dict(mode=label, task=task, n=n, accuracy=value, metric=name,
                            **{k: tel.get(k) for k in TELEMETRY_FIELDS},
                            harness={k: v for k, v in values.items() if k not in _NOT_METRICS}))
        key = name.split(",")[0]
        for s in _samples(results, task):
            req = per_request.get((task, s.get("doc_id")), {})
            score = s.get(key)
            samples.append(dict(mode=label, task=task, index=s.get("doc_id"), answer=s.get("target"),
                                prediction=_prediction(s), correct=bool(score) if score is not None else None,
                                **{k: req.get(k) for k in ("tokens", "nfe", "tpf", "acceptance_length", "wall_time")}))
    if not metrics:
        raise ValueError(f"{results} holds no task metrics")
    total = (telemetry or {}).get("generate_until") or {}
    n_all = sum(r["n"] or 0 for r in metrics)
    acc = sum((r["n"] or 0) * r["accuracy"] for r in metrics) / n_all if n_all else None
    metrics.append(dict(mode=label, task="all", n=n_all, accuracy=acc, metric=metrics[0]["metric"],
                        **{k: total.get(k) for k in TELEMETRY_FIELDS}))
    config = dict(source="lm-eval", results=str(results), telemetry=str(tel_path) if telemetry else None,
                  model=data.get("config", {}).get("model"), model_args=data.get("config", {}).get("model_args"),
                  lm_eval_version=data.get("lm_eval_version"))
    return metrics, samples, config


def read_harness(paths: Sequence[str | Path] | str | Path, metric: str | None = None):
    """Every lm-eval run under ``paths`` as one :class:`~nemodiff_jax.eval.runner.EvalResults`."""
    from .runner import EvalResults

    if isinstance(paths, (str, Path)):
        paths = [paths]
    metrics, samples, configs = [], [], []
    for results in find_results(paths):
        m, s, c = read_run(results, metric)
        metrics += m
        samples += s
        configs.append(c)
    return EvalResults(dict(source="lm-eval", runs=configs), metrics, samples, {})
