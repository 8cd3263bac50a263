"""Quadratic self-speculation vs independent references: a cache-free greedy AR brute force, a
plain-python docs/ALGORITHMS.md, "Quadratic self-speculation" on explicit sequences (verification chain and the drafts
of every row), and the causal K/V of the committed tokens after cycles."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nemodiff_jax.model.cache import KVCache
from nemodiff_jax.decode import quadratic_spec as qs
from nemodiff_jax.decode.common import prefill
from nemodiff_jax.decode import engine
from nemodiff_jax.decode.knobs import Knobs, LoopSpec
from nemodiff_jax.decode.quadratic_spec import quadratic_cache_len
from tests.nemodiff_jax.decode.test_linear_spec import brute_greedy, constant_model, key, lora_model
from tests.nemodiff_jax.decode.tiny import greedy_np, pad, prompts, relabel, seq_logits, swap_ids

LENGTHS = [5, 11, 3]
OUT = 64
MAX_NEW = 12


def run(model, rows, max_new=MAX_NEW, *, bk=4, think=-1, end_think=-1, mix=-1.0):
    p, pl = pad(rows)
    return engine.run(
        model.params, model.config, p, pl, key(0), mode="quadratic_spec", block_length=bk, out_len=OUT,
        cache_len=quadratic_cache_len(p.shape[1], OUT, bk), max_new_tokens=max_new, max_thinking_tokens=think,
        end_think_id=end_think, ar_mix_weight=mix,
    )


def reference_quadratic(model, prompt, max_new, bk, think=-1, end_think=-1, clip=True):
    """docs/ALGORITHMS.md, "Quadratic self-speculation" at ar_mix None on explicit sequences (no cache): (tokens, nfe, acceptance)."""
    cfg = model.config
    m, eos = cfg.mask_token_id, cfg.eos_token_id
    prompt = [int(t) for t in prompt]
    n_p = len(prompt)
    boot = seq_logits(model, prompt + [m] * bk, bidir_from=n_p)
    draft = [int(greedy_np(boot[n_p - 1], m))] + [int(t) for t in greedy_np(boot[n_p + 1 : n_p + bk], m)]
    if think == 0:
        draft[0] = end_think
    out, nfe, acc = [], 1, []
    while len(out) < max_new:
        prefix = prompt + out
        l0 = len(prefix)
        nfe += 1
        ar = greedy_np(seq_logits(model, prefix + draft)[l0:], m)  # row heads: the causal chain
        # Drafts past the first EOS of the draft and the limit are not counted (never committed).
        reach = min(draft.index(eos) if eos in draft else bk, max_new - len(out) - 1) if clip else bk
        a = 1
        while a < bk and a <= reach and int(ar[a - 1]) == draft[a]:
            a += 1
        acc.append(a)
        forced = False
        if think >= 0 and end_think not in out:
            k = think - len(out)
            if 1 <= k <= a and end_think not in draft[:k]:
                a, forced = k, True
        # Row a-1's masks: bidirectional block after prefix + d_0..d_{a-1}; slot 1 := AR slot.
        rowseq = prefix + draft[:a] + [m] * bk
        diff = greedy_np(seq_logits(model, rowseq, bidir_from=l0 + a)[l0 + a :], m)
        nxt = [int(ar[a - 1])] + [int(t) for t in diff[1:]]
        if forced:
            nxt[0] = end_think
        commit = draft[:a]
        if eos in commit:
            out += commit[: commit.index(eos) + 1]
            break
        out += commit
        draft = nxt
    return out[:max_new], nfe, acc


def test_acceptance_counts_stop_at_the_limit():
    """As in linear_spec: the accepted drafts are counted only up to the limit (nothing past it
    is committed). A network whose every pass predicts the same token accepts every draft, so
    each limit inside a block cuts the count; tokens stay the AR ones."""
    m = constant_model()
    row = prompts([6])[0]
    for max_new in (2, 3, 7):
        toks, nfe, acc = reference_quadratic(m, row, max_new, 4)
        assert acc != reference_quadratic(m, row, max_new, 4, clip=False)[2]  # the clip bites
        out = run(m, [row], max_new)
        n = int(out.num_tokens[0])
        assert np.asarray(out.tokens[0, :n]).tolist() == toks == brute_greedy(m, row, max_new)
        assert int(out.nfe[0]) == nfe
        assert np.asarray(out.stats["acceptance_lengths"][0, : len(acc)]).tolist() == acc


@pytest.mark.parametrize("bk", [4, 2])
def test_greedy_equals_brute_force_ar_and_reference(bk):
    rows = prompts(LENGTHS)
    seen = []
    for variant in (0, 1):
        m = lora_model(variant)
        out = run(m, rows, bk=bk)
        toks, n = np.asarray(out.tokens), np.asarray(out.num_tokens)
        st = {k: np.asarray(v) for k, v in out.stats.items()}
        for i, r in enumerate(rows):
            expect = brute_greedy(m, r, MAX_NEW)
            assert toks[i, : n[i]].tolist() == expect, (variant, i)
            assert np.all(toks[i, n[i]:] == m.config.pad_token_id)
            ref_toks, nfe, acc = reference_quadratic(m, r, MAX_NEW, bk)
            assert ref_toks == expect
            assert int(out.nfe[i]) == nfe  # 1 bootstrap + 1 per cycle
            assert st["acceptance_lengths"][i, : len(acc)].tolist() == acc
        np.testing.assert_array_equal(out.nfe, 1 + st["cycles"])
        np.testing.assert_array_equal(st["position_accepts"].sum(1), st["acceptance_lengths"].sum(1))
        np.testing.assert_array_equal(st["position_accepts"][:, 0], st["cycles"])
        assert np.all(st["commit_pass"][:, :MAX_NEW] >= 2)
        seen.append(st["acceptance_lengths"].max())
        mixed = run(m, rows, bk=bk, mix=1.0)  # w = 1 is the same as None
        np.testing.assert_array_equal(mixed.tokens, out.tokens)
    assert max(seen) > 1  # the acceptance path was exercised


def test_rows_equal_rows_alone():
    m = lora_model(1)
    rows = prompts(LENGTHS)
    batch = run(m, rows)
    for i in (1, 2):
        alone = run(m, [rows[i]])
        n = int(alone.num_tokens[0])
        assert n == int(batch.num_tokens[i])
        np.testing.assert_array_equal(alone.tokens[0, :n], batch.tokens[i, :n])
        assert int(alone.nfe[0]) == int(batch.nfe[i])
        np.testing.assert_array_equal(alone.stats["acceptance_lengths"][0], batch.stats["acceptance_lengths"][i])


def test_thinking_budget_eos_and_no_recompile():
    m = lora_model(1)
    rows = prompts(LENGTHS)
    run(m, rows)
    size = engine.decode._cache_size()
    out = run(m, rows, think=5, end_think=41)
    for i, r in enumerate(rows):
        n = int(out.num_tokens[i])
        expect = brute_greedy(m, r, MAX_NEW, 5, 41)
        assert np.asarray(out.tokens[i, :n]).tolist() == expect
        assert reference_quadratic(m, r, MAX_NEW, 4, 5, 41)[1] == int(out.nfe[i])
    for max_new in (3, 8):
        o = run(m, rows, max_new, think=0, end_think=41)
        assert np.all(np.asarray(o.num_tokens) == max_new)
        assert np.all(np.asarray(o.tokens[:, 0]) == 41)
    # Per-row EOS: relabel the token row 0 emits at index 3 as the EOS (same network).
    free = brute_greedy(m, rows[0], MAX_NEW)
    eos = m.config.eos_token_id
    m2, rows2 = relabel(m, free[3], eos), swap_ids(rows, free[3], eos)
    out = run(m2, rows2)
    assert int(out.num_tokens[0]) <= 4
    for i, r in enumerate(rows2):
        n = int(out.num_tokens[i])
        assert np.asarray(out.tokens[i, :n]).tolist() == brute_greedy(m2, r, MAX_NEW)
        assert reference_quadratic(m2, r, MAX_NEW, 4)[1] == int(out.nfe[i])  # finished rows stop counting
    assert engine.decode._cache_size() == size


@functools.partial(jax.jit, static_argnames=("cfg", "bk", "cycles", "width"))
def _start_and_cycles(params, cfg, prompt, prompt_len, *, bk, cycles, width):
    b = prompt.shape[0]
    kn = jax.tree.map(jnp.asarray, Knobs.make(b, max_new_tokens=MAX_NEW))  # on device, as the engine passes them
    spec = LoopSpec(mode="quadratic_spec", block_length=bk, out_len=MAX_NEW, prompt_width=width,
                    cache_len=quadratic_cache_len(width, MAX_NEW, bk), slots=b)
    st = qs.start(params, cfg, prompt, prompt_len, jax.random.split(jax.random.key(0), b), kn, spec=spec)
    return jax.lax.fori_loop(0, cycles, lambda _, s: qs.step(params, cfg, s, kn, spec=spec), st)


def test_cache_holds_causal_kv_of_committed_tokens():
    m = lora_model(0)
    cfg = m.config
    rows = prompts(LENGTHS)
    p, pl = pad(rows)
    st = _start_and_cycles(m.params, cfg, p, pl, bk=4, cycles=5, width=p.shape[1])
    length = np.asarray(st.cache.length)
    n_out = np.asarray(st.n_out)
    np.testing.assert_array_equal(length, np.asarray(pl) + n_out)
    assert len(set(n_out.tolist())) > 1 and n_out.max() > 5 + 2  # different, partial and full acceptances
    seqs = [list(r) + np.asarray(st.tokens[i, : n_out[i]]).tolist() for i, r in enumerate(rows)]
    ids, lens = pad(seqs, width=int(length.max()))
    fresh = KVCache.init(cfg, len(rows), ids.shape[1])
    _, ref = prefill(m.params, cfg, ids, lens, fresh)
    for i in range(len(rows)):
        n = int(length[i])
        np.testing.assert_allclose(st.cache.k[:, i, :, :n], ref.k[:, i, :, :n], atol=1e-5, rtol=1e-5)
        np.testing.assert_allclose(st.cache.v[:, i, :, :n], ref.v[:, i, :, :n], atol=1e-5, rtol=1e-5)


def test_cache_too_small_raises():
    m = lora_model(0)
    p, pl = pad(prompts(LENGTHS))
    with pytest.raises(ValueError, match="cache_len"):
        engine.run(m.params, m.config, p, pl, key(0), mode="quadratic_spec", block_length=4, out_len=OUT,
                   cache_len=OUT + p.shape[1], max_new_tokens=4)
