"""Infilling and revision vs a cache-free python/numpy loop over ``forward`` (docs/ALGORITHMS.md,
"Infilling and revision"); rows of a batch equal rows run alone; knobs never recompile."""

from __future__ import annotations

import numpy as np
import pytest

import nemodiff_jax as nd
from nemodiff_jax.decode import infill as infill_mod
from tests.nemodiff_jax.decode.tiny import greedy_np, prompts, seq_logits, softmax_np, tiny_model


def fill_oracle(model, prefix, window, threshold=None, steps=None):
    """Denoise the masks of ``window`` after ``prefix``: each step one bidirectional pass over
    the explicit sequence ``prefix + window`` (no cache); greedy candidates; commit the best
    masked one plus those >= threshold, or the quota schedule over ``steps``."""
    mask = model.config.mask_token_id
    x = list(window)
    passes = [-1 if t == mask else 0 for t in x]
    n0 = sum(t == mask for t in x)
    steps = n0 if steps is None else steps
    step = 0
    while mask in x:
        logits = seq_logits(model, list(prefix) + x, bidir_from=len(prefix))[len(prefix):]
        cand = greedy_np(logits, mask)
        conf = softmax_np(logits)[np.arange(len(x)), cand]
        masked = [j for j, t in enumerate(x) if t == mask]
        ranked = sorted(masked, key=lambda j: (-conf[j], j))
        if threshold is None:
            quota = n0 // steps + (step < n0 % steps)
            chosen = ranked[: max(quota, 1)]
        else:
            chosen = [ranked[0]] + [j for j in ranked[1:] if conf[j] >= threshold]
        step += 1
        for j in chosen:
            x[j], passes[j] = int(cand[j]), step
    return x, passes, step


ROWS = [(5, 3, 4), (11, 2, 0), (3, 4, 6)]  # (prefix length, masks, suffix length)


def _data(seed=0):
    pre = prompts([r[0] for r in ROWS], seed=seed)
    suf = prompts([r[2] for r in ROWS], seed=seed + 1)
    return [list(map(int, p)) for p in pre], [list(map(int, s)) for s in suf], [r[1] for r in ROWS]


@pytest.mark.parametrize("threshold,steps", [(None, None), (0.3, None), (None, 2)])
def test_infill_matches_reference_and_rows_alone(threshold, steps):
    model = tiny_model()
    mask = model.config.mask_token_id
    pre, suf, lengths = _data()
    res = nd.infill(model, pre, suf, length=lengths, threshold=threshold, steps=steps)
    for i in range(len(pre)):
        want, passes, nfe = fill_oracle(model, pre[i], [mask] * lengths[i] + suf[i], threshold, steps)
        assert res.tokens[i] == want[: lengths[i]], i
        assert res.commit_pass[i] == passes[: lengths[i]], i
        assert res.nfe[i] == nfe
        assert res.canvas[i] == pre[i] + want
        alone = nd.infill(model, [pre[i]], [suf[i]], length=lengths[i], threshold=threshold, steps=steps)
        assert alone.tokens[0] == res.tokens[i] and alone.nfe[0] == res.nfe[i]
    if steps is None and threshold is None:
        assert res.nfe == lengths  # one token per step


def test_infill_knobs_do_not_recompile():
    model = tiny_model()
    pre, suf, lengths = _data()
    nd.infill(model, pre, suf, length=lengths, threshold=0.5)
    compiles = infill_mod.COMPILES[0]
    for kw in (dict(threshold=0.9), dict(threshold=[0.1, 0.5, 0.99]), dict(threshold=0.5, temperature=0.7, seed=3),
               dict(threshold=0.5, top_k=5, top_p=0.8, seed=[1, 2, 3])):
        r = nd.infill(model, pre, suf, length=lengths, **kw)
        assert r.compile_time == 0.0
    assert infill_mod.COMPILES[0] == compiles


def test_infill_other_policies_and_sampling_fill_every_mask():
    model = tiny_model()
    pre, suf, lengths = _data()
    mask = model.config.mask_token_id
    for policy in ("margin", "eb"):
        r = nd.infill(model, pre, suf, length=lengths, policy=policy, steps=2, seed=1)
        assert [len(t) for t in r.tokens] == lengths
        assert all(mask not in t for t in r.tokens)
        assert all(min(p) >= 1 for p in r.commit_pass)
    a = nd.infill(model, pre, suf, length=lengths, temperature=1.0, seed=[5, 6, 7])
    b = nd.infill(model, pre[1:2], suf[1:2], length=lengths[1], temperature=1.0, seed=[6])
    assert a.tokens[1] == b.tokens[0]  # a sampled row depends on its own seed only


def test_infill_bad_input_names_the_problem():
    model = tiny_model()
    with pytest.raises(ValueError, match="length"):
        nd.infill(model, [[5, 6]], [[7]], length=0)
    with pytest.raises(ValueError, match="mask token"):
        nd.infill(model, [[5, 6]], [[model.config.mask_token_id]], length=2)
    with pytest.raises(ValueError, match="suffixes"):
        nd.infill(model, [[5, 6], [7, 8]], [[7], [8], [9]], length=2)
    with pytest.raises(ValueError, match="threshold"):
        nd.infill(model, [[5, 6]], [[7]], length=2, threshold=1.5)
    with pytest.raises(ValueError, match="tokenizer"):
        nd.infill(model, "abc", "d", length=2)


def test_revise_spans_match_reference():
    model = tiny_model()
    mask = model.config.mask_token_id
    rows = [list(map(int, r)) for r in prompts([12, 9], seed=4)]
    spans = [[(3, 5), (7, 9)], [(2, 6)]]
    res = nd.revise(model, rows, spans=spans)
    for i, (r, sp) in enumerate(zip(rows, spans)):
        pos = sorted(j for a, b in sp for j in range(a, b))
        c = pos[0]
        window = [mask if c + j in pos else t for j, t in enumerate(r[c:])]
        want, passes, nfe = fill_oracle(model, r[:c], window)
        assert res.tokens[i] == r[:c] + want
        assert res.remasked[i] == pos and res.nfe[i] == nfe == len(pos)
        assert res.changed[i] == [(j, r[j], res.tokens[i][j]) for j in pos if r[j] != res.tokens[i][j]]


def test_revise_remask_below_uses_bidirectional_confidence():
    model = tiny_model()
    rows = [list(map(int, r)) for r in prompts([10, 7], seed=5)]
    res = nd.revise(model, rows, remask_below=0.5, keep=2)
    for i, r in enumerate(rows):
        probs = softmax_np(seq_logits(model, r, bidir_from=0))
        conf = probs[np.arange(len(r)), r]
        np.testing.assert_allclose(res.confidence[i], conf, atol=1e-4)
        assert res.remasked[i] == [j for j in range(2, len(r)) if conf[j] < 0.5]
        assert res.tokens[i][:2] == r[:2] and len(res.tokens[i]) == len(r)
    with pytest.raises(ValueError, match="exactly one"):
        nd.revise(model, rows)
    with pytest.raises(ValueError, match="span"):
        nd.revise(model, rows, spans=[(0, 3)])
