"""unmask: every policy on hand-made rows; the quota schedule; invariants under vmap."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nemodiff_jax.decode import unmask

# Per-position distributions over 4 tokens; candidates are the argmax (token 0).
PROBS = np.array(
    [
        [0.95, 0.03, 0.01, 0.01],  # very confident, low entropy
        [0.50, 0.30, 0.10, 0.10],  # margin 0.2
        [0.40, 0.40, 0.10, 0.10],  # conf 0.4, margin 0
        [0.85, 0.05, 0.05, 0.05],  # confident
        [0.30, 0.25, 0.25, 0.20],  # unsure
        [0.99, 0.01, 0.00, 0.00],  # not masked: never chosen
    ]
)
LOGITS = jnp.log(jnp.asarray(PROBS + 1e-12, jnp.float32))
CAND = jnp.zeros((6,), jnp.int32)
MASKED = jnp.asarray([True, True, True, True, True, False])
KEY = jax.random.key(0)


def run(name, **kw):
    return np.flatnonzero(np.asarray(unmask.get(name)(LOGITS, CAND, MASKED, KEY, unmask.UnmaskParams.make(**kw))))


def test_threshold():
    assert list(run("threshold", threshold=0.8)) == [0, 3]
    assert list(run("threshold", threshold=0.99)) == [0]  # at least the best one
    assert list(run("threshold", threshold=0.0)) == [0, 1, 2, 3, 4]


def test_ranking_policies():
    assert list(run("quota", quota=2)) == [0, 3]
    assert list(run("low_confidence", quota=3)) == [0, 1, 3]
    assert list(run("margin", quota=2)) == [0, 3]
    assert list(run("margin", quota=3)) == [0, 1, 3]
    assert list(run("entropy", quota=1)) == [0]
    assert list(run("leftmost", quota=2)) == [0, 1]
    assert list(run("quota", quota=0)) == [0]  # at least one
    assert list(run("quota", quota=99)) == [0, 1, 2, 3, 4]


def test_eb_cumulative_entropy():
    ent = -(PROBS * np.log(np.where(PROBS > 0, PROBS, 1))).sum(1)
    order = [0, 3, 1, 2, 4]  # by confidence
    cum = np.cumsum(ent[order])
    for gamma in [0.0, cum[0], cum[1] + 1e-3, cum[2] + 1e-3, 100.0]:
        n = max(1, int((cum <= gamma).sum()))
        assert sorted(run("eb", gamma=gamma)) == sorted(order[:n]), gamma


@pytest.mark.parametrize("name", sorted(unmask.POLICIES))
def test_invariants_random_rows(name):
    rng = np.random.default_rng(0)
    b, length, v = 16, 8, 5
    logits = jnp.asarray(rng.normal(size=(b, length, v)) * 3, jnp.float32)
    cand = jnp.asarray(rng.integers(0, v, size=(b, length)), jnp.int32)
    masked = jnp.asarray(rng.random((b, length)) < 0.5).at[:, 0].set(True)
    params = unmask.UnmaskParams(
        jnp.full((b,), 0.7, jnp.float32),
        jnp.full((b,), 0.5, jnp.float32),
        jnp.asarray(rng.integers(0, 4, b), jnp.int32),
    )
    commit = np.asarray(jax.vmap(unmask.get(name))(logits, cand, masked, jax.random.split(KEY, b), params))
    assert np.all(commit.sum(1) >= 1)
    assert not np.any(commit & ~np.asarray(masked))


def test_random_is_uniform_over_masked():
    keys = jax.random.split(KEY, 3000)
    params = unmask.UnmaskParams.make(quota=1)
    picks = jax.vmap(lambda k: unmask.random(LOGITS, CAND, MASKED, k, params))(keys)
    counts = np.asarray(picks).sum(0)
    assert counts[5] == 0 and np.all(np.abs(counts[:5] - 600) < 120)


def test_quota_schedule():
    sched = np.asarray(unmask.quota_schedule(jnp.asarray([7, 3, 8]), 4))
    np.testing.assert_array_equal(sched, [[2, 2, 2, 1], [1, 1, 1, 0], [2, 2, 2, 2]])
    for s in range(4):
        np.testing.assert_array_equal(unmask.quota_at(jnp.asarray([7, 3, 8]), 4, s), sched[:, s])


def test_unknown_policy():
    with pytest.raises(ValueError, match="unknown unmask policy"):
        unmask.get("nope")


def test_numeric_knobs_are_traced():
    f = jax.jit(lambda p: [unmask.get(n)(LOGITS, CAND, MASKED, KEY, p) for n in ("threshold", "quota", "eb")])
    for thr, gamma, quota in [(0.1, 0.5, 1), (0.9, 2.0, 3), (0.5, 0.0, 2)]:
        f(unmask.UnmaskParams.make(thr, gamma, quota))
    assert f._cache_size() == 1
