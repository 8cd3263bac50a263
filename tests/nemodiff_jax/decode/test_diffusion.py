"""Block diffusion vs a cache-free numpy reimplementation of docs/ALGORITHMS.md, "Block diffusion decoding"; invariants; batching."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nemodiff_jax.decode import engine
from tests.nemodiff_jax.decode.tiny import (
    greedy_np, pad, prompts, relabel, seq_logits, softmax_np, swap_ids, tiny_model,
)

LENGTHS = [5, 11, 3]
BL, OUT = 4, 64  # with cache_len 16 + OUT + block: the shapes generate() uses, so compiles are shared


def run(model, rows, max_new, threshold=0.5, policy="threshold", temperature=0.0, block_length=BL, seed=0,
        think=-1, end_think=-1):
    p, pl = pad(rows)
    return engine.run(
        model.params, model.config, p, pl, jax.random.key(seed), mode="diffusion", block_length=block_length,
        out_len=OUT, cache_len=16 + OUT + block_length, policy=policy, max_new_tokens=max_new,
        temperature=temperature, threshold=threshold, max_thinking_tokens=think, end_think_id=end_think,
    )


def oracle(model, prompt, max_new, bl, threshold):
    """docs/ALGORITHMS.md, "Block diffusion decoding" on the explicit sequence (no cache): returns tokens, nfe, commit pass per token.

    ``threshold=None`` is the quota schedule."""
    cfg = model.config
    mask, eos = cfg.mask_token_id, cfg.eos_token_id
    seq, out, passes, nfe = list(prompt), [], [], 0
    seed, seed_pass = int(greedy_np(seq_logits(model, seq)[-1], mask)), 0

    def stop(x):
        first_eos = next((j for j, t in enumerate(x) if t == eos), bl)
        first_mask = next((j for j, t in enumerate(x) if t == mask), bl)
        return first_eos < first_mask

    for _ in range(max_new // bl):
        x, xp = [seed] + [mask] * (bl - 1), [seed_pass] + [-1] * (bl - 1)
        n_masked = bl - 1
        for step in range(bl):
            if mask not in x or stop(x):
                break
            nfe += 1
            logits = seq_logits(model, seq + x, bidir_from=len(seq))[len(seq):]
            cand = greedy_np(logits, mask)
            conf = softmax_np(logits)[np.arange(bl), cand]
            masked = [j for j in range(bl) if x[j] == mask]
            ranked = sorted(masked, key=lambda j: (-conf[j], j))
            if threshold is None:
                quota = n_masked // bl + (step < n_masked % bl)
                chosen = ranked[: max(quota, 1)]
            else:
                chosen = [ranked[0]] + [j for j in ranked[1:] if conf[j] >= threshold]
            for j in chosen:
                x[j], xp[j] = int(cand[j]), nfe
        nfe += 1
        seq += x
        out += x
        passes += xp
        seed, seed_pass = int(greedy_np(seq_logits(model, seq)[-1], mask)), nfe
        if stop(x):
            break
    if eos in out:
        cut = out.index(eos) + 1
        out, passes = out[:cut], passes[:cut]
    return out, nfe, passes


@pytest.mark.parametrize("threshold", [0.3, None])
def test_matches_numpy_oracle_and_rows_alone(threshold):
    m = tiny_model()
    rows = prompts(LENGTHS)
    policy = "quota" if threshold is None else "threshold"
    out = run(m, rows, 12, threshold=0.0 if threshold is None else threshold, policy=policy)
    toks, n, cp = np.asarray(out.tokens), np.asarray(out.num_tokens), np.asarray(out.stats["commit_pass"])
    for i, r in enumerate(rows):
        expect, nfe, passes = oracle(m, r, 12, BL, threshold)
        assert toks[i, : n[i]].tolist() == expect
        assert int(out.nfe[i]) == nfe
        assert cp[i, : n[i]].tolist() == passes
        assert np.all(cp[i, n[i]:] == -1)
        hist = np.asarray(out.stats["tokens_per_pass"][i])
        np.testing.assert_array_equal(hist[: nfe + 1], np.bincount(passes, minlength=nfe + 1))
    if threshold is not None:
        alone = run(m, [rows[1]], 12, threshold=threshold)
        np.testing.assert_array_equal(alone.tokens[0], toks[1])
        np.testing.assert_array_equal(alone.nfe[0], out.nfe[1])


def test_every_step_commits_and_committed_tokens_are_final():
    """Re-run with max_new growing one block at a time: earlier blocks never change; every
    denoise pass commits >= 1 token (commit_pass covers 1..nfe except commit passes)."""
    m = tiny_model()
    rows = prompts(LENGTHS)
    full = run(m, rows, 12, threshold=0.3)
    toks, cp = np.asarray(full.tokens), np.asarray(full.stats["commit_pass"])
    steps = np.asarray(full.stats["block_steps"])
    for i in range(len(rows)):
        # Passes are numbered block by block: denoise steps, then the commit pass (whose only
        # product is the next seed). Every denoise pass must appear among the commit_pass values.
        used = set(cp[i][cp[i] > 0].tolist())
        k = 0
        for blk in range(3):
            denoise = set(range(k + 1, k + steps[i, blk] + 1))
            assert denoise <= used, (i, blk)
            assert steps[i, blk] <= BL - 1
            k += steps[i, blk] + 1
        assert k == int(full.nfe[i])
        # commit passes are non-decreasing block to block
        blocks = cp[i, :12].reshape(3, BL)
        assert np.all(blocks[1:].min(1) >= blocks[:-1].max(1))
    for max_new in (4, 8):
        part = np.asarray(run(m, rows, max_new, threshold=0.3).tokens)
        np.testing.assert_array_equal(part[:, :max_new], toks[:, :max_new])


def test_block_length_one_equals_ar():
    m = tiny_model()
    rows = prompts(LENGTHS)
    p, pl = pad(rows)
    ar = engine.run(m.params, m.config, p, pl, jax.random.key(0), mode="ar", out_len=OUT, cache_len=16 + OUT,
                    max_new_tokens=12)
    d = run(m, rows, 12, block_length=1)
    np.testing.assert_array_equal(d.tokens, ar.tokens)
    np.testing.assert_array_equal(d.nfe, ar.nfe)


def test_eos_early_exit_and_no_recompile():
    m = tiny_model()
    rows = prompts(LENGTHS)
    base = np.asarray(run(m, rows, 12, threshold=0.3).tokens)
    eos = m.config.eos_token_id
    tok = int(base[0, 5])
    m2, rows2 = relabel(m, tok, eos), swap_ids(rows, tok, eos)
    out = run(m2, rows2, 12, threshold=0.3)
    for i, r in enumerate(rows2):
        expect, nfe, _ = oracle(m2, r, 12, BL, 0.3)
        n = int(out.num_tokens[i])
        assert np.asarray(out.tokens[i, :n]).tolist() == expect
        assert int(out.nfe[i]) == nfe
    assert int(out.num_tokens[0]) <= 6
    size = engine.decode._cache_size()
    for max_new, thr, t, seed in [(8, 0.9, 0.0, 0), (12, 0.1, 0.7, 1), (16, 0.5, 1.2, 2)]:
        o = run(m2, rows2, max_new, threshold=thr, temperature=t, seed=seed)
        assert np.all(np.asarray(o.num_tokens) <= max_new)
        assert not np.any(np.asarray(o.tokens) == m.config.mask_token_id)
    assert engine.decode._cache_size() == size


def test_thinking_budget_injects_end_think():
    m = tiny_model()
    rows = prompts(LENGTHS)
    end = 7
    out = np.asarray(run(m, rows, 12, threshold=0.3, think=6, end_think=end).tokens)
    free = np.asarray(run(m, rows, 12, threshold=0.3).tokens)
    for i in range(len(rows)):
        if end in free[i, :6].tolist():
            np.testing.assert_array_equal(out[i], free[i])
        else:
            assert out[i, 6] == end
            np.testing.assert_array_equal(out[i, :4], free[i, :4])  # earlier blocks untouched
