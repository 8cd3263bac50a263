"""The speed-of-light oracle against brute force: enumerate every commit schedule.

Two layers: (1) the search alone, on many random deterministic "models" (a hash of the
canvas gives each position's prediction and confidence), where brute force is cheap; (2) the
whole oracle on a tiny random transformer, with brute force recomputing predictions from the
explicit token sequence without the KV cache, and the serial target checked against
``generate``'s quota-1 diffusion.
"""

from __future__ import annotations

import functools
import hashlib

import jax.numpy as jnp
import numpy as np
import pytest

import nemodiff_jax as nd
from nemodiff_jax.model import masks
from nemodiff_jax.eval import oracle
from nemodiff_jax.eval.models import random_model

MASK, EOS = 3, 2


def fake_predictor(salt: int, vocab=(2, 4, 5, 6), eos_weight: int = 1):
    """A deterministic function of the canvas: per position a token and a confidence."""
    pool = [t for t in vocab for _ in range(eos_weight if t == EOS else 3)]

    def predict(canvases: np.ndarray):
        cand = np.zeros(canvases.shape, np.int64)
        conf = np.zeros(canvases.shape, np.float32)
        for r, row in enumerate(canvases):
            for p in range(row.shape[0]):
                h = int.from_bytes(hashlib.blake2b(f"{salt}:{p}:{row.tolist()}".encode(), digest_size=8).digest(), "little")
                cand[r, p] = pool[h % len(pool)]
                conf[r, p] = (h >> 16) % 10007 / 10007
        return cand, conf

    return predict


def brute_force(predict, canvas0, target, free, goal) -> int:
    """Fewest steps over ALL schedules: recursion over every non-empty valid subset (no pruning)."""
    goal = tuple(goal)

    @functools.lru_cache(maxsize=None)
    def preds(state):
        x = canvas0.copy()
        for p in state:
            x[p] = target[p]
        return predict(x[None])[0][0]

    def best(state: frozenset) -> float:
        if all(p in state for p in goal):
            return 0
        cand = preds(tuple(sorted(state)))
        ok = [p for p in free if p not in state and cand[p] == target[p]]
        result = float("inf")
        for mask in range(1, 1 << len(ok)):
            sub = {ok[i] for i in range(len(ok)) if mask >> i & 1}
            result = min(result, 1 + best(state | sub))
        return result

    return best(frozenset())


@pytest.mark.parametrize("salt", range(60))
def test_search_matches_brute_force_on_random_models(salt):
    bl = 4 + salt % 3  # 3..5 masks after the seed
    predict = fake_predictor(salt)
    canvas0 = np.full(bl, MASK, np.int64)
    canvas0[0] = 5
    target, order = oracle.serial_block(predict, canvas0, MASK, EOS)
    free, goal = oracle.commit_positions(canvas0, target, MASK, EOS)
    want = brute_force(predict, canvas0, target, free, goal)
    exact = oracle.search_block(predict, canvas0, target, MASK, EOS, order, mode="exact")
    beam = oracle.search_block(predict, canvas0, target, MASK, EOS, order, mode="beam", beam=2)
    assert exact.exact
    assert exact.steps == min(want, len(order))
    assert exact.steps <= beam.steps <= len(order)
    # The schedule is real: replaying it commits only target tokens that the predictor agrees with.
    for res in (exact, beam):
        x = canvas0.copy()
        assert len(res.schedule) == res.steps
        for step in res.schedule:
            cand, _ = predict(x[None])
            assert step and all(x[p] == MASK and cand[0, p] == target[p] for p in step)
            x[step] = target[step]
        if res.schedule:
            assert set(goal) <= set(np.flatnonzero(x != MASK))


def test_budget_falls_back_to_serial():
    predict = fake_predictor(7)
    canvas0 = np.full(6, MASK, np.int64)
    canvas0[0] = 4
    target, order = oracle.serial_block(predict, canvas0, MASK, EOS)
    res = oracle.search_block(predict, canvas0, target, MASK, EOS, order, mode="exact", budget=1)
    assert (res.steps, res.exact, res.serial_steps) == (len(order), False, len(order))
    assert res.schedule == [[p] for p in order]


# ------------------------------------------------------------------ a real (tiny, random) model

@pytest.fixture(scope="module")
def model():
    return random_model("tiny", seed=1, head_scale=40.0, vocab_size=64, hidden_size=32, intermediate_size=64,
                        num_layers=2, num_heads=2, num_kv_heads=1, head_dim=16, max_position_embeddings=512)


def nocache_predictor(model, prefix: list[int]):
    """Canvas predictions from the explicit sequence [prompt, earlier blocks, canvas], no cache."""
    cfg = model.config
    p = len(prefix)

    def predict(canvases):
        out_c, out_p = [], []
        for row in canvases:
            ids = jnp.asarray([prefix + [int(t) for t in row]], jnp.int32)
            n = ids.shape[1]
            zero = jnp.zeros((1,), jnp.int32)
            pol = masks.mixed(zero, jnp.asarray([p], jnp.int32), jnp.asarray([n], jnp.int32), 1)
            logits, _ = nd.forward(model.params, cfg, ids, jnp.arange(n, dtype=jnp.int32)[None], pol, None, jnp.float32(0))
            lg = np.array(logits[0, p:], np.float64)
            lg[:, cfg.mask_token_id] = -np.inf
            c = lg.argmax(-1)
            pr = np.exp(lg - lg.max(-1, keepdims=True))
            out_c.append(c)
            out_p.append(pr[np.arange(len(c)), c] / pr.sum(-1))
        return np.stack(out_c), np.stack(out_p)

    return predict


def test_oracle_on_a_tiny_model_matches_brute_force_and_generate(model):
    from nemodiff_jax.decode.generate import generate

    cfg = model.config
    bl, prompt = 4, [5, 6, 7, 8, 9, 10, 11]
    res = oracle.sol_oracle(model, prompt, block_length=bl, max_new_tokens=8, mode="exact")
    # The serial target is what generate's quota-1 diffusion produces.
    ref = generate(model, [prompt], mode="diffusion", max_new_tokens=8, block_length=bl, policy="quota")
    assert ref.tokens[0] == res.tokens
    assert ref.nfe[0] == res.serial_nfe
    # Per block, exact search == brute force over all schedules (predictions recomputed without cache).
    prefix = list(prompt)
    for b, blk in enumerate(res.blocks):
        canvas0 = np.full(bl, cfg.mask_token_id, np.int64)
        canvas0[0] = res.tokens[b * bl]
        target = np.asarray(blk.target)
        assert blk.target[: len(res.tokens) - b * bl] == res.tokens[b * bl : (b + 1) * bl]
        predict = nocache_predictor(model, prefix)
        free, goal = oracle.commit_positions(canvas0, target, cfg.mask_token_id, cfg.eos_token_id)
        assert blk.exact
        assert blk.steps == min(brute_force(predict, canvas0, target, free, goal), blk.serial_steps)
        prefix += [int(t) for t in target]
    # The case is not trivial: some block commits several tokens in one forward, none all at once.
    assert 1 < sum(b.steps for b in res.blocks) < sum(b.serial_steps for b in res.blocks)
    assert res.oracle_nfe <= res.serial_nfe
    assert res.oracle_tpf >= res.serial_tpf
    # commit_step is a valid per-token pass index: 0 (the first seed) or within the NFE count.
    assert res.commit_step[0] == 0 and max(res.commit_step) <= res.oracle_nfe
