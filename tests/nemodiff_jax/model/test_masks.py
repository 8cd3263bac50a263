"""Mask builders against hand-written brute-force predicates (independent of masks.py)."""

import numpy as np
import pytest
import jax.numpy as jnp

from nemodiff_jax.model import masks


def brute_window(prefix, bidir_start, window_len, q_count, t):
    m = np.zeros((q_count, t), bool)
    for i in range(q_count):
        for j in range(t):
            if j < prefix:
                m[i, j] = True
            elif j < prefix + window_len:
                w = j - prefix
                m[i, j] = w <= i or i >= bidir_start
    return m


def brute_quadratic(prefix, b, t):
    q_count = b * (b + 1)
    m = np.zeros((q_count, t), bool)
    for qi in range(q_count):
        qr, qs = divmod(qi, b + 1)
        for j in range(t):
            if j < prefix:
                m[qi, j] = True
                continue
            kw = j - prefix
            if kw >= q_count:
                continue
            kr, ks = divmod(kw, b + 1)
            if ks == 0 and kr <= qr:  # row heads 0..qr (the causal chain)
                m[qi, j] = True
            if qs >= 1 and kr == qr:  # a mask slot sees its whole row
                m[qi, j] = True
    return m


def brute_block_diff(seq_len, block):
    n = 2 * seq_len
    m = np.zeros((n, n), bool)
    for q in range(n):
        for k in range(n):
            qc, kc = q >= seq_len, k >= seq_len
            qp, kp = q % seq_len, k % seq_len
            if not qc and not kc:
                m[q, k] = qp // block == kp // block
            elif not qc and kc:
                m[q, k] = kp // block < qp // block
            elif qc and kc:
                m[q, k] = kp <= qp
    return m


def test_causal_rows_of_different_lengths_and_empty_prefix():
    prefix = jnp.array([0, 3, 9], jnp.int32)
    got = np.asarray(masks.build_mask(masks.causal(prefix, 4), 4, 16))
    for b, p in enumerate([0, 3, 9]):
        np.testing.assert_array_equal(got[b], brute_window(p, 4, 4, 4, 16))


def test_bidirectional_window_at_the_end_of_the_cache():
    t = 12
    prefix = jnp.array([8, 2], jnp.int32)  # first row's window fills slots 8..11, the last ones
    got = np.asarray(masks.build_mask(masks.bidirectional(prefix, 4), 4, t))
    np.testing.assert_array_equal(got[0], brute_window(8, 0, 4, 4, t))
    np.testing.assert_array_equal(got[1], brute_window(2, 0, 4, 4, t))
    assert got[0].all()  # every query sees every slot
    assert not got[1][:, 6:].any()  # nothing past the window (stale slots)


def test_mixed_bootstrap_and_right_padding():
    prefix = jnp.array([0, 0], jnp.int32)
    pol = masks.mixed(prefix, jnp.array([5, 3]), jnp.array([9, 7]))
    got = np.asarray(masks.build_mask(pol, 10, 10))
    np.testing.assert_array_equal(got[0], brute_window(0, 5, 9, 10, 10))
    np.testing.assert_array_equal(got[1], brute_window(0, 3, 7, 10, 10))


@pytest.mark.parametrize("b", [2, 3, 5])
def test_quadratic_layout(b):
    prefix = jnp.array([0, 4], jnp.int32)
    t = 4 + b * (b + 1) + 3
    got = np.asarray(masks.build_mask(masks.quadratic(prefix, b), b * (b + 1), t))
    np.testing.assert_array_equal(got[0], brute_quadratic(0, b, t))
    np.testing.assert_array_equal(got[1], brute_quadratic(4, b, t))


def test_quadratic_row_heads_form_a_causal_chain():
    b = 4
    m = brute_quadratic(0, b, b * (b + 1))
    heads = np.arange(b) * (b + 1)
    np.testing.assert_array_equal(m[np.ix_(heads, heads)], np.tril(np.ones((b, b), bool)))


@pytest.mark.parametrize("seq_len,block", [(8, 4), (12, 4), (6, 3), (5, 2)])
def test_block_diff_training_mask(seq_len, block):
    got = np.asarray(masks.build_mask(masks.block_diff(seq_len, block, 2), 2 * seq_len, 2 * seq_len))
    np.testing.assert_array_equal(got[0], brute_block_diff(seq_len, block))
    np.testing.assert_array_equal(got[1], got[0])


def test_bad_layouts_are_refused():
    with pytest.raises(ValueError, match="layout"):
        masks.AttentionPolicy(jnp.zeros(1, jnp.int32), jnp.zeros(1, jnp.int32), jnp.zeros(1, jnp.int32), "sliding")
    with pytest.raises(ValueError, match="block"):
        masks.quadratic(jnp.zeros(1, jnp.int32), 0)
