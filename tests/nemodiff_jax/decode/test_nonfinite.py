"""A row whose logits turn NaN/Inf stops with a flag (issue 17): never a silent stream of token 0.

The poison: one token id whose embedding row is NaN, in an otherwise clean tiny model. The
reference for the other rows is the clean model (they never see the poisoned id): their tokens
must be unchanged. The flagged row: a NaN in its prompt gives NaN logits at the prefill, so it
emits nothing; in AR, a poisoned id it generates itself is emitted (its logits were finite) and
the row stops right after it.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import nemodiff_jax as nd

from .tiny import tiny_model

PROMPTS = [[5, 9, 11, 20], [7, 33, 12], [8, 14, 22, 30, 41]]
MODES = {
    "ar": {},
    "diffusion": dict(block_length=4, threshold=0.5),
    "linear_spec": dict(block_length=4),
    "quadratic_spec": dict(block_length=4),
}
NEW = 12


def poisoned(model: nd.Model, token: int) -> nd.Model:
    params = dict(model.params)
    params["embed_tokens"] = np.asarray(params["embed_tokens"]).copy()
    params["embed_tokens"][token] = np.nan
    return model.replace(params=params)


def never_chosen(model: nd.Model, token: int) -> nd.Model:
    """``token``'s head column at zero: its logit is 0, below every row's peaked maximum, so no
    mode drafts or emits it (speculative drafts are not in the output, so the clean run alone
    cannot tell which ids a row touches)."""
    params = dict(model.params)
    params["diffusion_head"] = np.asarray(params["diffusion_head"]).copy()
    params["diffusion_head"][:, token] = 0.0
    return model.replace(params=params)


def _run(model, prompts, mode):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = nd.generate(model, prompts, mode=mode, max_new_tokens=NEW, **MODES[mode])
    return res, [w for w in caught if "non-finite" in str(w.message) or "NaN" in str(w.message)]


@pytest.mark.parametrize("mode", list(MODES))
def test_a_nan_prompt_row_stops_flagged_and_the_others_are_unchanged(mode):
    bad = 60
    clean = never_chosen(tiny_model(), bad)
    ref, none = _run(clean, PROMPTS, mode)  # same shapes as below: one compile
    assert not none and not ref.stats["nonfinite"].any()
    assert bad not in {t for row in PROMPTS + ref.tokens for t in row}
    prompts = [PROMPTS[0], [7, bad, 12], PROMPTS[2]]
    res, caught = _run(poisoned(clean, bad), prompts, mode)
    assert res.stats["nonfinite"].tolist() == [False, True, False]
    assert res.tokens[1] == []  # nothing chosen from NaN logits
    assert [res.tokens[0], res.tokens[2]] == [ref.tokens[0], ref.tokens[2]]
    assert len(caught) == 1 and "[1]" in str(caught[0].message)


AR_PROMPTS = [[32, 34, 49, 61, 6], [12, 53, 60, 18, 22], [28, 58, 16, 34, 19]]


def test_ar_row_stops_right_after_generating_the_poisoned_id():
    clean = tiny_model()
    ref, _ = _run(clean, AR_PROMPTS, "ar")
    others = {t for i in (0, 2) for t in AR_PROMPTS[i] + ref.tokens[i]} | set(AR_PROMPTS[1])
    row = ref.tokens[1]
    k, bad = next((k, t) for k, t in enumerate(row[:-1]) if t >= 4 and t not in others and t not in row[:k])
    res, caught = _run(poisoned(clean, bad), AR_PROMPTS, "ar")
    assert res.tokens[1] == row[: k + 1]
    assert res.stats["nonfinite"].tolist() == [False, True, False]
    assert [res.tokens[0], res.tokens[2]] == [ref.tokens[0], ref.tokens[2]]
    assert res.nfe[1] == k + 1
