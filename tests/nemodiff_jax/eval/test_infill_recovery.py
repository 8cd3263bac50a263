"""The recovery benchmark's cases: spans cut where the docs say, and exact matching, on a tiny model."""

from __future__ import annotations

from nemodiff_jax.data.tasks import build_task_dataset
from nemodiff_jax.data.tokenizer_train import load_tokenizer
from nemodiff_jax.eval.infill_recovery import cases, recovery
from tests.nemodiff_jax.decode.tiny import tiny_model


def test_cases_cut_spans_from_answers():
    tok = load_tokenizer()
    examples = build_task_dataset("test", 24)
    rows = cases(tok, examples, bos=1, seed=3)
    assert len(rows) >= 12
    for r in rows:
        prompt, answer, task = examples[r["index"]]
        assert task == r["task"]
        p = tok.encode(prompt, add_special_tokens=False).ids
        a = tok.encode(answer, add_special_tokens=False).ids
        head = len(r["prefix"]) - 1 - len(p)
        assert r["prefix"] == [1, *p, *a[:head]] and head >= 1
        assert 4 <= len(r["span"]) <= 8 and r["span"] == a[head:head + len(r["span"])]
        assert 1 <= len(r["suffix"]) <= 16 and r["suffix"] == a[head + len(r["span"]):][:16]


def test_recovery_counts_exact_spans():
    model = tiny_model()
    rows = [dict(task="t", prefix=[1, 5, 6], span=[7, 8, 9, 10], suffix=[11, 12])] * 2
    res = recovery(model, rows, batch=2)
    assert res["cases"] == 2 and res["mean_nfe"] == 4.0 and res["exact_recovery"] in (0.0, 1.0)
