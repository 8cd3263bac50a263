"""AR decoding vs a cache-free brute force; batching, EOS, thinking budget, compile counts."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from nemodiff_jax.decode import engine
from tests.nemodiff_jax.decode.tiny import ar_oracle, pad, prompts, relabel, swap_ids, tiny_model

LENGTHS = [5, 11, 3]
OUT, CACHE = 64, 80  # the shapes generate() uses for these prompts, so compiles are shared


def run(model, rows, max_new, temperature=0.0, think=-1, end_think=-1, seed=0):
    p, pl = pad(rows)
    return engine.run(
        model.params, model.config, p, pl, jax.random.key(seed), mode="ar", out_len=OUT, cache_len=CACHE,
        max_new_tokens=max_new, temperature=temperature, max_thinking_tokens=think, end_think_id=end_think,
    )


def test_greedy_equals_brute_force_and_rows_alone():
    m = tiny_model()
    rows = prompts(LENGTHS)
    out = run(m, rows, 12)
    toks, n = np.asarray(out.tokens), np.asarray(out.num_tokens)
    for i, r in enumerate(rows):
        expect = ar_oracle(m, r, 12)
        assert toks[i, : n[i]].tolist() == expect
        assert np.all(toks[i, n[i]:] == m.config.pad_token_id)
    np.testing.assert_array_equal(out.nfe, [12, 12, 12])
    np.testing.assert_array_equal(out.stats["commit_pass"][:, :12], np.tile(np.arange(1, 13), (3, 1)))
    alone = run(m, [rows[1]], 12)
    np.testing.assert_array_equal(alone.tokens[0], toks[1])


def test_per_row_eos_and_no_recompile():
    m = tiny_model()
    rows = prompts(LENGTHS)
    base = np.asarray(run(m, rows, 12).tokens)
    eos = m.config.eos_token_id
    # Relabel a token row 0 emits at index 3 as the EOS: same network, no config change.
    m2 = relabel(m, int(base[0, 3]), eos)
    rows2 = swap_ids(rows, int(base[0, 3]), eos)
    out = run(m2, rows2, 12)
    assert int(out.num_tokens[0]) <= 4
    for i, r in enumerate(rows2):
        expect = ar_oracle(m2, r, 12, eos=eos)
        n = int(out.num_tokens[i])
        assert np.asarray(out.tokens[i, :n]).tolist() == expect
        assert int(out.nfe[i]) == len(expect)  # a finished row stops counting
    size = engine.decode._cache_size()
    for max_new, t, seed in [(7, 0.0, 0), (12, 0.8, 1), (16, 1.5, 2)]:
        o = run(m2, rows2, max_new, temperature=t, seed=seed)
        assert np.all(np.asarray(o.num_tokens) <= max_new)
        assert not np.any(np.asarray(o.tokens) == m.config.mask_token_id)
    assert engine.decode._cache_size() == size


def test_thinking_budget_forces_end_think():
    m = tiny_model()
    rows = prompts(LENGTHS)
    end = 7
    out = np.asarray(run(m, rows, 12, think=4, end_think=end).tokens)
    for i, r in enumerate(rows):
        free = ar_oracle(m, r, 12)
        if end in free[:4]:
            assert out[i].tolist()[:12] == free
        else:  # forced at index 4, then greedy continues from the forced token
            assert out[i, 4] == end
            assert out[i, :4].tolist() == free[:4]
            assert out[i, 5:12].tolist() == ar_oracle(m, list(r) + free[:4] + [end], 7)
