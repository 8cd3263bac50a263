"""generate(): knob validation, batching vs rows alone, no recompiles across sweeps, text I/O."""

from __future__ import annotations

import numpy as np
import pytest

import sys

import nemodiff_jax.decode.generate

gen_mod = sys.modules["nemodiff_jax.decode.generate"]
from nemodiff_jax.decode import engine
from nemodiff_jax.decode.generate import generate
from tests.nemodiff_jax.decode.tiny import ar_oracle, prompts, tiny_model

ROWS = prompts([5, 11, 3])


class CharTokenizer:
    """ids 4..63 <-> characters; enough to exercise string prompts and texts."""

    def encode(self, text):
        return [4 + (ord(c) % 60) for c in text]

    def encode_prompt(self, text):  # the library's prompt convention: BOS (1 in the tiny config) first
        return [1, *self.encode(text)]

    def decode(self, ids):
        return "".join(chr(ord("A") + (i % 26)) for i in ids)


@pytest.mark.parametrize(
    "kwargs,knob",
    [
        (dict(mode="beam"), "mode"),
        (dict(mode="diffusion", max_new_tokens=10, block_length=4), "block_length"),
        (dict(threshold=1.5), "threshold"),
        (dict(threshold=-0.1), "threshold"),
        (dict(temperature=-1.0), "temperature"),
        (dict(top_p=0.0), "top_p"),
        (dict(top_p=1.2), "top_p"),
        (dict(top_k=-3), "top_k"),
        (dict(max_new_tokens=0), "max_new_tokens"),
        (dict(max_new_tokens=600), "max_new_tokens"),
        (dict(cache_len=40), "cache_len"),
        (dict(mode="diffusion", policy="nope"), "policy"),
        (dict(mode="diffusion", policy_params={"tau": 1}), "policy_params"),
        (dict(lora=True), "lora"),
        (dict(max_thinking_tokens=5), "end_think_token_id"),
        (dict(max_thinking_tokens=-2, end_think_token_id=5), "max_thinking_tokens"),
    ],
)
def test_bad_knobs_raise_naming_the_knob(kwargs, knob):
    with pytest.raises(ValueError, match=knob):
        generate(tiny_model(), ROWS, **{"max_new_tokens": 8, **kwargs})


def test_bad_prompts():
    m = tiny_model()
    with pytest.raises(ValueError, match="tokenizer"):
        generate(m, "hello", max_new_tokens=8)
    with pytest.raises(ValueError, match="vocabulary"):
        generate(m, [[1, 2, 999]], max_new_tokens=8)
    with pytest.raises(ValueError, match="at least one token"):
        generate(m, [[]], max_new_tokens=8)


def test_buckets():
    assert gen_mod.out_bucket(1) == 64 and gen_mod.out_bucket(64) == 64 and gen_mod.out_bucket(65) == 128
    assert gen_mod.out_bucket(100, 24) == 144  # 128 rounded up to a block multiple
    assert gen_mod.prompt_bucket(3) == 16 and gen_mod.prompt_bucket(17) == 32


@pytest.mark.parametrize("mode", ["ar", "diffusion"])
def test_batch_equals_rows_alone(mode):
    m = tiny_model()
    kw = dict(mode=mode, max_new_tokens=12, block_length=4, threshold=0.3)
    batch = generate(m, ROWS, **kw)
    for i, row in enumerate(ROWS):
        alone = generate(m, [row], **kw)
        assert alone.tokens[0] == batch.tokens[i]
        assert alone.nfe[0] == batch.nfe[i]
    assert all(len(t) == 12 for t in batch.tokens)
    if mode == "ar":
        assert batch.tokens == [ar_oracle(m, r, 12) for r in ROWS]
        assert batch.tpf == [1.0, 1.0, 1.0]
    else:
        assert all(t > 1.0 for t in batch.tpf)
        assert batch.stats["commit_pass"].shape == (3, 64)


