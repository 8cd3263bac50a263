"""evaluate() is deterministic and complete; the sweep's schema, Pareto front and compile counts;
the CLI end to end. One random tiny model and one set of shapes, so compiles are shared."""

from __future__ import annotations

import csv
import json

import pytest

from nemodiff_jax.eval import cli
from nemodiff_jax.eval.models import random_model
from nemodiff_jax.eval.runner import TIME_FIELDS, evaluate, mode_kwargs, parse_mode
from nemodiff_jax.eval.sweep import ROW_FIELDS, SweepGrid, pareto_front, run_sweep

SETTING = dict(modes=("ar", "diffusion:threshold=0.5"), batch_size=2, n=1, max_new_tokens=16, block_length=8,
               warmup=False, progress=False)
TASKS = "synthetic:reverse,sort,zip"  # 3 examples: a full batch and a padded one


@pytest.fixture(scope="module")
def model():
    return random_model("tiny")


def _strip_times(rows):
    return [{k: v for k, v in r.items() if k not in TIME_FIELDS} for r in rows]


def test_evaluate_is_deterministic_and_writes_json_csv(model, tmp_path):
    a = evaluate(model, TASKS, out_dir=tmp_path, **SETTING)
    b = evaluate(model, TASKS, **SETTING)
    assert _strip_times(a.metrics) == _strip_times(b.metrics)
    assert _strip_times(a.samples) == _strip_times(b.samples)
    assert b.compiles["ar"] == 0 and b.compiles["diffusion:threshold=0.5"] == 0  # the second run reuses programs
    # One row per (mode, task) plus "all"; AR has TPF 1; counts add up.
    assert [(r["mode"], r["task"]) for r in a.metrics][:4] == [("ar", "reverse"), ("ar", "sort"), ("ar", "zip"), ("ar", "all")]
    ar, diff = a.metric("ar"), a.metric("diffusion:threshold=0.5")
    assert ar["n"] == diff["n"] == 3 and ar["tpf"] == 1.0 and ar["acceptance_length"] is None
    assert diff["tpf"] >= 1.0 and diff["nfe_mean"] > 0 and diff["tokens_per_s"] > 0
    assert all(0.0 <= r["accuracy"] <= 1.0 and 0.0 <= r["similarity"] <= 1.0 for r in a.metrics)
    assert all(s["similarity"] == 1.0 for s in a.samples if s["correct"])
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["metrics"][3]["tpf"] == 1.0 and len(saved["samples"]) == 6
    with open(tmp_path / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(a.metrics) and {"accuracy", "tpf", "nfe_mean", "tokens_per_s"} <= set(rows[0])


def test_correct_answers_score_and_routing():
    assert parse_mode("diffusion:threshold=0.7,block_length=16,lora=off") == (
        "diffusion", {"threshold": 0.7, "block_length": 16, "lora": False})
    with pytest.raises(ValueError, match="unknown mode"):
        parse_mode("bogus")
    # an inline knob the mode does not take is an error naming the ones it accepts
    with pytest.raises(ValueError, match=r"'thr' .* not a knob of diffusion; diffusion accepts .*threshold"):
        parse_mode("diffusion:thr=0.1")
    with pytest.raises(ValueError, match=r"linear_spec accepts .*draft_threshold"):
        parse_mode("linear_spec:threshold=0.99")
    knobs = dict(threshold=0.9, draft_threshold=0.2, max_new_tokens=20, temperature=0.5, policy="margin")
    assert mode_kwargs("ar", knobs, 8) == {"max_new_tokens": 20, "temperature": 0.5}
    assert mode_kwargs("diffusion", knobs, 8) == {"threshold": 0.9, "max_new_tokens": 16, "temperature": 0.5,
                                                  "policy": "margin", "lora": False}
    assert mode_kwargs("diffusion", {"lora": True}, 8)["lora"] is True
    assert mode_kwargs("linear_spec", knobs, 8) == {"threshold": 0.2, "max_new_tokens": 20, "temperature": 0.5}
    assert mode_kwargs("quadratic_spec", knobs, 8) == {"max_new_tokens": 16}


def test_pareto_front():
    pts = [(0.5, 1.0), (0.4, 2.0), (0.4, 1.5), (0.6, 0.5), (0.5, 1.0)]
    assert pareto_front(pts) == [True, True, False, True, True]


def test_sweep_schema_pareto_and_no_recompiles(model, tmp_path):
    grid = SweepGrid(policies=("threshold",), thresholds=(0.5, 0.9), block_lengths=(8,), temperatures=(0.0, 0.7))
    res = run_sweep(model, TASKS, grid, batch_size=2, n=1, max_new_tokens=16, baselines=("ar",), warmup=False,
                    progress=False, out_dir=tmp_path)
    rows = res.rows
    assert [r["kind"] for r in rows] == ["sampler"] * 4 + ["baseline"]
    assert all(set(ROW_FIELDS) <= set(r) for r in rows)
    # Traced knobs never recompile: the temperature-0.7 rows reuse the temperature-0 programs,
    # and each fused threshold group is one program.
    thr = [r for r in rows if r["policy"] == "threshold"]
    assert [r["threshold"] for r in thr] == [0.5, 0.9, 0.5, 0.9] and all(r["fused"] for r in thr)
    assert thr[0]["compiles"] > 0 and [r["compiles"] for r in thr[1:]] == [0, 0, 0]
    # Lower threshold commits more per forward (same prompts, greedy).
    assert thr[0]["tpf"] >= thr[1]["tpf"]
    assert any(r["pareto"] for r in rows)
    assert pareto_front([(r["accuracy"], r["tpf"]) for r in rows]) == [r["pareto"] for r in rows]
    with open(tmp_path / "sweep.csv") as f:
        header = next(csv.reader(f))
    assert header == list(ROW_FIELDS)
    assert json.loads((tmp_path / "sweep.json").read_text())["rows"][0]["policy"] == "threshold"
    assert (tmp_path / "sweep.png").stat().st_size > 1000 and (tmp_path / "sweep.svg").read_text().startswith("<?xml")


def test_fused_rows_equal_separate_calls(model):
    grid = SweepGrid(policies=("threshold",), thresholds=(0.5, 0.9), block_lengths=(8,))
    kw = dict(batch_size=2, n=1, max_new_tokens=16, baselines=(), warmup=False, progress=False)
    fused = run_sweep(model, TASKS, grid, fuse=True, **kw).rows
    alone = run_sweep(model, TASKS, grid, fuse=False, **kw).rows
    keys = ("accuracy", "tpf", "nfe_mean", "tokens_mean")
    assert [[r[k] for k in keys] for r in fused] == [[r[k] for k in keys] for r in alone]
    assert [r["compiles"] for r in fused] == [0, 0]  # already compiled by the schema test
    # One threshold per call: the first may compile its layout (evaluate() now runs calls through
    # slots, a different program); the second threshold is traced and reuses it.
    assert [r["compiles"] for r in alone][1:] == [0]


def test_eval_cli(tmp_path, capsys):
    out = tmp_path / "cli"
    assert cli.eval_main(["--model", "random:tiny", "--tasks", TASKS, "--n", "1", "--modes", "ar",
                          "--batch-size", "2", "--max-new-tokens", "16", "--no-progress", "--no-warmup",
                          "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "accuracy" in printed and (out / "metrics.csv").is_file() and (out / "samples.jsonl").is_file()
