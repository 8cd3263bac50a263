"""The engine: slots with refill give every prompt the tokens it gets alone (greedy and sampled
with per-prompt seeds), per-row knobs equal the same knobs given alone, streaming ends where
generate ends, and none of it recompiles when traced knobs change."""

from __future__ import annotations

import jax
import numpy as np
import pytest

import nemodiff_jax as nd
from nemodiff_jax.decode import engine
from nemodiff_jax.decode.generate import generate
from tests.nemodiff_jax.decode.tiny import prompts, tiny_model

ROWS = prompts([5, 11, 3, 7, 2, 9, 4, 6], seed=3)
SEEDS = list(range(100, 100 + len(ROWS)))


def _kw(mode, temperature=0.0):
    return dict(mode=mode, max_new_tokens=12, block_length=4, threshold=0.3 if mode == "diffusion" else None,
                temperature=temperature)


@pytest.mark.parametrize("mode,temperature", [("ar", 0.0), ("diffusion", 0.0), ("linear_spec", 0.0),
                                              ("quadratic_spec", 0.0), ("diffusion", 1.5), ("linear_spec", 1.5)])
def test_slots_with_refill_equal_prompts_alone(mode, temperature):
    m = tiny_model()
    kw = _kw(mode, temperature)
    slots = generate(m, ROWS, batch_size=3, seed=SEEDS, **kw)
    for i, row in enumerate(ROWS):
        alone = generate(m, [row], seed=[SEEDS[i]], **kw)
        assert alone.tokens[0] == slots.tokens[i], i
        assert alone.nfe[0] == slots.nfe[i]
        for k, v in alone.stats.items():
            np.testing.assert_array_equal(v[0], slots.stats[k][i], err_msg=k)


def test_per_row_knobs_equal_each_value_alone():
    m = tiny_model()
    thr = [0.1, 0.5, 0.9]
    temp = [0.0, 1.2, 0.0]
    batch = generate(m, ROWS[:3], mode="diffusion", max_new_tokens=12, block_length=4, threshold=thr,
                     temperature=temp, seed=[1, 2, 3])
    for i in range(3):
        alone = generate(m, [ROWS[i]], mode="diffusion", max_new_tokens=12, block_length=4, threshold=thr[i],
                         temperature=temp[i], seed=[i + 1])
        assert alone.tokens[0] == batch.tokens[i]
    with pytest.raises(ValueError, match="threshold"):
        generate(m, ROWS[:3], mode="diffusion", max_new_tokens=12, block_length=4, threshold=[0.1, 0.2])


def test_no_recompile_across_per_row_knobs_and_slots():
    m = tiny_model()
    # 8 rows through 3 slots, the shapes and static knobs of test_slots_with_refill_equal_prompts_alone
    # (linear_spec): the first call reuses that program, only the sweep below is under test
    kw = dict(mode="linear_spec", max_new_tokens=12, block_length=4, batch_size=3)
    generate(m, ROWS, **kw)
    size = engine.decode._cache_size()
    for i, (t, thr, seed) in enumerate([(0.0, 0.5, 1), (1.3, 0.0, 2), ([0.0, 0.7] * 4, [0.2] * 8, SEEDS)]):
        r = generate(m, ROWS, **{**kw, "max_new_tokens": 7 + i}, temperature=t, threshold=thr, seed=seed,
                     top_k=2 * i, top_p=1.0 - 0.1 * i)
        assert all(len(x) <= 7 + i for x in r.tokens)
    assert engine.decode._cache_size() == size


@pytest.mark.parametrize("mode", ["ar", "diffusion", "linear_spec"])
def test_stream_grows_and_ends_at_generate(mode):
    m = tiny_model()
    kw = _kw(mode)
    # 8 rows through 3 slots, as in test_slots_with_refill_equal_prompts_alone: `full` is the
    # program that test compiled (same shapes and static knobs), so only the stream compiles here
    full = generate(m, ROWS, batch_size=3, **kw)
    seen = []
    for upd in nd.stream(m, ROWS, every=2, batch_size=3, **kw):
        for i, t in enumerate(upd.tokens):  # committed tokens are final: each yield extends the last
            if seen:
                assert t[: len(seen[-1].tokens[i])] == seen[-1].tokens[i]
        if mode == "diffusion":
            assert upd.canvas is not None and len(upd.canvas) == len(ROWS)
        seen.append(upd)
    assert len(seen) > 2
    assert seen[-1].tokens == full.tokens and all(seen[-1].finished)


def test_group_refill_equals_prompts_alone():
    """Greedy AR rows without EOS (no token is the EOS) and the same length all end in the same
    round, so 4 slots free up at once and the next 4 prompts start in one batched start
    (refill_batch 4); each prompt alone gives the same tokens and NFE. (One-at-a-time refill
    is checked by the tests above, with 3 slots and prompts of different lengths.)"""
    mode = "ar"  # every row takes exactly 8 rounds: the 4 slots free up together
    from nemodiff_jax.decode.common import pad_prompts

    m = tiny_model(1)
    cfg = m.config.replace(eos_token_id=m.config.mask_token_id)  # never emitted: no row stops early
    rows = prompts([5, 11, 3, 7, 2, 9, 4, 6, 8, 10, 3, 5], seed=4)
    p, pl = pad_prompts([[int(t) for t in r] for r in rows], cfg.pad_token_id)
    kw = dict(mode=mode, out_len=8, cache_len=p.shape[1] + 8 + 4, block_length=4, max_new_tokens=8)
    outs = {4: engine.run(m.params, cfg, p, pl, jax.random.key(0), slots=4, refill_batch=4, **kw)}
    for i in range(len(rows)):
        alone = engine.run(m.params, cfg, p[i:i + 1], pl[i:i + 1], jax.random.key(0), **kw)
        for r, o in outs.items():
            n = int(o.num_tokens[i])
            assert n == int(alone.num_tokens[0]) == 8, (r, i)
            np.testing.assert_array_equal(o.tokens[i, :n], alone.tokens[0, :n], err_msg=f"refill_batch {r}, row {i}")
            assert int(o.nfe[i]) == int(alone.nfe[0])