@pytest.mark.parametrize("mode", ["ar", "diffusion", "linear_spec"])
def test_sampled_rows_with_their_own_seeds_do_not_depend_on_the_batch(mode):
    """T > 0, one seed per prompt: each row equals the row run alone with its seed, in any batch
    order (diffusion rows need different numbers of passes, so per-batch noise would show)."""
    m = tiny_model()
    kw = dict(mode=mode, max_new_tokens=12, block_length=4, threshold=0.3, temperature=1.5)
    seeds = [11, 22, 33]
    batch = generate(m, ROWS, seed=seeds, **kw)
    for i, row in enumerate(ROWS):
        assert generate(m, [row], seed=[seeds[i]], **kw).tokens[0] == batch.tokens[i]
    assert generate(m, ROWS[::-1], seed=seeds[::-1], **kw).tokens[::-1] == batch.tokens
    assert generate(m, ROWS, seed=[12, 23, 34], **kw).tokens != batch.tokens  # the noise is used
    # One int seed: rows still get distinct noise (row i folds i into the key).
    same = generate(m, [ROWS[0]] * 3, seed=5, **kw).tokens
    assert not (same[0] == same[1] == same[2])


@pytest.mark.parametrize("seed,match", [([1, 2], "one per prompt"), ([1, 2, -1], "per-prompt seeds")])
def test_bad_seeds_raise(seed, match):
    with pytest.raises(ValueError, match=match):
        generate(tiny_model(), ROWS, max_new_tokens=8, seed=seed)


def test_no_recompile_across_sweeps():
    m = tiny_model()
    generate(m, ROWS, mode="diffusion", max_new_tokens=12, block_length=4, threshold=0.3)
    generate(m, ROWS, mode="ar", max_new_tokens=12)
    from nemodiff_jax.eval.compiles import CompileCounter

    # generate compiles ahead of time (its own cache of lowered programs): count XLA compiles
    size, programs = engine.decode._cache_size(), len(nemodiff_jax.decode.generate._COMPILED)
    with CompileCounter() as cc:
        for i, (max_new, thr, t, seed) in enumerate([(8, 0.9, 0.0, 1), (20, 0.1, 0.8, 2), (64, 0.5, 1.3, 3)]):
            r = generate(m, ROWS, mode="diffusion", max_new_tokens=max_new, block_length=4, threshold=thr,
                         temperature=t, seed=seed, top_k=5 * i, top_p=1.0 - 0.1 * i)
            assert all(len(x) <= max_new for x in r.tokens) and r.compile_time == 0.0
            a = generate(m, ROWS, mode="ar", max_new_tokens=max_new, temperature=t, seed=seed, top_k=3 * i,
                         max_thinking_tokens=i, end_think_token_id=7)
            assert a.compile_time == 0.0
    assert engine.decode._cache_size() == size and len(nemodiff_jax.decode.generate._COMPILED) == programs
    assert cc.count == 0, f"{cc.count} XLA compilations while only traced knobs changed"


def test_text_io_and_result_fields():
    m = tiny_model().replace(tokenizer=CharTokenizer())
    r = generate(m, ["hi there", "x", "abc"], mode="ar", max_new_tokens=12)
    assert len(r.texts) == 3 and r.texts[0] == m.tokenizer.decode(r.tokens[0])
    assert r.nfe == [len(t) for t in r.tokens] and r.wall_time > 0 and r.mode == "ar"
    single = generate(m, "x", mode="ar", max_new_tokens=12)
    assert single.tokens[0] == r.tokens[1]


@pytest.mark.parametrize("mode", ["linear_spec", "quadratic_spec"])
def test_speculative_modes_dispatch_and_equal_ar(mode):
    """Both self-speculation modes are lossless at T = 0: the same tokens as AR."""
    m = tiny_model()
    ar = generate(m, ROWS, mode="ar", max_new_tokens=12)
    r = generate(m, ROWS, mode=mode, max_new_tokens=12, block_length=4)
    assert r.tokens == ar.tokens
    assert "commit_pass" in r.stats and all(n >= 1 for n in r.nfe)


def test_quadratic_spec_needs_no_block_multiple():
    """quadratic_spec cuts its output at max_new_tokens: 10 with blocks of 4 is fine (diffusion refuses)."""
    m = tiny_model()
    ar = generate(m, ROWS, mode="ar", max_new_tokens=10)
    r = generate(m, ROWS, mode="quadratic_spec", max_new_tokens=10, block_length=4)
    assert r.tokens == ar.tokens and all(len(t) <= 10 for t in r.tokens)
