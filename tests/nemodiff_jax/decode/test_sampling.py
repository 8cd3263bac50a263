"""sampling: filter supports vs a numpy brute force, greedy at T=0, sampled frequencies at T>0."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nemodiff_jax.decode import sampling

MASK = 3


def np_support(logits, temperature, top_k, top_p, mask_id):
    """Brute force: keep the top_k by value (ties to lower id), then the smallest prefix of the
    renormalised sorted distribution whose mass reaches top_p."""
    x = np.array(logits, np.float64) / (temperature if temperature > 0 else 1.0)
    x[mask_id] = -np.inf
    order = sorted(range(len(x)), key=lambda i: (-x[i], i))
    k = top_k if top_k > 0 else len(x)
    kept = [i for i in order[:k] if np.isfinite(x[i])]
    p = np.exp(x[kept] - x[kept].max())
    p /= p.sum()
    out, mass = [], 0.0
    for i, pi in zip(kept, p):
        if top_p < 1.0 and mass >= top_p and out:
            break
        out.append(i)
        mass += pi
    return set(out)


@pytest.mark.parametrize("seed", range(2))
@pytest.mark.parametrize("top_k,top_p,t", [(0, 1.0, 1.0), (3, 1.0, 1.0), (0, 0.6, 0.7), (5, 0.8, 2.0), (1, 0.3, 1.0)])
def test_filter_support_matches_brute_force(seed, top_k, top_p, t):
    logits = np.random.default_rng(seed).normal(size=(12,)) * 2
    got = np.asarray(sampling.filter_logits(jnp.asarray(logits, jnp.float32), t, top_k, top_p, MASK))
    assert set(np.flatnonzero(np.isfinite(got))) == np_support(logits, t, top_k, top_p, MASK)
    kept = np.isfinite(got)
    np.testing.assert_allclose(got[kept], (logits / t)[kept], rtol=1e-5)


def test_knobs_are_traced():
    f = jax.jit(sampling.filter_logits, static_argnums=(4,))
    x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 9)), jnp.float32)
    for t, k, p in [(1.0, 0, 1.0), (0.5, 3, 0.9), (2.0, 1, 0.2)]:
        f(x, t, k, p, MASK)
    assert f._cache_size() == 1


def test_greedy_excludes_mask_and_confidence_is_raw_softmax():
    logits = jnp.asarray([[0.0, 1.0, 2.0, 9.0, 0.5], [4.0, 1.0, 2.0, 3.0, 0.5]], jnp.float32)
    key = jax.random.key(0)
    tok = sampling.choose(logits, key, 0.0, 0, 1.0, MASK)
    np.testing.assert_array_equal(tok, [2, 0])
    onehot = sampling.probs(logits, 0.0, 0, 1.0, MASK)
    np.testing.assert_array_equal(onehot, np.eye(5)[[2, 0]])
    conf = np.asarray(sampling.confidence(logits, tok))
    ref = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    np.testing.assert_allclose(conf, ref[[0, 1], [2, 0]], rtol=1e-6)
    # T-independent: the same with any temperature, and the mask never sampled at T > 0.
    samples = sampling.choose(jnp.broadcast_to(logits[0], (2000, 5)), key, 3.0, 0, 1.0, MASK)
    assert not np.any(np.asarray(samples) == MASK)


def np_greedy(logits, mask_id):
    """numpy's argmax with the mask token at -inf: ties to the lowest id, a NaN's first index."""
    x = np.array(logits, np.float64)
    if 0 <= mask_id < x.shape[-1]:
        x[..., mask_id] = -np.inf
    return np.argmax(x, axis=-1)


@pytest.mark.parametrize("mask_id", [MASK, 0, 99])
def test_greedy_is_numpy_argmax_ties_nan_inf(mask_id):
    """The two-reduction argmax against numpy on the cases that trip such rewrites: ties
    (small integer logits), the maximum at the mask token, +inf, all -inf, NaNs."""
    rng = np.random.default_rng(0)
    x = rng.integers(-3, 3, size=(6, 7, 40)).astype(np.float32)
    x[0, 0, mask_id % 40] = 50.0  # the best logit is the mask token's: the runner-up wins
    x[0, 1, [5, 9]] = np.inf  # two +inf: the first
    x[0, 2] = -np.inf  # nothing finite: index 0, as argmax
    x[0, 3, [7, 2]] = np.nan  # NaNs win, the first one
    x[0, 4, :] = np.nan
    x[0, 5, 11] = np.nan
    x[0, 5, 3] = np.inf
    got = jax.jit(sampling.greedy, static_argnums=1)(jnp.asarray(x), mask_id)
    assert got.dtype == jnp.int32
    np.testing.assert_array_equal(np.asarray(got), np_greedy(x, mask_id))
    wide = rng.normal(size=(3, 2, 4099)).astype(np.float32)  # a vocabulary not a power of two
    np.testing.assert_array_equal(np.asarray(sampling.greedy(jnp.asarray(wide), 4098)), np_greedy(wide, 4098))
    bf16 = jnp.asarray(x[1:], jnp.bfloat16)
    np.testing.assert_array_equal(np.asarray(sampling.greedy(bf16, mask_id)), np_greedy(np.asarray(bf16, np.float32), mask_id))


@pytest.mark.parametrize("t,top_k,top_p", [(1.0, 0, 1.0), (0.7, 3, 1.0), (1.5, 0, 0.8)])
def test_sample_frequencies(t, top_k, top_p):
    logits = jnp.asarray([0.3, 1.0, -0.5, 2.0, 0.0, 0.8], jnp.float32)
    n = 20000
    p = np.asarray(sampling.probs(logits, t, top_k, top_p, MASK), np.float64)
    assert p[MASK] == 0 and abs(p.sum() - 1) < 1e-5
    draws = np.asarray(sampling.choose(jnp.broadcast_to(logits, (n, 6)), jax.random.key(1), t, top_k, top_p, MASK))
    counts = np.bincount(draws, minlength=6)
    support = p > 0
    assert counts[~support].sum() == 0
    expected = n * p[support]
    chi2 = float(((counts[support] - expected) ** 2 / expected).sum())
    assert chi2 < 25.0  # df <= 5; p-value ~1e-4


def test_entropy_and_margin():
    logits = jnp.log(jnp.asarray([[0.5, 0.25, 0.25], [1.0, 1e-9, 1e-9]], jnp.float32))
    np.testing.assert_allclose(sampling.entropy(logits), [1.5 * np.log(2), 0.0], atol=1e-5)
    np.testing.assert_allclose(sampling.margin(logits), [0.25, 1.0], atol=1e-5)
