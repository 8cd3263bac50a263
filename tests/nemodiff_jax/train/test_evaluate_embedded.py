"""evaluate_embedded's infill mode against a brute-force fill through the plain forward.

The brute force (``ablate_embedded.infill``, mixed view) recomputes the whole window every step
and commits the most confident masked position, with no cache and no engine; the public
``nemodiff_jax.infill`` must recover exactly the same spans on the shipped model."""

from __future__ import annotations

import pytest

from nemodiff_jax import load
from nemodiff_jax.data.infill_cases import infill_cases
from nemodiff_jax.data.tasks import build_task_dataset
from nemodiff_jax.train.ablate_embedded import infill as brute_force_infill
from nemodiff_jax.train.evaluate_embedded import _hf_tokenizer, evaluate


@pytest.fixture(scope="module")
def model():
    return load("embedded", dtype="float32")


def test_infill_mode_matches_a_brute_force_fill(model):
    examples = build_task_dataset("test", 12, seed=0)
    tok = _hf_tokenizer(model)
    res = evaluate(model, examples, ["infill"], batch=12, log=lambda *a: None)["infill"]
    rows = infill_cases(tok, examples, model.config.bos_token_id)
    hits = brute_force_infill(model, [(r["prefix"], r["span"], r["suffix"], r["task"]) for r in rows],
                              batch=12, attention="mixed")
    assert res["cases"] == len(rows) == 12
    assert res["accuracy"] == pytest.approx(sum(hits) / len(hits))
    assert res["tokens"] == sum(len(r["span"]) for r in rows) and res["tpf"] == pytest.approx(1.0)


def test_unknown_mode_is_one_clear_error(model):
    with pytest.raises(ValueError, match="unknown mode 'difusion'"):
        evaluate(model, build_task_dataset("test", 2), ["difusion"], log=lambda *a: None)
